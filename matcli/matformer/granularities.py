"""The granularities of a nested (MatFormer) model: `nest --widths` and the record it leaves.

`--widths 0.25,0.5,0.75,1` names fractions of each layer's FFN width; granularity g of layer
i keeps its first `widths[g] * full_i` neurons, which must be a whole number. `matcli nest`
writes them, per layer, into config.json under `matcli` (role `nested`):

    "matcli": {"role": "nested", "granularities": [0.25, 0.5, 0.75, 1.0],
               "trained_ffn_widths": [[384, 768, 1152, 1536], ...one list per layer], ...}

`extract` (width warnings, `--budget` candidates) and `inspect` read `trained_ffn_widths`,
the way Gemma 3n's trained 8192/16384 are read from its family data. No torch here: extract
imports this module.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from matcli.errors import MatcliError
from matcli.matformer.ffn_spec import width_of

NESTED_ROLE = "nested"


class NestedInfo(BaseModel):
    """What a nested checkpoint says about itself in config.json `matcli`."""

    model_config = ConfigDict(extra="forbid")

    role: Literal["nested"] = NESTED_ROLE
    granularities: list[float]  # fractions of each layer's FFN width, ascending, last 1
    trained_ffn_widths: list[list[int]]  # per layer: its width at each granularity
    reordered: bool  # neurons were sorted by importance before training
    method: str  # how the granularities were trained ("nest: ...")
    teacher: str  # what the granularities were distilled from


def check_fractions(widths: list[float]) -> list[float]:
    """--widths: fractions in (0, 1], strictly increasing, the last the full width."""
    if not widths:
        raise ValueError("give at least one width, e.g. --widths 0.25,0.5,0.75,1")
    outside = [w for w in widths if not 0 < w <= 1]
    if outside:
        raise ValueError(
            f"--widths {outside[0]:g} is outside (0, 1]: widths are fractions of each layer's "
            "FFN width, e.g. 0.25,0.5,0.75,1"
        )
    if any(b <= a for a, b in zip(widths, widths[1:])):
        raise ValueError(
            f"--widths {','.join(f'{w:g}' for w in widths)} is not increasing; list each "
            "granularity once, smallest first"
        )
    if widths[-1] != 1:
        raise ValueError(
            f"--widths ends at {widths[-1]:g}: the full width is the largest granularity (the "
            "teacher's own), so end the list with 1"
        )
    return widths


def layer_widths(fractions: list[float], full_widths: list[int]) -> list[list[int]]:
    """Per layer, the neurons of each granularity; a fraction that does not give a whole
    number of neurons for some layer is refused."""
    return [
        [width_of(str(f), full, f"--widths {f:g} for layer {layer}") for f in fractions]
        for layer, full in enumerate(full_widths)
    ]


def nested_widths(config: dict, full_widths: list[int]) -> list[list[int]] | None:
    """The per-layer trained widths a nested checkpoint records, checked against its FFN
    widths; None for a checkpoint `matcli nest` did not make."""
    block = config.get("matcli")
    if not isinstance(block, dict) or block.get("role") != NESTED_ROLE:
        return None
    try:
        info = NestedInfo.model_validate(block)
    except ValidationError as e:
        raise MatcliError(
            f"config.json matcli (role nested) is malformed ({e.errors()[0]['msg']}); "
            "re-create the model with matcli nest"
        ) from None
    widths = info.trained_ffn_widths
    if len(widths) != len(full_widths) or not all(map(_ascending_to, widths, full_widths)):
        raise MatcliError(
            "config.json matcli.trained_ffn_widths does not describe this model (one ascending "
            f"list per layer, ending at the layer's FFN width, for {len(full_widths)} layers); "
            "re-create the model with matcli nest"
        )
    return widths


def _ascending_to(levels: list[int], full: int) -> bool:
    """Positive, strictly increasing, ending at `full`."""
    return bool(levels) and levels[0] > 0 and levels[-1] == full and levels == sorted(set(levels))
