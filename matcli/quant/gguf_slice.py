"""`slice --format gguf`: one r-bit slice (or a Mix'n'Match one) as a llama.cpp GGUF file.

Each quantized Linear becomes ggml blocks read straight from the parent's codes (Q8_0 or
Q4_0 when the slice is exactly one, see gguf_format), or, with --requantize only, gguf-py's
quantization of the slice's weights, with the added error measured. Every other tensor keeps
its dtype (1-D tensors are written as F32, as llama.cpp's converter does). Names, Q/K row
permutation and metadata come from the family's `gguf:` block (gguf_metadata).
"""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from matcli.checkpoint.gguf_writer import GgufTensor, write_gguf
from matcli.checkpoint.plan import PROCESS_BASE_BYTES, WORKING_SET_PER_CHUNK_BYTE
from matcli.errors import MatcliError
from matcli.quant import ct_format, gguf_format, gguf_metadata, grid
from matcli.quant.ct_format import SCALE, PackedLinear
from matcli.quant.gguf_metadata import GgufFamily

PARENT_HINT = (
    "make a symmetric parent with groups of 32: matcli quantize MODEL -o PARENT "
    "--recipe recipes/gguf-parent-g32.yaml"
)
# 1-D tensors are written as F32, as convert_hf_to_gguf.py does; 2-D ones keep their dtype.
DENSE_TYPES = {"F32": "F32", "F16": "F16", "BF16": "BF16"}


@dataclass
class RequantizeError:
    """Squared error and squared norm of the re-quantized weights, summed while writing."""

    error: float = 0.0
    norm: float = 0.0
    tensors: int = 0

    @property
    def relative_rms(self) -> float:
        return math.sqrt(self.error / self.norm) if self.norm else 0.0


@dataclass
class GgufContext:
    """What every tensor of the file is made with."""

    parent: object  # slicing.Parent
    family: GgufFamily
    config: dict
    chunk_bytes: int
    requantize: bool
    extra_precision: bool
    measured: RequantizeError = field(default_factory=RequantizeError)

    @property
    def folder(self):
        return self.parent.folder


def gguf_tensors(ctx: GgufContext, widths: dict[str, int]) -> list[GgufTensor]:
    """Every tensor of the file, in the checkpoint's name order, or a one-line refusal."""
    linears = ctx.parent.linears
    owned = set().union(*(lin.tensor_names() for lin in linears.values()))
    by_weight = {m + ".weight": m for m in linears}
    tensors = []
    for name in sorted(set(ctx.folder.tensors) - owned | set(by_weight)):
        target = gguf_metadata.gguf_name(ctx.parent.arch, ctx.family, name)
        if target is None:
            raise MatcliError(
                f"tensor {name} has no GGUF name in the {ctx.parent.arch.family.name} family "
                "data (gguf: block); add it there, or use --format compressed-tensors"
            )
        heads = gguf_metadata.heads_of(ctx.parent.arch, ctx.family, name, ctx.config)
        if name in by_weight:
            module = by_weight[name]
            tensors.append(_linear_tensor(ctx, linears[module], widths[module], target, heads))
        else:
            tensors.append(_dense_tensor(ctx, name, target, heads))
    return tensors


