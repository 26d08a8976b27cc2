"""Which Linear layers get quantized, and how compressed-tensors is told about them."""

from __future__ import annotations

import re

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
    """One regex matching exactly `modules`, as compressed-tensors `targets` need.

    When the modules are whole (layer set) x (projection set) products of the family's
    Linears, the regex is written from the family's layer templates, so it also matches the
    module names transformers uses after renaming an old checkpoint layout. Otherwise the
    module names are listed one by one.
    """
    split = {m: arch.split_layer(m) for m in modules}
    if all(s and arch.linear_kind(m) for m, s in split.items()):
        layers = sorted({s[0] for s in split.values()})
        names = sorted({s[1] for s in split.values()})
        if len(layers) * len(names) == len(modules):
            return arch.projection_regex(layers, names)
    return "^(?:" + "|".join(re.escape(m) for m in modules) + ")$"
