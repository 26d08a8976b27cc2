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
from typing import TYPE_CHECKING, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from matcli.checkpoint.reader import ModelFolder
from matcli.errors import MatcliError
from matcli.quant import grid
from matcli.quant.packing import pack_int32, packed_columns, unpack_int32, unpack_unsigned
from matcli.quant.widths import MAX_WIDTH

M = TypeVar("M", bound=BaseModel)

if TYPE_CHECKING:  # torch is imported by the functions on tensors: slicing reads without it
    import torch

PACKED, SCALE, SHAPE, ZERO = "weight_packed", "weight_scale", "weight_shape", "weight_zero_point"


@dataclass(frozen=True)
class WeightScheme:
    bits: int
    symmetric: bool
    group_size: int | None  # None: one scale per output channel

    def ct_args(self) -> dict:
        return {
            "num_bits": self.bits,
            "type": "int",
            "symmetric": self.symmetric,
            "strategy": "channel" if self.group_size is None else "group",
            "group_size": self.group_size,
        }

    @property
    def name(self) -> str:
        return "symmetric" if self.symmetric else "asymmetric"


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
    config = {
        "quant_method": "compressed-tensors",
        "format": "pack-quantized",
        "quantization_status": "compressed",
        "config_groups": {
            f"group_{i}": {
                "targets": [f"re:{regex}"],
                "weights": scheme.ct_args(),
                "format": "pack-quantized",
            }
            for i, (regex, scheme) in enumerate(groups)
        },
        "ignore": ignore,
    }
    try:
        config["version"] = metadata.version("compressed-tensors")
    except metadata.PackageNotFoundError:
        pass
    return config


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
            raise MatcliError(
                f"{folder.path}: {module}.{suffix} has shape {list(info(suffix).shape)}, "
                f"expected {list(want)} for {scheme.bits}-bit codes of a {shape} weight"
            )
    return linear


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
