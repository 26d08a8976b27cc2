"""`matcli slice`: r-bit checkpoints cut out of a c-bit Matryoshka parent, without a model.

Each quantized Linear's codes are read in row chunks, sliced with S(q, c, r) and written
either as compressed-tensors `pack-quantized` at r bits (code q_r - 2^(r-1), scale
alpha * 2^(c-r): exact for a symmetric parent) or dequantized (`--format dense`). Every
other tensor is copied byte for byte.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from matcli.arch import Architecture, config_int, resolve
from matcli.arch.shapes import check_shapes
from matcli.checkpoint.nonfinite import check_scales, float_values
from matcli.checkpoint.plan import OutputCheckpoint, Plan, copy_tensor
from matcli.checkpoint.reader import ModelFolder
from matcli.checkpoint.writer import OutputTensor, dtype_code
from matcli.errors import MatcliError
from matcli.options import MIX_N_MATCH_STRATEGIES, SliceOptions
from matcli.quant import ct_format, grid, mixnmatch
from matcli.quant.ct_format import PACKED, SCALE, SHAPE, PackedLinear, WeightScheme
from matcli.quant.packing import StreamRemap, pack_unsigned, packed_columns, rows_are_streams
from matcli.quant.parent import CONFIG_KEY, ParentInfo, SliceInfo, parent_info
from matcli.quant.targets import targets_regex
from matcli.quant.widths import check_width, default_widths

if TYPE_CHECKING:  # torch is imported for --format dense only
    import torch


class ExtraBucketCount:
    """Counts codes that land in the extra-precision bucket (2^r), for the output's config."""

    def __init__(self) -> None:
        self.extra = 0
        self.total = 0

    @property
    def fraction(self) -> float:
        return self.extra / self.total if self.total else 0.0


