"""Grid math of Matryoshka Quantization: pure tensor functions, no I/O.

Notation follows the MatQuant paper (Nair et al. 2025): c is the parent bit-width, r the
sliced width, k = c - r. Codes are unsigned integers on the c-bit grid [0, 2^c - 1]; a
weight is recovered as scale * (code - zero).

- `minmax_params` / `quantize_codes`: MinMax quantization Q(w, c) (paper Eq. 1), asymmetric
  or symmetric, one (scale, zero) per output channel or per group of input columns.
- `slice_codes`: the slicing operator S(q, c, r) (paper Eq. 6) in integer arithmetic,
  rounding half up, then clamping; `extra_precision=True` drops the clamp (2^r + 1 levels).
- `dequantize`: scale * (code - zero), computed exactly as compressed-tensors does it, so a
  checkpoint loaded by transformers materializes the same floats as matcli computes here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from matcli.checkpoint.safetensors_file import NUMPY_FLOATS
from matcli.quant.widths import check_width

if TYPE_CHECKING:  # torch is imported by the functions on tensors: slicing's tables need none
    import torch


def groups_of(num_columns: int, group_size: int | None) -> int:
    """Number of scale columns: 1 per output channel, or one per group of input columns."""
    if group_size is None:
        return 1
    if group_size <= 0 or num_columns % group_size:
        raise ValueError(f"group size {group_size} does not divide the {num_columns} input columns")
    return num_columns // group_size


def _grouped(w: torch.Tensor, group_size: int | None) -> torch.Tensor:
    """View a [rows, cols] tensor as [rows, groups, columns per group]."""
    rows, cols = w.shape
    return w.reshape(rows, groups_of(cols, group_size), -1)


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    import torch

    return torch.float64 if dtype == torch.float64 else torch.float32


def round_to_grid(x: torch.Tensor) -> torch.Tensor:
    """Round to the nearest integer, ties to even: the one rounding of Q(w, c) (codes and the
    asymmetric zero point), here and in training's fake quantization alike, so that the parent
    slices to exactly the model evaluated in training.

    The paper's Eq. 1 says "round" without a tie rule. Ties are not rare: w / alpha is a
    quotient of two bf16 numbers, and in SmolLM2-135M's FFN 0.23% of them (0.29% with groups
    of 64) are exact halves. Half to even is what compressed-tensors' own quantizer does
    (`torch.round` in `round_to_quantized_type_args`), hence llm-compressor, GPTQ and
    OmniQuant: a matcli int8 parent has the codes those tools give for the same scale.
    (Slicing, S, is a different operator and rounds half up, as the paper's Appendix A asks.)
    """
    import torch

    return torch.round(x)


def symmetric_zero(bits: int) -> int:
    """The zero point of the symmetric scheme: the middle of the unsigned grid."""
    return 1 << (bits - 1)


def minmax_params(
    w: torch.Tensor,
    bits: int,
    symmetric: bool,
    group_size: int | None = None,
    scale_dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """MinMax scale and zero point of Q(w, c), shape [rows, groups] each.

    Asymmetric (paper Eq. 1): alpha = (max - min) / (2^c - 1), z = round(-min / alpha). The
    range is widened to include 0 so that an all-positive or constant group stays exact.
    Symmetric (MatGPTQ's choice): alpha = 2 max|w| / (2^c - 1), z = 2^(c-1), which keeps the
    sliced zero point z / 2^(c-r) an integer at every r.

    The scale is rounded up to `scale_dtype` (the dtype it will be stored in) before the zero
    point is computed, so codes, scale and zero stay consistent after saving.
    """
    import torch

    check_width(bits, what="bit-width")
    levels = (1 << bits) - 1
    g = _grouped(w.to(_compute_dtype(w.dtype)), group_size)
    if symmetric:
        scale = 2 * g.abs().amax(dim=-1) / levels
    else:
        lo = g.amin(dim=-1).clamp(max=0)
        hi = g.amax(dim=-1).clamp(min=0)
        scale = (hi - lo) / levels
    # An all-zero group has no range: any positive scale represents it exactly.
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    scale = _round_up_to(scale, scale_dtype or w.dtype)
    if symmetric:
        zero = torch.full(scale.shape, symmetric_zero(bits), dtype=torch.int32, device=scale.device)
    else:
        zero = round_to_grid(-lo / scale.to(lo.dtype)).clamp(0, levels).to(torch.int32)
    return scale, zero


def _round_up_to(scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Cast to the storage dtype, rounding up: a scale rounded down would shrink the grid
    below the weights' range, and the clamp would then cost up to a whole extra step."""
    import torch

    stored = scale.to(dtype)
    too_small = stored.to(scale.dtype) < scale
    if too_small.any():
        stored = torch.where(
            too_small, torch.nextafter(stored, torch.full_like(stored, float("inf"))), stored
        )
    return stored


def quantize_codes(
    w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int
) -> torch.Tensor:
    """Q(w, c) = clamp(round(w / alpha) + z, 0, 2^c - 1) as uint8 codes, shape of w.

    `scale` and `zero` have shape [rows, groups]; ties of w / alpha round half to even
    (`round_to_grid`: exact halves are common in bf16 checkpoints, 0.2-0.3% of the weights).
    """
    import torch

    check_width(bits, what="bit-width")
    rows, cols = w.shape
    group_size = cols // scale.shape[1]
    g = _grouped(w.to(_compute_dtype(w.dtype)), group_size)
    s = scale.to(g.dtype).unsqueeze(-1)
    q = round_to_grid(g / s) + zero.to(g.dtype).unsqueeze(-1)
    return q.clamp(0, (1 << bits) - 1).to(torch.uint8).reshape(rows, cols)


def slice_codes(
    q: torch.Tensor, parent_bits: int, bits: int, extra_precision: bool = False
) -> torch.Tensor:
    """S(q, c, r) as r-bit integer codes: clamp(round_half_up(q / 2^(c-r)), 0, 2^r - 1).

    Integer form (MatGPTQ's): (q >> k) + ((q >> (k-1)) & 1) adds the rounding bit instead of
    2^(k-1), so it cannot overflow uint8 (250 + 32 would wrap to 26). Ties round up, as the
    paper's Appendix A asks: q = 32, r = 2 gives 1, where round-half-even would give 0.
    With `extra_precision` the clamp is dropped and the code 2^r is possible (2^r + 1 levels).
    Returns uint8 codes.
    """
    import torch

    _check_slice(parent_bits, bits)
    if q.dtype != torch.uint8:
        raise TypeError(f"codes must be uint8, got {q.dtype}")
    return _sliced(q, parent_bits - bits, bits, extra_precision)


def slice_table(parent_bits: int, bits: int, extra_precision: bool = False) -> np.ndarray:
    """S(q, c, r) for every c-bit code q, as a uint8 lookup table: one gather slices a chunk."""
    _check_slice(parent_bits, bits)
    codes = np.arange(1 << parent_bits, dtype=np.uint8)
    return _sliced(codes, parent_bits - bits, bits, extra_precision)


def _check_slice(parent_bits: int, bits: int) -> None:
    check_width(parent_bits, what="parent width")
    check_width(bits, parent_bits)


def _sliced(q, k: int, bits: int, extra_precision: bool):
    """S on uint8 codes, a torch tensor or a numpy array alike (see slice_codes)."""
    if k == 0:
        return q.clone() if hasattr(q, "clone") else q.copy()
    rounded = (q >> k) + ((q >> (k - 1)) & 1)
    return rounded if extra_precision else rounded.clip(max=(1 << bits) - 1)


def codes_on_parent_grid(q_r: torch.Tensor, parent_bits: int, bits: int) -> torch.Tensor:
    """S's value on the c-bit grid: q_r * 2^(c-r), as int16 (extra precision can reach 2^c)."""
    import torch

    return q_r.to(torch.int16) << (parent_bits - bits)


def sliced_params(
    scale: torch.Tensor, zero: torch.Tensor, parent_bits: int, bits: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero point of the r-bit slice: alpha * 2^(c-r) and z / 2^(c-r).

    The scale multiplication is exact in floating point. The zero point is returned as
    float64 because it is fractional unless z is a multiple of 2^(c-r) (always true for the
    symmetric scheme).
    """
    import torch

    k = parent_bits - bits
    return scale * (1 << k), zero.to(torch.float64) / (1 << k)


def sliced_scale_bits(raw: np.ndarray, dtype: str, parent_bits: int, bits: int) -> np.ndarray:
    """sliced_params' scale alpha * 2^(c-r), on the raw bits of a float scale (unsigned
    integers of its element size; numpy has no bfloat16), without torch.

    Multiplying by a power of two only moves the exponent, so the product is exact in every
    float format and equals torch's `scale * 2^k` bit for bit (overflow gives inf in both).
    """
    factor = 1 << (parent_bits - bits)
    if dtype != "BF16" and dtype not in NUMPY_FLOATS:
        raise ValueError(f"a scale stored as {dtype} is not a float")
    with np.errstate(over="ignore"):  # an overflowing scale becomes inf, as in torch
        if dtype == "BF16":
            wide = (raw.astype(np.uint32) << 16).view(np.float32) * np.float32(factor)
            return (wide.view(np.uint32) >> 16).astype(np.uint16)
        float_type = NUMPY_FLOATS[dtype]
        return (raw.view(float_type) * float_type(factor)).view(raw.dtype)


def dequantize(codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
    """scale * (code - zero), in the scale's dtype, per [rows, groups] scale and zero.

    The subtraction is done exactly (in float64 when the zero point is fractional); the
    product is then rounded once, in the order compressed-tensors uses, so that the weights
    transformers materializes from a saved checkpoint equal this function's output bit for bit.
    """
    import torch

    rows, cols = codes.shape
    groups = scale.shape[1]
    diff_dtype = torch.float64 if zero.is_floating_point() else torch.int32
    diff = codes.to(diff_dtype).reshape(rows, groups, -1) - zero.to(diff_dtype).unsqueeze(-1)
    out = diff.to(scale.dtype) * scale.unsqueeze(-1)
    return out.reshape(rows, cols)


def to_signed(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Unsigned codes [0, 2^b - 1] -> the signed int8 range compressed-tensors stores."""
    import torch

    return (codes.to(torch.int16) - (1 << (bits - 1))).to(torch.int8)


def from_signed(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Signed int8 codes from compressed-tensors -> unsigned codes [0, 2^b - 1] as uint8."""
    import torch

    return (codes.to(torch.int16) + (1 << (bits - 1))).to(torch.uint8)


def weighted_code_table(
    parent_bits: int, widths: list[int], weights: list[float], extra_precision: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """The best c-bit code as a function of the continuous code u = w / scale + zero.

    MatGPTQ's multi-width rounding without its error feedback: each weight takes the code q
    minimising sum_r lambda_r * (u - S(q, r))^2 over the widths r (S on the c-bit grid). For a
    fixed q this is C_q - 2 u B_q plus a constant, a line in u, so the best code is read off
    the lower envelope of 2^c lines: returns (breakpoints, codes), the code for u between
    breakpoints[i - 1] and breakpoints[i] being codes[i].
    """
    on_grid = [
        slice_table(parent_bits, r, extra_precision).astype(np.float64) * (1 << (parent_bits - r))
        for r in widths
    ]
    table = np.stack(on_grid, 1)
    lam = np.asarray(weights, dtype=np.float64)
    slope = -2 * table @ lam  # non-increasing in q: S is monotone in q
    intercept = (table**2) @ lam
    hull: list[int] = []  # indices of lines on the lower envelope, slopes decreasing
    for i in range(len(slope)):
        if hull and slope[hull[-1]] == slope[i]:
            if intercept[i] >= intercept[hull[-1]]:
                continue
            hull.pop()
        while len(hull) >= 2 and _crossing(slope, intercept, hull[-2], hull[-1]) >= _crossing(
            slope, intercept, hull[-1], i
        ):
            hull.pop()
        hull.append(i)
    breaks = np.array([_crossing(slope, intercept, a, b) for a, b in zip(hull, hull[1:])])
    return breaks, np.array(hull, dtype=np.uint8)


def _crossing(slope: np.ndarray, intercept: np.ndarray, a: int, b: int) -> float:
    return (intercept[b] - intercept[a]) / (slope[a] - slope[b])


def weighted_codes(
    w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, table: tuple[np.ndarray, np.ndarray]
) -> torch.Tensor:
    """Codes minimising the lambda-weighted error of every slice (see weighted_code_table)."""
    import torch

    rows, cols = w.shape
    g = _grouped(w.to(_compute_dtype(w.dtype)), cols // scale.shape[1])
    u = (g / scale.to(g.dtype).unsqueeze(-1) + zero.to(g.dtype).unsqueeze(-1)).reshape(rows, cols)
    breaks, codes = table
    return torch.from_numpy(codes[np.searchsorted(breaks, u.numpy(), side="right")])
