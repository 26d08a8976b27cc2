"""What a MatQuant parent records about itself in config.json (key `matcli`).

`slice` reads it to check requests (a width the parent was not trained for gets a warning)
and copies it into every slice, so an artifact always says where it came from.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from matcli.errors import MatcliError
from matcli.quant.widths import widest_first

CONFIG_KEY = "matcli"


class ParentInfo(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Literal["parent"] = "parent"
    parent_bits: int
    scheme: Literal["symmetric", "asymmetric"]
    group_size: int | None
    # Widths whose loss the parent was trained on; RTN trains none, so only its own width.
    trained_bits: list[int]
    loss_weights: list[float] | None = None
    method: str
    layers: str
    extra_precision: bool = False


class SliceInfo(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Literal["slice"] = "slice"
    bits: int | None  # None for per-layer (Mix'n'Match) widths
    layer_bits: dict[str, int] | None = None
    average_bits: float
    format: Literal["compressed-tensors", "dense", "gguf"]
    storage_bits: int | None = None
    extra_precision: bool = False
    extra_bucket_fraction: float | None = None
    parent: ParentInfo | None


def parent_info(config: dict) -> ParentInfo | None:
    """The parent's own record, or None for a checkpoint matcli did not make."""
    block = config.get(CONFIG_KEY)
    if not isinstance(block, dict) or block.get("role") != "parent":
        return None
    try:
        return ParentInfo.model_validate(block)
    except ValidationError as e:
        raise MatcliError(
            f"config.json key {CONFIG_KEY!r} is malformed ({e.errors()[0]['msg']}); "
            "re-create the parent with matcli quantize"
        ) from e


def info_from_options(options, method: str) -> ParentInfo:
    """The record of a parent made by `method` with QuantizeOptions `options`."""
    weight_of = dict(zip(options.train_bits, options.loss_weights))
    trained_bits = widest_first(weight_of)
    return ParentInfo(
        parent_bits=options.bits,
        scheme=options.scheme,
        group_size=options.group_size,
        trained_bits=trained_bits,
        loss_weights=[weight_of[bits] for bits in trained_bits],
        method=method,
        layers=options.layers,
        extra_precision=options.extra_precision,
    )
