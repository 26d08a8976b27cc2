"""Differentiable MatQuant: Linears whose forward uses dequant(S(Q(W, c), r)).

The forward values are exactly those of `grid` (the same rounding, `grid.round_to_grid` with
ties to even, clamping and slicing as the exported parent and `matcli slice`); gradients use
the straight-through estimator through both roundings (Q's and S's): d w_r / d w = 1 inside
the clamp ranges, 0 outside.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from matcli.quant import grid
from matcli.quant.ct_format import WeightScheme


def _round_ste(x: torch.Tensor) -> torch.Tensor:
    return x + (grid.round_to_grid(x) - x).detach()


def _round_half_up_ste(x: torch.Tensor) -> torch.Tensor:
    return x + (torch.floor(x + 0.5) - x).detach()


def fake_codes(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int) -> torch.Tensor:
    """Q(w, c) as float codes on [0, 2^c - 1]: clamp(round(w / scale) + zero), STE gradients.

    `scale` and `zero` are [rows, groups]; the result is [rows, groups, columns per group].
    """
    rows, cols = w.shape
    g = w.reshape(rows, scale.shape[1], -1)
    q = _round_ste(g / scale.unsqueeze(-1)) + zero.unsqueeze(-1)
    return q.clamp(0, (1 << bits) - 1)


def fake_slice(
    q: torch.Tensor, parent_bits: int, bits: int, extra_precision: bool = False
) -> torch.Tensor:
    """S(q, c, r) on the c-bit grid: clamp(round_half_up(q / 2^k), 0, 2^r - 1) * 2^k, STE."""
    k = parent_bits - bits
    if k == 0:
        return q
    x = _round_half_up_ste(q / (1 << k))
    if not extra_precision:
        x = x.clamp(0, (1 << bits) - 1)
    return x * (1 << k)


class _MatQuantSTE(torch.autograd.Function):
    """dequant(S(Q(w), r)) in one autograd node: the straight-through gradient is the
    incoming gradient where neither Q's nor S's clamp is active, and 0 where one is. Only that
    mask is kept for backward, not every intermediate of the chain, so a width's graph costs
    about what a plain Linear's does."""

    @staticmethod
    def forward(ctx, w, scale, zero, parent_bits: int, bits: int, extra_precision: bool):
        rows, cols = w.shape
        u = w.reshape(rows, scale.shape[1], -1) / scale.unsqueeze(-1)
        q = grid.round_to_grid(u) + zero.unsqueeze(-1)
        top = (1 << parent_bits) - 1
        inside = (q >= 0) & (q <= top)
        q = q.clamp(0, top)
        k = parent_bits - bits
        if k:
            x = torch.floor(q / (1 << k) + 0.5)
            if not extra_precision:
                inside &= x <= (1 << bits) - 1
                x = x.clamp(0, (1 << bits) - 1)
            q = x * (1 << k)
        ctx.save_for_backward(inside)
        return ((q - zero.unsqueeze(-1)) * scale.unsqueeze(-1)).reshape(rows, cols)

    @staticmethod
    def backward(ctx, grad):
        (inside,) = ctx.saved_tensors
        return (
            (grad.reshape(inside.shape) * inside).reshape(grad.shape),
            None,
            None,
            None,
            None,
            None,
        )


