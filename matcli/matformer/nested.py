"""Nested FFNs inside one transformers model: every granularity is a view of the same weights.

Granularity g of layer i uses the first m = widths[i][g] hidden neurons (MatFormer Eq. 1):
gate and up rows [:m], down columns [:, :m] (a fused gate_up: rows [:m] and [full:full+m]).
The FFN's Linears get a forward that multiplies by those views, so the family's own MLP code
(activation, GeGLU, Gemma 3n's activation sparsity over the active width) runs unchanged and
computes exactly what `extract` cuts. Which Linears are the FFN's comes from the family data.
Gradients of every granularity land in the one full weight: nothing is copied.
"""

from __future__ import annotations

import contextlib
import types
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from matcli.arch import Architecture, resolve
from matcli.errors import MatcliError

# How a Linear of the FFN is cut to m neurons.
ROWS, COLUMNS, HALVES = "rows", "columns", "halves"


def _cut_of(arch: Architecture, relative: str) -> str:
    ffn = arch.family.ffn
    return {ffn.down: COLUMNS, ffn.fused_gate_up: HALVES}.get(relative, ROWS)


class NestedFfn:
    """The model's FFNs made nested: `at(g)` runs granularity g (an index into each layer's
    widths); outside it, the full width."""

    def __init__(self, model: nn.Module, widths: list[list[int]]):
        self.arch, self.linears = _linears_by_name(model)
        if sorted(self.linears) != list(range(len(widths))):
            raise MatcliError(
                f"the model has FFNs in layers {sorted(self.linears)[:3]}..., but {len(widths)} "
                "layers were given widths"
            )
        self.widths = widths
        self.granularity: int | None = None
        for layer, modules in self.linears.items():
            for relative, linear in modules.items():
                cut = _cut_of(self.arch, relative)
                linear.forward = types.MethodType(_nested_forward(self, layer, cut), linear)

    @contextlib.contextmanager
    def at(self, granularity: int) -> Iterator[None]:
        previous, self.granularity = self.granularity, granularity
        try:
            yield
        finally:
            self.granularity = previous

    def width(self, layer: int) -> int | None:
        """Neurons layer `layer` uses now (None: all)."""
        return None if self.granularity is None else self.widths[layer][self.granularity]

    def views(self, layer: int, granularity: int) -> dict[str, torch.Tensor]:
        """The weights granularity `granularity` multiplies by in `layer`, by module name:
        what the forward uses, exposed so that tests can see they are views."""
        m = self.widths[layer][granularity]
        return {
            relative: cut_weight(linear.weight, _cut_of(self.arch, relative), m)
            for relative, linear in self.linears[layer].items()
        }


def _linears_by_name(model: nn.Module) -> tuple[Architecture, dict[int, dict[str, nn.Linear]]]:
    """{layer: {name relative to the layer: Linear}} of the FFN."""
    arch = resolve(model.config.to_dict(), [n for n, _ in model.named_parameters()])
    ffn = arch.family.ffn
    names = {n for n in (ffn.gate, ffn.up, ffn.down, ffn.fused_gate_up) if n}
    found: dict[int, dict[str, nn.Linear]] = {}
    for name, module in model.named_modules():
        split = arch.split_layer(name)
        if split and split[1] in names and isinstance(module, nn.Linear):
            found.setdefault(split[0], {})[split[1]] = module
    if not found:
        raise MatcliError(
            f"found no FFN Linears ({', '.join(sorted(names))}) in the {arch.name} model: its "
            f"family data (matcli/arch/families/{arch.name}.yaml) names no FFN this model has"
        )
    return arch, found


def cut_weight(weight: torch.Tensor, cut: str, m: int) -> torch.Tensor:
    """A view of the first m neurons of an FFN weight (HALVES: the fused gate_up's first m
    gate rows; its up rows are `weight[full:full + m]`, see `_nested_forward`)."""
    return weight[:, :m] if cut == COLUMNS else weight[:m]


def _nested_forward(nested: NestedFfn, layer: int, cut: str):
    """The forward of one FFN Linear: the full layer, or the current granularity's view."""

    def forward(self: nn.Linear, x: torch.Tensor) -> torch.Tensor:
        m = nested.width(layer)
        if m is None or m == nested.widths[layer][-1]:
            return F.linear(x, self.weight, self.bias)
        bias = self.bias
        if cut == COLUMNS:  # the output bias stays whole (MatFormer-OLMo)
            return F.linear(x, cut_weight(self.weight, cut, m), bias)
        if cut == ROWS:
            return F.linear(x, cut_weight(self.weight, cut, m), None if bias is None else bias[:m])
        full = self.weight.shape[0] // 2  # HALVES: gate rows, then up rows
        parts = [
            F.linear(x, self.weight[a : a + m], None if bias is None else bias[a : a + m])
            for a in (0, full)
        ]
        return torch.cat(parts, dim=-1)

    return forward


@torch.no_grad()
def permute_neurons(nested: NestedFfn, ranking: dict[int, list[int]]) -> None:
    """Sort every FFN's neurons by `ranking` (most important first), in place: the same
    function, with the best prefix first (what `matcli reorder` writes)."""
    for layer, modules in nested.linears.items():
        order = torch.tensor(ranking[layer], device=next(iter(modules.values())).weight.device)
        for relative, linear in modules.items():
            cut = _cut_of(nested.arch, relative)
            if cut == COLUMNS:
                linear.weight.copy_(linear.weight[:, order])
                continue
            index = torch.cat([order, order + len(order)]) if cut == HALVES else order
            linear.weight.copy_(linear.weight[index])
            if linear.bias is not None:
                linear.bias.copy_(linear.bias[index])