class LinearSlicer:
    """Produces one quantized Linear of an r-bit slice from the parent's codes."""

    def __init__(
        self,
        folder: ModelFolder,
        linear: PackedLinear,
        bits: int,
        options: SliceOptions,
        count: ExtraBucketCount,
    ):
        self.folder, self.linear, self.bits = folder, linear, bits
        self.parent_bits = linear.scheme.bits
        self.extra_precision = options.extra_precision and bits < self.parent_bits
        self.chunk_bytes = options.chunk_size
        self.count = count

    @property
    def storage_bits(self) -> int:
        """Extra precision needs one more bit for the code 2^r."""
        return self.bits + 1 if self.extra_precision else self.bits

    def _stored_code_map(self) -> np.ndarray:
        """The slice's stored code for every stored parent code. A parent stores the unsigned
        code q itself (signed code + 2^(c-1)); the slice stores (q_r - 2^(r-1)) + 2^(b-1),
        q_r = S(q, c, r), for storage width b (r + 1 with extra precision)."""
        offset = grid.symmetric_zero(self.storage_bits) - grid.symmetric_zero(self.bits)
        return self._table() + np.uint8(offset)

    def _table(self) -> np.ndarray:
        return grid.slice_table(self.parent_bits, self.bits, self.extra_precision)

    def _as_stream(self) -> bool:
        """Whether the packed words can be remapped as one code stream (see StreamRemap)."""
        cols, c, b = self.linear.in_features, self.parent_bits, self.storage_bits
        return StreamRemap.supports(c, b) and rows_are_streams(cols, c, b)

    def compressed_tensors(self) -> list[OutputTensor]:
        lin, label = self.linear, self._label()
        scale_info = self.folder.tensors[lin.tensor(SCALE)]
        if self.bits == self.parent_bits and not self.extra_precision and self._as_stream():
            # S(q, c, c) = q: the packed words are the parent's, byte for byte.
            packed = copy_tensor(self.folder, lin.tensor(PACKED))
            packed.transform = label
        else:
            shape = (lin.out_features, packed_columns(lin.in_features, self.storage_bits))
            chunks = self._packed_stream if self._as_stream() else self._packed_rows
            packed = OutputTensor(lin.tensor(PACKED), "I32", shape, chunks, label)
        return [
            packed,
            OutputTensor(lin.tensor(SCALE), scale_info.dtype, scale_info.shape, self._scale, label),
            copy_tensor(self.folder, lin.tensor(SHAPE)),
        ]

    def _packed_stream(self):
        """Packed r-bit words straight from the parent's packed words, chunk by chunk: the
        chunks are read into one reused buffer and remapped into another."""
        remap = StreamRemap(self._stored_code_map(), self.parent_bits, self.storage_bits)
        if self.extra_precision:
            remap.count_codes(self._table() == (1 << self.bits))
        name = self.linear.tensor(PACKED)
        row_bytes = self.folder.tensors[name].row_bytes
        out = None
        for start, stop in self.folder.row_chunks(name, self.chunk_bytes):
            raw = self.folder.read_bytes(name, start * row_bytes, stop * row_bytes, scratch=True)
            size = remap.out_bytes(len(raw))
            out = remap(raw, None if out is None else out[:size])
            yield out
        if self.extra_precision:
            self.count.extra += remap.counted
            self.count.total += self.linear.weights

    def _packed_rows(self):
        """Packed r-bit words through unpacked codes: any widths and row lengths."""
        code_map = self._stored_code_map()
        first_extra = self._first_extra_code()
        for _, _, codes in self._parent_rows(self.chunk_bytes):
            if self.extra_precision:
                self.count.extra += int(np.count_nonzero(codes >= first_extra))
                self.count.total += codes.size
            yield pack_unsigned(code_map[codes], self.storage_bits)

    def _first_extra_code(self) -> int:
        """S is monotone in q: the codes that land in the bucket 2^r (with extra precision)
        are the top ones, from this one on."""
        return int(np.argmax(self._table() == (1 << self.bits)))

    def _parent_rows(self, chunk_bytes: int):
        """(first row, last row, the parent's unsigned codes) per chunk."""
        for start, stop in self.folder.row_chunks(self.linear.tensor(PACKED), chunk_bytes):
            yield start, stop, ct_format.read_code_array(self.folder, self.linear, start, stop)

    def _scale(self):
        name = self.linear.tensor(SCALE)
        info = self.folder.tensors[name]
        raw = self.folder.read_elements(name, 0, info.rows)
        check_scales(float_values(raw, info.dtype, name), name)
        yield grid.sliced_scale_bits(raw, info.dtype, self.parent_bits, self.bits)

    def dense_tensor(self, dtype: torch.dtype) -> OutputTensor:
        import torch

        lin, table = self.linear, self._table()
        # Dequantizing widens each code to an int32 difference: read fewer rows per chunk so
        # that the widest intermediate, not the packed input, is the chunk size.
        chunk_bytes = max(1, self.chunk_bytes * self.parent_bits // 32)

        def chunks():
            scale, zero = ct_format.read_scale_zero(self.folder, lin)
            check_scales(scale, lin.tensor(SCALE))
            for start, stop, codes in self._parent_rows(chunk_bytes):
                sliced = table[codes]
                if self.extra_precision:
                    self.count.extra += int(np.count_nonzero(sliced == (1 << self.bits)))
                    self.count.total += sliced.size
                on_grid = grid.codes_on_parent_grid(
                    torch.from_numpy(sliced), self.parent_bits, self.bits
                )
                yield grid.dequantize(on_grid, scale[start:stop], zero[start:stop]).to(dtype)

        return OutputTensor(
            lin.module + ".weight",
            dtype_code(dtype),
            (lin.out_features, lin.in_features),
            chunks,
            self._label(),
        )

    def _label(self) -> str:
        ep = " extra-precision" if self.extra_precision else ""
        return f"slice int{self.parent_bits} -> int{self.bits}{ep}"


def plan_slice(options: SliceOptions) -> Plan:
    folder = ModelFolder(options.parent)
    linears = ct_format.packed_linears(folder)
    if not linears:
        raise MatcliError(
            f"{options.parent} is a dense (unquantized) model; slice cuts widths out of an "
            f"integer parent. Make one first: matcli quantize {options.parent} -o PARENT "
            "--method rtn, then matcli slice PARENT"
        )
    arch = resolve(folder.config, list(folder.tensors))
    _check_linear_shapes(folder, arch, linears)
    parent = Parent(
        folder, arch, linears, _parent_bits(folder, linears), parent_info(folder.config)
    )
    if options.format == "compressed-tensors":
        _require_symmetric(options.parent, linears)
    choices = _choices(options, parent)
    warnings = _untrained_widths(choices, parent.bits, parent.info)
    if options.format == "compressed-tensors":
        warnings += ct_format.layout_warnings(_storage_widths(choices, options, parent.bits))
    if options.format == "gguf":
        from matcli.quant.gguf_slice import plan_gguf

        return plan_gguf(options, parent, choices[0], warnings)
    outputs = [
        _output(parent, name, widths, single_width, options)
        for name, widths, single_width in choices
    ]
    return Plan(
        command="slice",
        source=folder,
        outputs=outputs,
        max_shard_bytes=options.max_shard_size,
        chunk_bytes=options.chunk_size,
        warnings=warnings,
        uses_torch=options.format == "dense",
    )


def _check_linear_shapes(
    folder: ModelFolder, arch: Architecture, linears: dict[str, PackedLinear]
) -> None:
    """Each quantized Linear's [out, in] (its weight_shape) against config.json, when the
    config gives the layer count (the per-layer FFN widths need it)."""
    text_config = folder.text_config(arch.family.text_config)
    num_layers = config_int(text_config, arch.family.config.num_layers, minimum=1, default=None)
    if num_layers is not None:
        shapes = {
            lin.tensor(SHAPE): (lin.out_features, lin.in_features) for lin in linears.values()
        }
        check_shapes(arch, text_config, num_layers, shapes, "." + SHAPE, "holds")


@dataclass(frozen=True)
class Parent:
    """The parent being sliced: its folder, family, quantized Linears, width and record."""

    folder: ModelFolder
    arch: Architecture
    linears: dict[str, PackedLinear]
    bits: int
    info: ParentInfo | None


# One output per choice: (folder name, width of every quantized Linear, the single width).
Choice = tuple[str, dict[str, int], "int | None"]


def _choices(options: SliceOptions, parent: Parent) -> list[Choice]:
    if options.bits is None:
        return [("", _layer_widths(options, parent), None)]
    for r in options.bits:
        check_width(r, parent.bits, "--bits")
    return [
        (f"int{r}" if len(options.bits) > 1 else "", {m: r for m in parent.linears}, r)
        for r in options.bits
    ]


def _untrained_widths(choices: list[Choice], parent_bits: int, info: ParentInfo | None) -> list:
    """A warning for each width the parent was not trained for."""
    trained = info.trained_bits if info else [parent_bits]
    origin = f"method {info.method}" if info else "not made by matcli"
    return [
        f"the parent was not trained for int{width} (trained widths: {trained}; {origin}); "
        "expect lower quality than a MatQuant-trained parent"
        for width in sorted({r for _, widths, _ in choices for r in widths.values()}, reverse=True)
        if width not in trained
    ]


def _storage_widths(choices: list[Choice], options: SliceOptions, parent_bits: int) -> set[int]:
    """The stored widths of the outputs (one more bit with extra precision; LinearSlicer)."""
    widths = {r for _, per_module, _ in choices for r in per_module.values()}
    return {r + 1 if options.extra_precision and r < parent_bits else r for r in widths}


def _parent_bits(folder: ModelFolder, linears: dict[str, PackedLinear]) -> int:
    widths = {lin.scheme.bits for lin in linears.values()}
    if len(widths) > 1:
        raise MatcliError(
            f"{folder.path} mixes widths {sorted(widths)}; "
            "slice the uniform parent it was cut from instead"
        )
    return widths.pop()


def _require_symmetric(path: Path, linears: dict[str, PackedLinear]) -> None:
    if not all(lin.scheme.symmetric for lin in linears.values()):
        raise MatcliError(
            f"{path} is an asymmetric parent: its sliced zero points z / 2^(c-r) are fractional, "
            "which compressed-tensors cannot store exactly. Use --format dense (exact), "
            "or re-quantize with --scheme symmetric"
        )


def _layer_widths(options: SliceOptions, parent: Parent) -> dict[str, int]:
    """--bits-config: a width per decoder layer, from a named strategy or a file."""
    arch = parent.arch
    num_layers = arch.num_layers(parent.folder.text_config(arch.family.text_config))
    layer_of = {}
    weights_per_layer = [0] * num_layers
    for module, lin in parent.linears.items():
        split = arch.split_layer(module)
        if split is None or split[0] >= num_layers:
            continue
        layer_of[module] = split[0]
        weights_per_layer[split[0]] += lin.out_features * lin.in_features
    if options.bits_config in MIX_N_MATCH_STRATEGIES:
        # The widths the parent was trained for; a parent trained for one width only gets
        # the paper's {8, 4, 2} below its own width.
        trained = parent.info.trained_bits if parent.info else []
        widths = trained if len(trained) > 1 else default_widths(parent.bits)
        per_layer = mixnmatch.strategy_bits(
            options.bits_config, widths, [max(w, 1) for w in weights_per_layer], options.target_bits
        )
    else:
        per_layer = mixnmatch.file_bits(Path(options.bits_config), num_layers)
    for i, r in enumerate(per_layer):
        check_width(r, parent.bits, what=f"--bits-config: layer {i}'s width")
    # Quantized Linears outside the decoder layers keep the parent's width.
    return {m: per_layer[layer_of[m]] if m in layer_of else parent.bits for m in parent.linears}


def _output(
    parent: Parent,
    name: str,
    widths: dict[str, int],
    single_width: int | None,
    options: SliceOptions,
) -> OutputCheckpoint:
    folder, arch, linears = parent.folder, parent.arch, parent.linears
    count = ExtraBucketCount()
    slicers = {
        m: LinearSlicer(folder, lin, widths[m], options, count) for m, lin in linears.items()
    }
    owned = set().union(*(lin.tensor_names() for lin in linears.values()))
    tensors = [copy_tensor(folder, n) for n in sorted(folder.tensors) if n not in owned]
    config = dict(folder.config)
    if options.format == "dense":
        dense_dtype = _dense_dtype(options, folder, linears)
        for slicer in slicers.values():
            tensors.append(slicer.dense_tensor(dense_dtype))
        config.pop("quantization_config", None)
        config["torch_dtype" if "torch_dtype" in config else "dtype"] = str(
            dense_dtype
        ).removeprefix("torch.")
    else:
        for slicer in slicers.values():
            tensors += slicer.compressed_tensors()
        config["quantization_config"] = _sliced_quantization_config(folder, arch, slicers)
    tensors.sort(key=lambda t: t.name)

    slice_info = _slice_info(parent, widths, single_width, options, slicers)
    config[CONFIG_KEY] = slice_info.model_dump(mode="json")

    def measured() -> dict[str, dict]:
        """The share of weights that used the extra-precision level, counted while slicing."""
        if not options.extra_precision:
            return {}
        return {CONFIG_KEY: {"extra_bucket_fraction": round(count.fraction, 6)}}

    metadata = {
        "matcli.role": "slice",
        "matcli.bits": str(single_width) if single_width else "mixed",
    }
    return OutputCheckpoint(
        name=name, config=config, tensors=tensors, metadata=metadata, measured=measured
    )


def _slice_info(
    parent: Parent,
    widths: dict[str, int],
    single_width: int | None,
    options: SliceOptions,
    slicers: dict[str, LinearSlicer],
) -> SliceInfo:
    """What the slice's config records about itself (key `matcli`)."""
    arch, linears = parent.arch, parent.linears
    sizes = {m: lin.weights for m, lin in linears.items()}
    average = sum(widths[m] * sizes[m] for m in linears) / sum(sizes.values())
    storage = {s.storage_bits for s in slicers.values()}
    return SliceInfo(
        bits=single_width,
        layer_bits=None if single_width is not None else _per_layer_summary(arch, widths),
        average_bits=round(average, 4),
        format=options.format,
        storage_bits=storage.pop() if len(storage) == 1 and options.format != "dense" else None,
        extra_precision=options.extra_precision,
        parent=parent.info,
    )


def _sliced_quantization_config(
    folder: ModelFolder, arch: Architecture, slicers: dict[str, LinearSlicer]
) -> dict:
    by_scheme: dict[WeightScheme, list[str]] = defaultdict(list)
    for module, slicer in slicers.items():
        scheme = WeightScheme(slicer.storage_bits, True, slicer.linear.scheme.group_size)
        by_scheme[scheme].append(module)
    groups = [
        (targets_regex(arch, modules), scheme)
        for scheme, modules in sorted(by_scheme.items(), key=lambda kv: -kv[0].bits)
    ]
    ignore = folder.config["quantization_config"].get("ignore") or []
    if not isinstance(ignore, list) or not all(isinstance(i, str) for i in ignore):
        raise MatcliError(
            f"{folder.path}: config.json: quantization_config ignore must be a list of module "
            f"names, not {ignore!r}; re-create the parent with matcli quantize"
        )
    return ct_format.quantization_config(groups, ignore)


def _dense_dtype(
    options: SliceOptions, folder: ModelFolder, linears: dict[str, PackedLinear]
) -> torch.dtype:
    import torch

    name = options.dtype or folder.config.get("dtype") or folder.config.get("torch_dtype")
    if name in ("bfloat16", "float16", "float32"):
        return getattr(torch, name)
    return folder.read(next(iter(linears.values())).tensor(SCALE)).dtype


def _per_layer_summary(arch: Architecture, widths: dict[str, int]) -> dict[str, int]:
    layers = {}
    for module, r in widths.items():
        split = arch.split_layer(module)
        if split:
            layers[str(split[0])] = r
    return dict(sorted(layers.items(), key=lambda kv: int(kv[0])))
