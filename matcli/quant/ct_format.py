"""The compressed-tensors `pack-quantized` layout, read and written without a model.

Per quantized Linear `X`: `X.weight_packed` (int32 [out, ceil(in * b / 32)]),
`X.weight_scale` ([out, groups], the model's float dtype), `X.weight_shape` (int64 [2]) and,
for asymmetric schemes, `X.weight_zero_point` (int32, codes packed along dim 0). Codes are
stored signed: code - 2^(b-1). config.json's `quantization_config` says which modules use
which scheme (`config_groups`, each with `targets` regexes).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import metadata
from typing import TYPE_CHECKING, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from matcli.checkpoint.reader import ModelFolder
from matcli.errors import MatcliError
from matcli.quant import grid
from matcli.quant.packing import (
    pack_int32,
    packed_columns,
    padded_packed_columns,
    unpack_int32,
    unpack_unsigned,
)
from matcli.quant.widths import MAX_WIDTH

M = TypeVar("M", bound=BaseModel)

if TYPE_CHECKING:  # torch is imported by the functions on tensors: slicing reads without it
    import torch

PACKED, SCALE, SHAPE, ZERO = "weight_packed", "weight_scale", "weight_shape", "weight_zero_point"
# The first compressed-tensors release that packs every width as one dense bit stream.
DENSE_LAYOUT_SINCE = "0.18.0"


@dataclass(frozen=True)
class WeightScheme:
    bits: int
    symmetric: bool
    group_size: int | None  # None: one scale per output channel

    def ct_args(self) -> dict:
        return CtWeights(
            num_bits=self.bits,
            symmetric=self.symmetric,
            strategy="channel" if self.group_size is None else "group",
            group_size=self.group_size,
        ).model_dump()

    @property
    def name(self) -> str:
        return "symmetric" if self.symmetric else "asymmetric"


class CtWeights(BaseModel):
    """A config group's `weights`: compressed-tensors' QuantizationArgs, whose fields (the same
    from 0.17 to 0.20) are all there is: it forbids any other key, so vLLM and transformers
    refuse a config with one. What each consumer reads is in docs/formats.md."""

    model_config = ConfigDict(extra="forbid")
    num_bits: int = Field(ge=1, le=MAX_WIDTH)
    type: Literal["int"] = "int"
    symmetric: bool
    # Without a strategy compressed-tensors infers "tensor" (no group size), which vLLM has
    # no weight-only scheme for: always written.
    strategy: Literal["channel", "group"]
    group_size: int | None = Field(gt=0)
    block_structure: None = None
    dynamic: Literal[False] = False  # static scales; vLLM's WNA16 needs them
    actorder: None = None  # columns in checkpoint order (vLLM refuses "group" and "dynamic")
    observer: None = None  # a calibration setting; the scales here are already final
    observer_kwargs: dict = {}

    @field_validator("group_size")
    @classmethod
    def _group_size_matches_strategy(cls, value: int | None, info) -> int | None:
        if (value is None) != (info.data.get("strategy") == "channel"):
            raise ValueError("strategy channel has no group size; strategy group needs one")
        return value


class CtGroup(BaseModel):
    """A config group: compressed-tensors' QuantizationScheme (also extra="forbid")."""

    model_config = ConfigDict(extra="forbid")
    targets: list[str]
    weights: CtWeights
    input_activations: None = None  # weight-only: activations stay in the model's dtype
    output_activations: None = None
    format: Literal["pack-quantized"] = "pack-quantized"


class CtQuantizationConfig(BaseModel):
    """config.json's `quantization_config`, with every key llm-compressor writes."""

    model_config = ConfigDict(extra="forbid")
    quant_method: Literal["compressed-tensors"] = "compressed-tensors"
    # vLLM picks its weight-only scheme (WNA16) only for this format, read from the group or
    # from here.
    format: Literal["pack-quantized"] = "pack-quantized"
    quantization_status: Literal["compressed"] = "compressed"
    config_groups: dict[str, CtGroup]
    ignore: list[str]
    kv_cache_scheme: None = None
    global_compression_ratio: None = None
    sparsity_config: dict = {}
    transform_config: dict = {}
    # The compressed-tensors release that wrote the folder; for matcli, one whose packing is
    # matcli's (the dense bit stream: 0.18.0 or later, see packing.py).
    version: str


@dataclass(frozen=True)
class PackedLinear:
    """A quantized Linear found in a compressed-tensors checkpoint."""

    module: str
    scheme: WeightScheme
    out_features: int
    in_features: int

    def tensor(self, suffix: str) -> str:
        return f"{self.module}.{suffix}"

    def tensor_names(self) -> set[str]:
        """Every tensor that stores this Linear (the zero point only exists when asymmetric)."""
        return {self.tensor(s) for s in (PACKED, SCALE, SHAPE, ZERO)}

    @property
    def weights(self) -> int:
        return self.out_features * self.in_features

    @property
    def groups(self) -> int:
        return grid.groups_of(self.in_features, self.scheme.group_size)


