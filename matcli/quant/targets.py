"""Which Linear layers get quantized, and how compressed-tensors is told about them."""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Hashable

from matcli.arch import Architecture, LinearKind
from matcli.errors import MatcliError

# `--layers` names: the paper quantizes FFN weights only; attention and all are options.
LAYER_SETS: dict[str, set[LinearKind]] = {
    "ffn": {"ffn"},
    "attention": {"attention"},
    "ffn,attention": {"ffn", "attention"},
    "attention,ffn": {"ffn", "attention"},
    "all": {"ffn", "attention", "other"},
}


def select_linears(
    arch: Architecture, tensors: dict[str, tuple[int, ...]], layers: str
) -> list[str]:
    """Module names (tensor name without `.weight`) of the 2-D weights chosen by `--layers`.

    `layers` is one of LAYER_SETS or `re:REGEX`, matched against module names.
    """
    if layers.startswith("re:"):
        try:
            pattern = re.compile(layers[3:])
        except re.error as e:
            raise MatcliError(f"--layers regex {layers[3:]!r} is invalid: {e}") from e

        def chosen(module: str) -> bool:
            return pattern.search(module) is not None
    elif layers in LAYER_SETS:
        kinds = LAYER_SETS[layers]

        def chosen(module: str) -> bool:
            return arch.linear_kind(module) in kinds
    else:
        raise MatcliError(f"--layers {layers!r} is not one of {', '.join(LAYER_SETS)} or re:REGEX")
    modules = [
        name.removesuffix(".weight")
        for name, shape in sorted(tensors.items())
        if name.endswith(".weight") and len(shape) == 2 and chosen(name.removesuffix(".weight"))
    ]
    if not modules:
        raise MatcliError(
            f"--layers {layers!r} matches no 2-D Linear weight in this {arch.name} checkpoint"
        )
    return modules


def targets_regex(arch: Architecture, modules: list[str]) -> str:
    """One regex matching exactly `modules`, as compressed-tensors `targets` need, under every
    name a loader gives them.

    Modules inside decoder layers are written as (layers) x (names relative to a layer),
    layers that quantize the same names sharing one term, with every layer prefix of the
    family: its checkpoint layouts (transformers renames old ones on load) and its serving
    layouts (vLLM applies regex targets to its own module names). Modules outside the layers
    keep their checkpoint names.
    """
    names_of: dict[int, set[str]] = defaultdict(set)
    outside = []
    for module in modules:
        split = arch.split_layer(module)
        if split:
            names_of[split[0]].add(split[1])
        else:
            outside.append(re.escape(module))
    layers_of: dict[tuple[str, ...], list[int]] = defaultdict(list)
    for layer, names in names_of.items():
        layers_of[tuple(sorted(names))].append(layer)
    terms = [
        arch.projection_pattern(layers, list(names)) for names, layers in sorted(layers_of.items())
    ]
    return "^(?:" + "|".join(terms + sorted(outside)) + ")$"


def serving_warnings(arch: Architecture, linears: list[str], quantized: list[str]) -> list[str]:
    """What vLLM would refuse or miss in a folder quantizing `quantized` among the 2-D
    weights `linears` (module names)."""
    fused = fused_conflicts(arch, linears, dict.fromkeys(quantized, 1))
    warnings = [fused] if fused else []
    outside = sorted(m for m in quantized if arch.split_layer(m) is None)
    if outside:
        others = f" (and {len(outside) - 1} more)" if len(outside) > 1 else ""
        warnings.append(
            f"{outside[0]}{others} is outside the decoder layers: its compressed-tensors target "
            "is its checkpoint name, which vLLM may rename (Gemma 3n: model.self_decoder.*) and "
            "then not find; for vLLM, quantize decoder-layer Linears only"
        )
    return warnings


def fused_conflicts(
    arch: Architecture, modules: list[str], scheme_of: dict[str, Hashable]
) -> str | None:
    """A warning when vLLM would refuse the folder: it fuses some Linears of a layer into one
    (q/k/v, gate/up; the family's `fused_linears`) and quantizes the fused module only when
    every part has the same scheme. `modules` are the layers' 2-D weights (without
    `.weight`), `scheme_of` the scheme of each quantized one (absent: unquantized)."""
    present: dict[int, set[str]] = defaultdict(set)
    for module in modules:
        split = arch.split_layer(module)
        if split:
            present[split[0]].add(split[1])
    mixed = set()
    for layer, names in sorted(present.items()):
        for parts in arch.family.fused_linears:
            schemes = {scheme_of.get(arch.layer_name(layer, p)) for p in parts if p in names}
            if len(schemes) > 1:
                mixed.add((" + ".join(parts), layer))
    if not mixed:
        return None
    fused = sorted({parts for parts, _ in mixed})
    layers = sorted({layer for _, layer in mixed})
    return (
        f"vLLM fuses {'; '.join(fused)} into one Linear and quantizes it only when every part "
        f"has the same scheme; layer(s) {', '.join(map(str, layers))} mix them, so vLLM will "
        "refuse this folder (transformers loads it): quantize all parts or none (--layers)"
    )