def _row_ranges(rows: int, row_bytes: int, chunk_bytes: int, align: int) -> list[tuple[int, int]]:
    """Row ranges of at most about chunk_bytes, each a multiple of `align` rows."""
    step = max(1, chunk_bytes // max(1, row_bytes * align)) * align
    return [(s, min(s + step, rows)) for s in range(0, rows, step)]


def _permuted(rows: np.ndarray, head_rows: int | None) -> np.ndarray:
    """llama.cpp's rotary row order within each head (LlamaModel.permute): the two halves
    of a head's rows interleaved. `rows` holds whole heads."""
    if head_rows is None:
        return rows
    heads = rows.shape[0] // head_rows
    shape = rows.shape
    return rows.reshape(heads, 2, head_rows // 2, *shape[1:]).swapaxes(1, 2).reshape(shape)


def _head_rows(total_rows: int, heads: int | None, name: str) -> int | None:
    if heads is None:
        return None
    if heads <= 0 or total_rows % heads or (total_rows // heads) % 2:
        raise MatcliError(f"{name}: {total_rows} rows do not split into {heads} even-sized heads")
    return total_rows // heads


def _dense_tensor(ctx: GgufContext, name: str, target: str, heads: int | None) -> GgufTensor:
    folder = ctx.folder
    info = folder.tensors[name]
    if info.dtype not in DENSE_TYPES or len(info.shape) not in (1, 2):
        raise MatcliError(
            f"tensor {name} is {info.dtype} {list(info.shape)}; GGUF output writes 1-D and "
            "2-D F32, F16 and BF16 tensors"
        )
    one_d = len(info.shape) == 1
    ggml_type = "F32" if one_d else DENSE_TYPES[info.dtype]
    size = 4 if one_d else info.row_bytes // info.shape[-1]
    head_rows = _head_rows(info.shape[0], heads, name)

    def chunks():
        if one_d:
            raw = folder.read_elements(name, 0, info.shape[0])
            yield gguf_format.scale_as_float32(raw, info.dtype)
            return
        for start, stop in _row_ranges(info.rows, info.row_bytes, ctx.chunk_bytes, head_rows or 1):
            yield _permuted(folder.read_elements(name, start, stop), head_rows)

    shape = (*info.shape[:-1], info.shape[-1] * size)
    label = "copy" if ggml_type == info.dtype else f"{info.dtype} -> {ggml_type}"
    return GgufTensor(target, ggml_type, shape, chunks, label + _permute_label(heads), name)


def _permute_label(heads: int | None) -> str:
    return " (rows permuted per head)" if heads else ""


def _linear_tensor(
    ctx: GgufContext, lin: PackedLinear, bits: int, target: str, heads: int | None
) -> GgufTensor:
    scheme = lin.scheme
    extra = ctx.extra_precision and bits < scheme.bits
    exact = gguf_format.exact_type(bits, scheme.symmetric, scheme.group_size, extra)
    if exact and not _scales_exact(ctx, lin, bits):
        exact = None
    if exact is None and not ctx.requantize:
        raise MatcliError(_no_exact_type(lin, bits, extra, ctx))
    ggml_type = exact or gguf_format.requantized_type(bits)
    head_rows = _head_rows(lin.out_features, heads, lin.module)
    make = _exact_chunks if exact else _requantized_chunks
    shape = (lin.out_features, gguf_format.row_bytes(ggml_type, lin.in_features))
    how = "exact" if exact else "re-quantized"
    label = f"int{scheme.bits} -> int{bits} {ggml_type} ({how}){_permute_label(heads)}"
    return GgufTensor(
        target,
        ggml_type,
        shape,
        lambda: make(ctx, lin, bits, ggml_type, head_rows),
        label,
        lin.module + ".weight",
    )


def _no_exact_type(lin: PackedLinear, bits: int, extra: bool, ctx: GgufContext) -> str:
    scheme = lin.scheme
    if bits not in gguf_format.EXACT_TYPES:
        why = f"int{bits} has no exact ggml type (Q8_0 and Q4_0 hold int8 and int4)"
    elif extra:
        why = f"extra precision (2^{bits} + 1 levels) has no exact ggml type"
    elif not scheme.symmetric:
        why = "an asymmetric parent has no exact ggml type (Q8_0/Q4_0 have no zero point)"
    elif scheme.group_size != gguf_format.BLOCK:
        size = "per channel" if scheme.group_size is None else f"groups of {scheme.group_size}"
        why = f"a parent quantized {size} has no exact ggml type (Q8_0/Q4_0 use groups of 32)"
    else:
        why = "some of its sliced scales are not exact in fp16 (ggml's scale type)"
    return (
        f"{lin.module}: {why}; {PARENT_HINT}, or pass --requantize to re-quantize with "
        "gguf-py (the added weight error is reported)"
    )


def _scales_exact(ctx: GgufContext, lin: PackedLinear, bits: int) -> bool:
    """Whether fp16 holds every sliced scale alpha 2^(c-r) exactly."""
    _, inexact = gguf_format.fp16_scales(_sliced_scales(ctx, lin, bits, 0, lin.out_features))
    return inexact == 0


def _sliced_scales(ctx: GgufContext, lin: PackedLinear, bits: int, start: int, stop: int):
    name = lin.tensor(SCALE)
    dtype = ctx.folder.tensors[name].dtype
    raw = grid.sliced_scale_bits(
        ctx.folder.read_elements(name, start, stop), dtype, lin.scheme.bits, bits
    )
    return gguf_format.scale_as_float32(raw, dtype)


def _code_chunks(ctx: GgufContext, lin: PackedLinear, bits: int, head_rows: int | None):
    """(first row, last row, the slice's unsigned codes) per chunk of whole heads."""
    table = grid.slice_table(lin.scheme.bits, bits, ctx.extra_precision)
    packed_row = math.ceil(lin.in_features * lin.scheme.bits / 8)
    for start, stop in _row_ranges(lin.out_features, packed_row, ctx.chunk_bytes, head_rows or 1):
        codes = ct_format.read_code_array(ctx.folder, lin, start, stop)
        yield start, stop, table[codes]


def _exact_chunks(ctx, lin: PackedLinear, bits: int, ggml_type: str, head_rows: int | None):
    for start, stop, sliced in _code_chunks(ctx, lin, bits, head_rows):
        scale, _ = gguf_format.fp16_scales(_sliced_scales(ctx, lin, bits, start, stop))
        yield gguf_format.exact_blocks(
            ggml_type, _permuted(sliced, head_rows), bits, _permuted(scale, head_rows)
        )


def _requantized_chunks(ctx, lin: PackedLinear, bits: int, ggml_type: str, head_rows):
    """gguf-py's blocks of the slice's weights scale (q_r 2^(c-r) - z), in float32."""
    scale, zero = ct_format.read_scale_zero(ctx.folder, lin)
    scale, zero = scale.float().numpy(), zero.numpy()
    c = lin.scheme.bits
    measured = ctx.measured
    for start, stop, sliced in _code_chunks(ctx, lin, bits, head_rows):
        on_grid = sliced.astype(np.int32) << (c - bits)
        groups = scale.shape[1]
        diff = on_grid.reshape(stop - start, groups, -1) - zero[start:stop, :, None]
        dense = (diff.astype(np.float32) * scale[start:stop, :, None]).reshape(stop - start, -1)
        blocks, error, norm = gguf_format.requantize(_permuted(dense, head_rows), ggml_type)
        measured.error, measured.norm = measured.error + error, measured.norm + norm
        yield blocks
    measured.tensors += 1


def file_type(tensors: list[GgufTensor]) -> int:
    """general.file_type: the ggml type that holds most of the weights' bytes."""
    import gguf

    by_type = Counter()
    for t in tensors:
        by_type[t.ggml_type] += t.nbytes if len(t.byte_shape) > 1 else 0
    main = by_type.most_common(1)[0][0]
    return int(getattr(gguf.LlamaFileType, f"MOSTLY_{main}", gguf.LlamaFileType.ALL_F32))


@dataclass
class GgufPlan:
    """The runner's plan (see runner.WritingPlan) for one GGUF file."""

    ctx: GgufContext
    destination: Path
    tensors: list[GgufTensor]
    vocab: gguf_metadata.Vocabulary
    slice_info: dict
    warnings: list[str]
    invocation: dict = field(default_factory=dict)

    @property
    def report(self) -> dict:
        types = Counter(t.ggml_type for t in self.tensors)
        report = {f"{name} tensors": n for name, n in sorted(types.items())}
        report["tokenizer pre"] = self.vocab.pre
        if self.ctx.measured.tensors:
            report["re-quantized tensors"] = self.ctx.measured.tensors
            report["re-quantization relative RMS error"] = round(self.ctx.measured.relative_rms, 6)
        return report

    def embed_manifest(self, invocation: dict) -> None:
        """The runner's manifest fields (command line, options): this plan writes them into
        the file's metadata instead of a manifest file beside it."""
        self.invocation = invocation

    def total_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)

    def describe(self) -> dict:
        transforms: dict[str, dict] = {}
        for t in self.tensors:
            entry = transforms.setdefault(t.transform, {"tensors": 0, "bytes": 0})
            entry["tensors"] += 1
            entry["bytes"] += t.nbytes
        name = self.destination.name
        output = {
            "folder": name,
            "tensors": len(self.tensors),
            "bytes": self.total_bytes(),
            "shards": {name: self.total_bytes()},
            "transforms": transforms,
            "config_changes": [],
            "tensor_list": [
                {"name": t.name, "source": t.source, "type": t.ggml_type, "transform": t.transform}
                for t in self.tensors
            ],
        }
        return {
            "command": "slice",
            "input": str(self.ctx.folder.path),
            "outputs": [output],
            "copied_files": [],
            "estimated_peak_memory_bytes": PROCESS_BASE_BYTES
            + WORKING_SET_PER_CHUNK_BYTE * self.ctx.chunk_bytes,
            "warnings": self.warnings,
            "report": self.report,
        }

    def write(self, staging: Path, on_bytes) -> list[tuple[Path, dict]]:
        path = staging / self.destination.name
        write_gguf(path, self.ctx.family.arch, self._metadata, self.tensors, on_bytes)
        return []  # the manifest is inside the file (key matcli.manifest)

    def _metadata(self, writer) -> None:
        import gguf

        from matcli import __version__
        from matcli.checkpoint.manifest import describe_input, package_versions

        writer.add_name(self.ctx.folder.path.name)
        writer.add_file_type(file_type(self.tensors))
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        for key, value, kind in gguf_metadata.hparams(self.ctx.family, self.ctx.config):
            (writer.add_uint32 if kind == "uint32" else writer.add_float32)(key, value)
        gguf_metadata.add_tokenizer(writer, self.ctx.folder.path, self.vocab)
        manifest = {
            "matcli_version": __version__,
            **self.invocation,
            "input": describe_input(self.ctx.folder),
            "slice": self.slice_info,
            "packages": package_versions(),
        }
        writer.add_string("matcli.manifest", json.dumps(manifest, sort_keys=False))

    def summary(self, destination: Path) -> dict:
        size = destination.stat().st_size if destination.is_file() else 0
        row = {"path": str(destination), "size_bytes": size, "matcli": self.slice_info}
        return {
            "command": "slice",
            "outputs": [row],
            "warnings": self.warnings,
            "report": self.report,
        }

    def close(self) -> None:
        self.ctx.folder.close()


def plan_gguf(options, parent, choice, warnings: list[str]) -> GgufPlan:
    """The GGUF file of one slice choice (a width, or a width per Linear); every refusal is
    raised here, before a byte is written."""
    from matcli.quant.slicing import _slice_info

    _, widths, single_width = choice
    family = gguf_metadata.gguf_family(parent.arch)
    config = parent.folder.text_config(parent.arch.family.text_config)
    ctx = GgufContext(
        parent, family, config, options.chunk_size, options.requantize, options.extra_precision
    )
    tensors = gguf_tensors(ctx, widths)
    gguf_metadata.hparams(family, config)  # refuses a config it cannot describe, now
    vocab = gguf_metadata.vocabulary(parent.folder.path, int(config.get("vocab_size") or 0), family)
    if not vocab.known_pre:
        warnings.append(
            "llama.cpp does not know this tokenizer's pre-tokenizer: written as 'default', so "
            "llama.cpp may split text differently from the original tokenizer"
        )
    requantized = [t.name for t in tensors if "re-quantized" in t.transform]
    if requantized:
        warnings.append(
            f"--requantize: {len(requantized)} Linears have no exact ggml type and are "
            "re-quantized by gguf-py; the added weight error is reported after writing"
        )
    info = _slice_info(parent, widths, single_width, options, {}).model_dump(mode="json")
    return GgufPlan(ctx, options.output, tensors, vocab, info, warnings)