def quantization_config(groups: list[tuple[str, WeightScheme]], ignore: list[str]) -> dict:
    """A `quantization_config` block with one config group per (module regex, scheme)."""
    return CtQuantizationConfig(
        config_groups={
            f"group_{i}": CtGroup(targets=[f"re:{regex}"], weights=scheme.ct_args())
            for i, (regex, scheme) in enumerate(groups)
        },
        ignore=ignore,
        version=layout_version(),
    ).model_dump(mode="json")


def layout_warnings(storage_bits: set[int]) -> list[str]:
    """What readers cannot load a folder storing these widths (docs/formats.md)."""
    warnings = []
    if 1 in storage_bits:
        warnings.append(
            "int1 codes load in transformers but not in vLLM 0.34, whose weight-only scheme "
            "(WNA16) takes 2 to 8 bits"
        )
    odd = sorted(b for b in storage_bits if 32 % b)
    if odd:
        warnings.append(
            f"{', '.join(f'int{b}' for b in odd)} codes are packed as one dense bit stream "
            f"(compressed-tensors >= {DENSE_LAYOUT_SINCE}, vLLM's WNA16 weight shapes); "
            "compressed-tensors 0.17 (pinned by vLLM 0.34) pads 32 // b codes into each int32 "
            f"and cannot load them: use compressed-tensors >= {DENSE_LAYOUT_SINCE} with "
            "transformers, and not VLLM_BATCH_INVARIANT=1 in vLLM 0.34"
        )
    return warnings


def layout_version() -> str:
    """The installed compressed-tensors version when it packs as matcli does, else the first
    release that does: compressed-tensors 0.17 packs 3, 5, 6 and 7-bit codes differently."""
    try:
        installed = metadata.version("compressed-tensors")
    except metadata.PackageNotFoundError:
        return DENSE_LAYOUT_SINCE
    numbers = tuple(int(p) if p.isdigit() else 0 for p in installed.split(".")[:3])
    return installed if numbers >= (0, 18, 0) else DENSE_LAYOUT_SINCE


def packed_linears(folder: ModelFolder) -> dict[str, PackedLinear]:
    """Every pack-quantized Linear of a checkpoint ({} for a dense model)."""
    qc = folder.config.get("quantization_config")
    if not isinstance(qc, dict) or qc.get("quant_method") != "compressed-tensors":
        return {}
    if qc.get("format") != "pack-quantized":
        raise MatcliError(
            f"{folder.path} is a compressed-tensors checkpoint in format {qc.get('format')!r}; "
            "matcli reads integer pack-quantized parents (make one with `matcli quantize`)"
        )
    groups = _config_groups(folder, qc)
    linears = {}
    for name in sorted(folder.tensors):
        if name.endswith("." + PACKED):
            module = name.removesuffix("." + PACKED)
            linears[module] = _packed_linear(folder, module, _scheme_of(folder, module, groups))
    return linears


class _Weights(BaseModel):
    """The part of a config group's `weights` that matcli reads (other keys are kept)."""

    model_config = ConfigDict(extra="allow")
    type: str = "int"
    num_bits: int = Field(ge=1, le=MAX_WIDTH)
    strategy: str = "channel"
    symmetric: bool = True
    group_size: int | None = Field(None, gt=0)


class _Group(BaseModel):
    model_config = ConfigDict(extra="allow")
    targets: list[str] = []
    weights: dict | None = None

    @field_validator("targets")
    @classmethod
    def _regexes_compile(cls, targets: list[str]) -> list[str]:
        for target in targets:
            if target.startswith("re:"):
                try:
                    re.compile(target[3:])
                except re.error as e:
                    raise ValueError(f"target {target!r} is not a valid regex ({e})") from None
        return targets


class _QuantizationConfig(BaseModel):
    model_config = ConfigDict(extra="allow")
    config_groups: dict[str, _Group] | None = None


def _config_groups(folder: ModelFolder, qc: dict) -> list[tuple[list[str], WeightScheme]]:
    groups = []
    for gname, group in (_validated(folder, _QuantizationConfig, qc).config_groups or {}).items():
        if not isinstance(group.weights, dict) or group.weights.get("type", "int") != "int":
            raise MatcliError(
                f"{folder.path}: config group {gname!r} is not integer weight quantization; "
                "matcli slices integer parents only"
            )
        weights = _validated(folder, _Weights, group.weights, f"config group {gname!r} weights")
        if weights.strategy not in ("channel", "group"):
            raise MatcliError(
                f"{folder.path}: config group {gname!r} uses strategy {weights.strategy!r}; "
                "matcli reads channel and group strategies"
            )
        group_size = weights.group_size if weights.strategy == "group" else None
        groups.append(
            (group.targets, WeightScheme(weights.num_bits, weights.symmetric, group_size))
        )
    return groups