class FakeQuantLinear(nn.Module):
    """A Linear that runs at full precision (`bits = None`) or as its r-bit MatQuant slice.

    The scale and zero point are the MinMax ones of the current weights (recomputed from the
    weights at every forward, without gradient), rounded to the dtype they will be stored in,
    so the codes exported at the end are the codes the last forward used. Optional learnable
    weight clipping (OmniQuant's LWC) multiplies the range by sigmoid(clip) per channel/group.
    """

    def __init__(
        self,
        linear: nn.Linear,
        scheme: WeightScheme,
        scale_dtype: torch.dtype,
        extra_precision: bool = False,
    ):
        super().__init__()
        self.linear = linear
        self.scheme = scheme
        self.scale_dtype = scale_dtype
        self.extra_precision = extra_precision
        self.bits: int | None = None
        self.clip_high: nn.Parameter | None = None
        self.clip_low: nn.Parameter | None = None
        # LET: inputs are divided by `input_scale` and weight columns multiplied by it.
        self.input_scale: nn.Parameter | None = None

    @property
    def weight(self) -> torch.Tensor:
        return self.linear.weight

    def enable_lwc(self, init: float = 4.0) -> None:
        """OmniQuant's learnable weight clipping: gamma = sigmoid(high), beta = sigmoid(low)."""
        groups = grid.groups_of(self.linear.in_features, self.scheme.group_size)
        shape = (self.linear.out_features, groups)
        self.clip_high = nn.Parameter(torch.full(shape, init, device=self.weight.device))
        if not self.scheme.symmetric:
            self.clip_low = nn.Parameter(torch.full(shape, init, device=self.weight.device))

    def enable_let(self) -> None:
        self.input_scale = nn.Parameter(
            torch.ones(self.linear.in_features, device=self.weight.device)
        )

    def transformed_weight(self) -> torch.Tensor:
        w = self.linear.weight
        return w * self.input_scale if self.input_scale is not None else w

    def params(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Scale and zero point: MinMax of the weights (times the learned clip factors)."""
        if self.clip_high is None:
            scale, zero = grid.minmax_params(
                w.detach(),
                self.scheme.bits,
                self.scheme.symmetric,
                self.scheme.group_size,
                self.scale_dtype,
            )
            return scale.to(w.dtype), zero.to(w.dtype)
        levels = (1 << self.scheme.bits) - 1
        g = w.reshape(w.shape[0], self.clip_high.shape[1], -1)
        high = torch.sigmoid(self.clip_high)
        if self.scheme.symmetric:
            scale = (2 * g.abs().amax(-1) * high / levels).clamp(min=1e-8)
            zero = torch.full_like(scale, float(grid.symmetric_zero(self.scheme.bits)))
        else:
            hi = g.amax(-1).clamp(min=0) * high
            lo = g.amin(-1).clamp(max=0) * torch.sigmoid(self.clip_low)
            scale = ((hi - lo) / levels).clamp(min=1e-8)
            zero = _round_ste(-lo / scale).clamp(0, levels)
        return scale, zero

    def quantized_weight(self, bits: int) -> torch.Tensor:
        w = self.transformed_weight()
        scale, zero = self.params(w)
        if self.clip_high is None and self.input_scale is None:  # QAT: no gradient to the grid
            return _MatQuantSTE.apply(w, scale, zero, self.scheme.bits, bits, self.extra_precision)
        q = fake_codes(w, scale, zero, self.scheme.bits)
        q = fake_slice(q, self.scheme.bits, bits, self.extra_precision)
        return ((q - zero.unsqueeze(-1)) * scale.unsqueeze(-1)).reshape(w.shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.bits is None:
            return self.linear(x)
        if self.input_scale is not None:
            x = x / self.input_scale
        return nn.functional.linear(
            x, self.quantized_weight(self.bits).to(x.dtype), self.linear.bias
        )

    @torch.no_grad()
    def export(
        self, weight: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(uint8 codes, scale in its storage dtype, integer zero point) of the current weights,
        or of `weight` (the same Linear's weight gathered from its shards), on the CPU. They
        are computed where the weights are (a GPU too), with the forward's own arithmetic."""
        if weight is not None:
            return minmax_codes(weight.detach().float().cpu(), self.scheme, self.scale_dtype)
        w = self.transformed_weight().detach().float()
        if self.clip_high is None:
            codes, scale, zero = minmax_codes(w, self.scheme, self.scale_dtype)
        else:
            s, z = self.params(w)
            scale, zero = s.to(self.scale_dtype), grid.round_to_grid(z).to(torch.int32)
            codes = grid.quantize_codes(w, scale, zero, self.scheme.bits)
        return codes.cpu(), scale.cpu(), zero.cpu()


def minmax_codes(
    w: torch.Tensor, scheme: WeightScheme, scale_dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Q(w, c) with MinMax parameters: exactly what the fake-quantized forward computed."""
    scale, zero = grid.minmax_params(
        w, scheme.bits, scheme.symmetric, scheme.group_size, scale_dtype
    )
    return grid.quantize_codes(w, scale, zero, scheme.bits), scale, zero


def wrap_linears(
    model: nn.Module,
    modules: list[str],
    scheme: WeightScheme,
    scale_dtype: torch.dtype,
    extra_precision: bool = False,
) -> dict[str, FakeQuantLinear]:
    """Replace the named nn.Linear modules by FakeQuantLinear, in place."""
    wrapped = {}
    for name in modules:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        linear = getattr(parent, child)
        if not isinstance(linear, nn.Linear):
            continue
        fq = FakeQuantLinear(linear, scheme, scale_dtype, extra_precision)
        setattr(parent, child, fq)
        wrapped[name] = fq
    return wrapped


@contextmanager
def at_bits(wrapped: dict[str, FakeQuantLinear], bits: int | None) -> Iterator[None]:
    """Run the model as its r-bit slice (None: full precision) inside the block."""
    previous = {name: fq.bits for name, fq in wrapped.items()}
    for fq in wrapped.values():
        fq.bits = bits
    try:
        yield
    finally:
        for name, fq in wrapped.items():
            fq.bits = previous[name]
