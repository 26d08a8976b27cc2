"""`matcli slice`: r-bit checkpoints cut out of a c-bit Matryoshka parent, without a model.

Each quantized Linear's codes are read in row chunks, sliced with S(q, c, r) and written
either as compressed-tensors `pack-quantized` at r bits (code q_r - 2^(r-1), scale
alpha * 2^(c-r): exact for a symmetric parent) or dequantized (`--format dense`). Every
other tensor is copied byte for byte.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from matcli.arch import Architecture, resolve
from matcli.checkpoint.plan import OutputCheckpoint, Plan, copy_tensor
from matcli.checkpoint.reader import ModelFolder
from matcli.checkpoint.writer import OutputTensor, dtype_code
from matcli.errors import MatcliError
from matcli.quant import ct_format, grid, mixnmatch
from matcli.quant.ct_format import PACKED, SCALE, SHAPE, PackedLinear, WeightScheme
from matcli.quant.packing import pack_unsigned, packed_columns
from matcli.quant.parent import CONFIG_KEY, ParentInfo, SliceInfo, parent_info
from matcli.quant.targets import targets_regex
from matcli.options import MIX_N_MATCH_STRATEGIES, SliceOptions


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

    def _sliced_rows(self, chunk_bytes: int):
        """(first row, last row, r-bit codes) per chunk: one table lookup per parent code."""
        table = grid.slice_table(self.parent_bits, self.bits, self.extra_precision)
        for start, stop in self.folder.row_chunks(self.linear.tensor(PACKED), chunk_bytes):
            sliced = table[ct_format.read_codes(self.folder, self.linear, start, stop).numpy()]
            if self.extra_precision:
                self.count.extra += int(np.count_nonzero(sliced == (1 << self.bits)))
                self.count.total += sliced.size
            yield start, stop, sliced

    def compressed_tensors(self) -> list[OutputTensor]:
        lin, label = self.linear, self._label()
        scale_info = self.folder.tensors[lin.tensor(SCALE)]
        return [
            OutputTensor(
                lin.tensor(PACKED),
                "I32",
                (lin.out_features, packed_columns(lin.in_features, self.storage_bits)),
                self._packed,
                label,
            ),
            OutputTensor(lin.tensor(SCALE), scale_info.dtype, scale_info.shape, self._scale, label),
            copy_tensor(self.folder, lin.tensor(SHAPE)),
        ]

    def _packed(self):
        # Stored code = (q_r - 2^(r-1)) + 2^(b-1) for storage width b (b = r + 1 with extra precision).
        offset = np.uint8(grid.symmetric_zero(self.storage_bits) - grid.symmetric_zero(self.bits))
        for _, _, sliced in self._sliced_rows(self.chunk_bytes):
            yield pack_unsigned(sliced + offset, self.storage_bits)

    def _scale(self):
        scale, zero = ct_format.read_scale_zero(self.folder, self.linear)
        yield grid.sliced_params(scale, zero, self.parent_bits, self.bits)[0]

    def dense_tensor(self, dtype: torch.dtype) -> OutputTensor:
        lin = self.linear

        # Dequantizing widens each code to an int32 difference: read fewer rows per chunk so
        # that the widest intermediate, not the packed input, is the chunk size.
        chunk_bytes = max(1, self.chunk_bytes * self.parent_bits // 32)

        def chunks():
            scale, zero = ct_format.read_scale_zero(self.folder, lin)
            for start, stop, sliced in self._sliced_rows(chunk_bytes):
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
            f"{options.parent} is a dense (unquantized) model; slice cuts widths out of an integer parent. "
            f"Make one first: matcli quantize {options.parent} -o PARENT --method rtn, then matcli slice PARENT"
        )
    parent_bits = _parent_bits(folder, linears)
    info = parent_info(folder.config)
    arch = resolve(folder.config, list(folder.tensors))
    warnings = []
    if options.format == "compressed-tensors":
        _require_symmetric(options.parent, linears)

    if options.bits is not None:
        for r in options.bits:
            if r > parent_bits:
                raise MatcliError(
                    f"--bits {r}: cannot slice int{r} out of an int{parent_bits} parent; widths go up to {parent_bits}"
                )
        choices = [
            (f"int{r}" if len(options.bits) > 1 else "", {m: r for m in linears}, r)
            for r in options.bits
        ]
    else:
        choices = [("", _layer_widths(options, arch, folder, linears, parent_bits, info), None)]

    trained = info.trained_bits if info else [parent_bits]
    for width in sorted({r for _, widths, _ in choices for r in widths.values()}, reverse=True):
        if width not in trained:
            origin = f"method {info.method}" if info else "not made by matcli"
            warnings.append(
                f"the parent was not trained for int{width} (trained widths: {trained}; {origin}); expect lower quality than a MatQuant-trained parent"
            )

    outputs = [
        _output(folder, arch, linears, name, widths, uniform, options, info)
        for name, widths, uniform in choices
    ]
    return Plan(
        command="slice",
        source=folder,
        outputs=outputs,
        options=options.model_dump(mode="json"),
        max_shard_bytes=options.max_shard_size,
        chunk_bytes=options.chunk_size,
        warnings=warnings,
    )


def _parent_bits(folder: ModelFolder, linears: dict[str, PackedLinear]) -> int:
    widths = {lin.scheme.bits for lin in linears.values()}
    if len(widths) > 1:
        raise MatcliError(
            f"{folder.path} mixes widths {sorted(widths)}; slice the uniform parent it was cut from instead"
        )
    return widths.pop()


def _require_symmetric(path: Path, linears: dict[str, PackedLinear]) -> None:
    if not all(lin.scheme.symmetric for lin in linears.values()):
        raise MatcliError(
            f"{path} is an asymmetric parent: its sliced zero points z / 2^(c-r) are fractional, "
            "which compressed-tensors cannot store exactly. Use --format dense (exact), or re-quantize with --scheme symmetric"
        )


def _layer_widths(
    options: SliceOptions,
    arch: Architecture,
    folder: ModelFolder,
    linears: dict[str, PackedLinear],
    parent_bits: int,
    info: ParentInfo | None,
) -> dict[str, int]:
    num_layers = arch.num_layers(folder.text_config(arch.family.text_config))
    layer_of = {}
    weights_per_layer = [0] * num_layers
    for module, lin in linears.items():
        split = arch.split_layer(module + ".")
        if split is None or split[0] >= num_layers:
            continue
        layer_of[module] = split[0]
        weights_per_layer[split[0]] += lin.out_features * lin.in_features
    if options.bits_config in MIX_N_MATCH_STRATEGIES:
        # The widths the parent was trained for; a parent trained for one width only gets
        # the paper's {8, 4, 2} below its own width.
        if info and len(info.trained_bits) > 1:
            widths = info.trained_bits
        else:
            widths = sorted({parent_bits} | {w for w in (8, 4, 2) if w < parent_bits})
        per_layer = mixnmatch.strategy_bits(
            options.bits_config, widths, [max(w, 1) for w in weights_per_layer], options.target_bits
        )
    else:
        per_layer = mixnmatch.file_bits(Path(options.bits_config), num_layers)
    for i, r in enumerate(per_layer):
        if not 1 <= r <= parent_bits:
            raise MatcliError(
                f"--bits-config gives layer {i} width {r}; widths go from 1 to the parent's {parent_bits}"
            )
    # Quantized Linears outside the decoder layers keep the parent's width.
    return {m: per_layer[layer_of[m]] if m in layer_of else parent_bits for m in linears}


def _output(
    folder: ModelFolder,
    arch: Architecture,
    linears: dict[str, PackedLinear],
    name: str,
    widths: dict[str, int],
    uniform: int | None,
    options: SliceOptions,
    info: ParentInfo | None,
) -> OutputCheckpoint:
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

    sizes = {m: lin.weights for m, lin in linears.items()}
    average = sum(widths[m] * sizes[m] for m in linears) / sum(sizes.values())
    storage = {s.storage_bits for s in slicers.values()}
    slice_info = SliceInfo(
        bits=uniform,
        layer_bits=None if uniform is not None else _per_layer_summary(arch, widths),
        average_bits=round(average, 4),
        format=options.format,
        storage_bits=storage.pop() if len(storage) == 1 and options.format != "dense" else None,
        extra_precision=options.extra_precision,
        parent=info,
    )
    config[CONFIG_KEY] = slice_info.model_dump(mode="json")

    def finish(cfg: dict) -> None:
        if options.extra_precision:
            cfg[CONFIG_KEY]["extra_bucket_fraction"] = round(count.fraction, 6)

    metadata = {"matcli.role": "slice", "matcli.bits": str(uniform) if uniform else "mixed"}
    return OutputCheckpoint(
        name=name, config=config, tensors=tensors, metadata=metadata, finish_config=finish
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
    return ct_format.quantization_config(groups, ignore)


def _dense_dtype(
    options: SliceOptions, folder: ModelFolder, linears: dict[str, PackedLinear]
) -> torch.dtype:
    name = options.dtype or folder.config.get("dtype") or folder.config.get("torch_dtype")
    if name in ("bfloat16", "float16", "float32"):
        return getattr(torch, name)
    return folder.read(next(iter(linears.values())).tensor(SCALE)).dtype


def _per_layer_summary(arch: Architecture, widths: dict[str, int]) -> dict[str, int]:
    layers = {}
    for module, r in widths.items():
        split = arch.split_layer(module + ".")
        if split:
            layers[str(split[0])] = r
    return dict(sorted(layers.items(), key=lambda kv: int(kv[0])))