def _validated(folder: ModelFolder, model: type[M], data: object, what: str = "") -> M:
    """`data` read into `model`, or one line naming the field of quantization_config."""
    try:
        return model.model_validate(data)
    except ValidationError as e:
        error = e.errors()[0]
        where = ".".join(str(part) for part in error["loc"])
        field = " ".join(filter(None, ["quantization_config", what, where]))
        message = error["msg"].removeprefix("Value error, ")
        raise MatcliError(
            f"{folder.path}: config.json {field}: {message}; re-create the parent with matcli "
            "quantize"
        ) from None


def _matches(module: str, target: str) -> bool:
    if target.startswith("re:"):
        return re.match(target[3:], module) is not None
    return target == module or target == "Linear"


def _scheme_of(
    folder: ModelFolder, module: str, groups: list[tuple[list[str], WeightScheme]]
) -> WeightScheme:
    # Name and regex targets take precedence over class-name targets, as in compressed-tensors.
    for precise in (True, False):
        for targets, scheme in groups:
            if any(_matches(module, t) for t in targets if (t != "Linear") == precise):
                return scheme
    raise MatcliError(
        f"{folder.path}: {module} has packed weights but no quantization_config group "
        "targets it; the config is inconsistent"
    )


def _packed_linear(folder: ModelFolder, module: str, scheme: WeightScheme) -> PackedLinear:
    def info(suffix: str):
        name = f"{module}.{suffix}"
        if name not in folder.tensors:
            raise MatcliError(
                f"{folder.path}: {module} has {PACKED} but no {suffix}; "
                "the checkpoint is incomplete"
            )
        return folder.tensors[name]

    shape = folder.read_array(info(SHAPE).name).tolist()
    if len(shape) != 2:
        raise MatcliError(f"{folder.path}: {module}.{SHAPE} is {shape}, expected [out, in]")
    out_features, in_features = shape
    linear = PackedLinear(module, scheme, out_features, in_features)
    try:
        groups = linear.groups
    except ValueError as e:
        raise MatcliError(f"{folder.path}: {module}: {e}") from e
    expected = {
        PACKED: (out_features, packed_columns(in_features, scheme.bits)),
        SCALE: (out_features, groups),
    }
    if not scheme.symmetric:
        expected[ZERO] = (packed_columns(out_features, scheme.bits), groups)
    for suffix, want in expected.items():
        if info(suffix).shape != want:
            _refuse_padded_layout(folder, linear, info(suffix).shape)
            raise MatcliError(
                f"{folder.path}: {module}.{suffix} has shape {list(info(suffix).shape)}, "
                f"expected {list(want)} for {scheme.bits}-bit codes of a {shape} weight"
            )
    return linear


def _refuse_padded_layout(folder: ModelFolder, linear: PackedLinear, shape: tuple) -> None:
    """One line naming the cause when the packed weight has compressed-tensors 0.17's shape."""
    bits = linear.scheme.bits
    if shape == (linear.out_features, padded_packed_columns(linear.in_features, bits)):
        raise MatcliError(
            f"{folder.path}: {linear.module}.{PACKED} holds {32 // bits} {bits}-bit codes per "
            f"int32 word with padding (compressed-tensors < {DENSE_LAYOUT_SINCE}); matcli reads "
            f"the dense layout of compressed-tensors >= {DENSE_LAYOUT_SINCE}: re-save the folder "
            "with a newer compressed-tensors, or re-create the parent with matcli quantize"
        )


def read_codes(folder: ModelFolder, linear: PackedLinear, start: int, stop: int) -> torch.Tensor:
    """Unsigned codes [stop - start, in] of rows [start, stop) of a quantized Linear."""
    import torch

    return torch.from_numpy(read_code_array(folder, linear, start, stop))


def read_code_array(folder: ModelFolder, linear: PackedLinear, start: int, stop: int):
    """read_codes as a numpy uint8 array."""
    packed = folder.read_elements(linear.tensor(PACKED), start, stop)
    # Stored codes are offset by 2^(b-1) from the signed ones: exactly the unsigned codes.
    return unpack_unsigned(packed, linear.scheme.bits, linear.in_features)


def read_scale_zero(folder: ModelFolder, linear: PackedLinear) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale [out, groups] (stored dtype) and unsigned integer zero point [out, groups]."""
    import torch

    scale = folder.read(linear.tensor(SCALE))
    bits = linear.scheme.bits
    if linear.scheme.symmetric:
        return scale, torch.full(scale.shape, grid.symmetric_zero(bits), dtype=torch.int32)
    packed = folder.read(linear.tensor(ZERO))
    signed = unpack_int32(packed.t().contiguous(), bits, linear.out_features).t()
    return scale, grid.from_signed(signed, bits).to(torch.int32)


def pack_codes(signed: torch.Tensor, bits: int) -> torch.Tensor:
    return pack_int32(signed, bits)


def pack_zero_point(zero: torch.Tensor, bits: int) -> torch.Tensor:
    """Unsigned zero points [out, groups] -> compressed-tensors' layout (packed along dim 0)."""
    signed = grid.to_signed(zero, bits)
    return pack_int32(signed.t().contiguous(), bits).t().contiguous()
