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
    about what a plain Linear's does. A learned scale (--learn-scales) also keeps LSQ's
    per-element slope d w_r / d alpha; a MinMax scale gets no gradient."""

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
        # LSQ's gradient of a learned scale (Esser et al. 2020), per element: the code it
        # dequantizes, q - z, less u = w / alpha where the rounding passes the gradient.
        if ctx.needs_input_grad[1]:
            ctx.save_for_backward(inside, (q - zero.unsqueeze(-1)) - u * inside)
        else:
            ctx.save_for_backward(inside)
        return ((q - zero.unsqueeze(-1)) * scale.unsqueeze(-1)).reshape(rows, cols)

    @staticmethod
    def backward(ctx, grad):
        inside, *scale_slope = ctx.saved_tensors
        grouped = grad.reshape(inside.shape)
        grad_scale = (grouped * scale_slope[0]).sum(-1) if scale_slope else None
        return (grouped * inside).reshape(grad.shape), grad_scale, None, None, None, None


class FakeQuantLinear(nn.Module):
    """A Linear that runs at full precision (`bits = None`) or as its r-bit MatQuant slice.

    The scale and zero point are the MinMax ones of the current weights (recomputed from the
    weights at every forward, without gradient), rounded to the dtype they will be stored in,
    so the codes exported at the end are the codes the last forward used. Optional learnable
    weight clipping (OmniQuant's LWC) multiplies the range by sigmoid(clip) per channel/group;
    or the scale itself is learned (LSQ, `enable_learned_scale`) and no longer follows the
    weights.
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
        # --learn-scales: alpha = MinMax alpha at the start * exp(scale_log_gain), per group.
        self.scale_log_gain: nn.Parameter | None = None

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

    def enable_learned_scale(self) -> None:
        """LSQ: the scale becomes a trainable parameter, starting from the MinMax scale of the
        current weights (in its storage dtype). It is trained as the log of its ratio to that
        start, so it stays positive and an optimizer step changes it by a relative amount,
        whatever the layer's magnitude (docs/architecture.md, decision 36)."""
        start, _ = grid.minmax_params(
            self.weight.detach(),
            self.scheme.bits,
            self.scheme.symmetric,
            self.scheme.group_size,
            self.scale_dtype,
        )
        self.register_buffer("scale_start", start.float(), persistent=False)
        self.scale_log_gain = nn.Parameter(torch.zeros_like(self.scale_start))

    def learned_scale(self, log_gain: torch.Tensor | None = None) -> torch.Tensor:
        """The learned scale as it is stored: start * exp(gain) rounded to the scale dtype
        (to nearest; STE), at least the dtype's smallest normal number. With no steps taken it
        is the MinMax scale exactly, since exp(0) = 1."""
        gain = self.scale_log_gain if log_gain is None else log_gain
        alpha = self.scale_start * torch.exp(gain.float().to(self.scale_start.device))
        tiny = torch.finfo(self.scale_dtype).tiny
        stored = alpha.detach().to(self.scale_dtype).clamp(min=tiny).float()
        return alpha + (stored - alpha).detach()

    def enable_let(self) -> None:
        self.input_scale = nn.Parameter(
            torch.ones(self.linear.in_features, device=self.weight.device)
        )

    def transformed_weight(self) -> torch.Tensor:
        w = self.linear.weight
        return w * self.input_scale if self.input_scale is not None else w

    def params(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Scale and zero point: learned (--learn-scales), or MinMax of the weights (times the
        learned clip factors)."""
        if self.scale_log_gain is not None:
            zero = torch.full_like(self.scale_start, float(grid.symmetric_zero(self.scheme.bits)))
            return self.learned_scale().to(w.dtype), zero.to(w.dtype)
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
        if self.clip_high is None and self.input_scale is None:  # QAT: one autograd node
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
        self, weight: torch.Tensor | None = None, log_gain: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(uint8 codes, scale in its storage dtype, integer zero point) of the current weights,
        or of `weight` and `log_gain` (the same Linear's gathered from their shards), on the
        CPU. They are computed where the weights are (a GPU too), with the forward's own
        arithmetic."""
        if self.scale_log_gain is not None:
            w = self.weight if weight is None else weight
            scale = self.learned_scale(log_gain).detach()
            return self._codes_at(w.detach().float().to(scale.device), scale)
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

    def _codes_at(
        self, w: torch.Tensor, scale: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Q(w, c) on the symmetric grid of a given (learned) float32 scale: codes, the scale
        in its storage dtype (exactly the same number) and the zero point."""
        zero = torch.full(scale.shape, grid.symmetric_zero(self.scheme.bits), dtype=torch.int32)
        codes = grid.quantize_codes(w, scale, zero.to(scale.device), self.scheme.bits)
        return codes.cpu(), scale.to(self.scale_dtype).cpu(), zero


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
