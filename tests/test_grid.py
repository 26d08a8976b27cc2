"""Grid math against the MatQuant paper's own examples and a float64 reference."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from matcli.errors import MatcliError
from matcli.quant import grid


def s_reference(q: int, c: int, r: int, clamp: bool = True) -> int:
    """Paper Eq. 6 with exact rationals: round half up of q / 2^(c-r), then clamp; r-bit code."""
    x = Fraction(q, 2 ** (c - r))
    rounded = math.floor(x + Fraction(1, 2))
    return min(rounded, 2**r - 1) if clamp else rounded


def codes(values, dtype=torch.uint8):
    return torch.tensor(values, dtype=dtype)


# --- the paper's examples (MatQuant §5.5, §7, App. A) ------------------------------------


@pytest.mark.parametrize(("q", "expected_on_grid"), [(234, 192), (240, 192), (53, 64), (32, 64)])
def test_paper_examples_int2_from_int8(q, expected_on_grid):
    sliced = grid.slice_codes(codes([q]), 8, 2)
    assert grid.codes_on_parent_grid(sliced, 8, 2).item() == expected_on_grid


def test_integer_codes_from_qntz_tests():
    assert grid.slice_codes(codes([200]), 8, 2).item() == 3
    assert grid.slice_codes(codes([95]), 8, 4).item() == 6


def test_ties_round_half_up_not_half_even():
    # 32 / 64 = 0.5: half-even (torch.round, Python round) would give 0.
    assert torch.round(torch.tensor(0.5)).item() == 0
    assert grid.slice_codes(codes([32]), 8, 2).item() == 1
    assert grid.slice_codes(codes([96]), 8, 2).item() == 2  # 1.5 -> 2


def test_int2_buckets_are_0_64_128_192():
    all_codes = codes(list(range(256)))
    on_grid = grid.codes_on_parent_grid(grid.slice_codes(all_codes, 8, 2), 8, 2)
    assert sorted(set(on_grid.tolist())) == [0, 64, 128, 192]


def test_no_uint8_overflow_near_the_top():
    # (250 + 32) >> 6 computed in uint8 wraps to 26 >> 6 = 0; the rounding-bit form cannot.
    assert grid.slice_codes(codes([250, 255]), 8, 2).tolist() == [3, 3]
    assert grid.slice_codes(codes([255]), 8, 7).item() == 127


def test_extra_precision_keeps_the_top_bucket():
    sliced = grid.slice_codes(codes([234, 240, 255]), 8, 2, extra_precision=True)
    assert sliced.tolist() == [4, 4, 4]
    assert grid.codes_on_parent_grid(sliced, 8, 2).tolist() == [256, 256, 256]
    all_codes = codes(list(range(256)))
    levels = set(grid.slice_codes(all_codes, 8, 2, extra_precision=True).tolist())
    assert levels == {0, 1, 2, 3, 4}  # 2^r + 1 levels


def test_slicing_at_the_parent_width_is_the_identity():
    all_codes = codes(list(range(256)))
    assert torch.equal(grid.slice_codes(all_codes, 8, 8), all_codes)


def test_slice_refuses_wider_than_parent_and_out_of_range():
    with pytest.raises(MatcliError, match="width 8: cannot slice int8 out of an int4 parent"):
        grid.slice_codes(codes([1]), 4, 8)
    with pytest.raises(MatcliError, match="width 0 is out of range"):
        grid.slice_codes(codes([1]), 8, 0)
    with pytest.raises(MatcliError, match="parent width 9 is out of range"):
        grid.slice_codes(codes([1]), 9, 2)
    with pytest.raises(MatcliError, match="width 3: cannot slice int3 out of an int2 parent"):
        grid.slice_table(2, 3)


@settings(max_examples=300, deadline=None)
@given(
    st.integers(min_value=1, max_value=8).flatmap(
        lambda c: st.tuples(
            st.just(c),
            st.integers(min_value=1, max_value=c),
            st.lists(st.integers(min_value=0, max_value=2**c - 1), min_size=1, max_size=64),
            st.booleans(),
        )
    )
)
def test_slice_matches_exact_reference(case):
    c, r, values, extra = case
    got = grid.slice_codes(codes(values), c, r, extra_precision=extra).tolist()
    assert got == [s_reference(q, c, r, clamp=not extra) for q in values]


# --- quantization Q(w, c) -----------------------------------------------------------------


def q_reference(w: np.ndarray, bits: int, symmetric: bool, group_size: int | None):
    """Row by row, group by group, in float64: the textbook MinMax formulas."""
    rows, cols = w.shape
    g = group_size or cols
    levels = 2**bits - 1
    out = np.zeros((rows, cols), dtype=np.int64)
    scales = np.zeros((rows, cols // g))
    zeros = np.zeros((rows, cols // g), dtype=np.int64)
    for i in range(rows):
        for j in range(cols // g):
            block = w[i, j * g : (j + 1) * g]
            if symmetric:
                scale = 2 * np.abs(block).max() / levels
                zero = 2 ** (bits - 1)
            else:
                lo, hi = min(block.min(), 0.0), max(block.max(), 0.0)
                scale = (hi - lo) / levels
            scale = scale if scale > 0 else 1.0
            if not symmetric:
                zero = int(np.clip(np.round(-lo / scale), 0, levels))
            out[i, j * g : (j + 1) * g] = np.clip(np.round(block / scale) + zero, 0, levels)
            scales[i, j], zeros[i, j] = scale, zero
    return out, scales, zeros


@settings(max_examples=150, deadline=None)
@given(
    bits=st.integers(min_value=2, max_value=8),
    symmetric=st.booleans(),
    grouped=st.booleans(),
    seed=st.integers(min_value=0, max_value=2**16),
    scale=st.floats(min_value=1e-3, max_value=10.0),
)
def test_quantize_matches_float64_reference(bits, symmetric, grouped, seed, scale):
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(6, 16)) * scale
    if seed % 5 == 0:
        w[1] = 0.0  # an all-zero row must stay exact
    if seed % 7 == 0:
        w[2] = np.abs(w[2])  # an all-positive row
    group_size = 4 if grouped else None
    ref_codes, ref_scales, ref_zeros = q_reference(w, bits, symmetric, group_size)
    wt = torch.from_numpy(w)
    s, z = grid.minmax_params(wt, bits, symmetric, group_size)
    q = grid.quantize_codes(wt, s, z, bits)
    np.testing.assert_allclose(s.numpy(), ref_scales, rtol=1e-12)
    assert np.array_equal(z.numpy(), ref_zeros)
    assert np.array_equal(q.numpy().astype(np.int64), ref_codes)
    # Every weight lies inside the grid's range, so the error is at most half a step.
    deq = grid.dequantize(q, s, z).numpy()
    step = np.repeat(ref_scales, 16 // ref_scales.shape[1], axis=1)
    assert np.all(np.abs(deq - w) <= step * (0.5 + 1e-9))


def test_all_zero_group_is_exact_and_finite():
    w = torch.zeros(2, 8)
    for symmetric in (True, False):
        s, z = grid.minmax_params(w, 8, symmetric)
        q = grid.quantize_codes(w, s, z, 8)
        assert torch.isfinite(s).all()
        assert torch.equal(grid.dequantize(q, s, z), w)


def test_float32_quantization_agrees_with_float64_up_to_ties():
    torch.manual_seed(0)
    w = torch.randn(64, 256)
    s32, z32 = grid.minmax_params(w, 8, True)
    q32 = grid.quantize_codes(w, s32, z32, 8)
    q64 = grid.quantize_codes(w.double(), s32.double(), z32, 8)
    assert (q32.int() - q64.int()).abs().max() <= 1
    assert (q32 != q64).float().mean() < 1e-3


def test_scale_is_rounded_to_its_storage_dtype_before_codes():
    torch.manual_seed(0)
    w = torch.randn(8, 32).to(torch.bfloat16)
    s, z = grid.minmax_params(w, 8, False)
    assert s.dtype == torch.bfloat16
    q = grid.quantize_codes(w, s, z, 8)
    # Codes were computed with the stored (rounded) scale, so in exact arithmetic every
    # weight is within half a stored step of its dequantized value.
    exact = (q.double() - z.double()) * s.double()
    assert torch.all((exact - w.double()).abs() <= s.double() * 0.5 + 1e-12)


# --- slicing as a quantizer ------------------------------------------------------------------


@pytest.mark.parametrize("r", [8, 6, 4, 3, 2])
def test_symmetric_slice_equals_compressed_tensors_form(r):
    """alpha * ((q_r << k) - 2^(c-1)) == (alpha * 2^k) * (q_r - 2^(r-1)), bit for bit."""
    torch.manual_seed(r)
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        w = torch.randn(16, 64).to(dtype)
        s, z = grid.minmax_params(w, 8, True, 16)
        q = grid.quantize_codes(w, s, z, 8)
        q_r = grid.slice_codes(q, 8, r)
        parent_form = grid.dequantize(grid.codes_on_parent_grid(q_r, 8, r), s, z)
        s_r, z_r = grid.sliced_params(s, z, 8, r)
        assert torch.all(z_r == 2 ** (r - 1))
        ct_form = grid.to_signed(q_r, r).to(s_r.dtype).reshape(16, 4, 16) * s_r.unsqueeze(-1)
        assert torch.equal(parent_form, ct_form.reshape(16, 64))


def test_asymmetric_sliced_zero_point_is_fractional():
    s = torch.ones(1, 1)
    z = torch.tensor([[77]], dtype=torch.int32)
    _, z_r = grid.sliced_params(s, z, 8, 2)
    assert z_r.item() == pytest.approx(77 / 64)


def test_signed_round_trip():
    for bits in range(1, 9):
        u = torch.arange(0, 2**bits, dtype=torch.int32).to(torch.uint8)
        signed = grid.to_signed(u, bits)
        assert (
            signed.min().item() == -(2 ** (bits - 1)) and signed.max().item() == 2 ** (bits - 1) - 1
        )
        assert torch.equal(grid.from_signed(signed, bits), u)


def test_group_size_must_divide_columns():
    with pytest.raises(ValueError, match="does not divide"):
        grid.minmax_params(torch.randn(2, 10), 8, True, 4)


@pytest.mark.parametrize(
    ("code", "dtype", "unsigned"),
    [("BF16", torch.bfloat16, torch.uint16), ("F16", torch.float16, torch.uint16)]
    + [("F32", torch.float32, torch.uint32)],
)
def test_sliced_scale_bits_equal_torch(code, dtype, unsigned):
    """The scale of a slice, computed on raw bits without torch, is torch's scale * 2^(c-r)
    bit for bit: normal, subnormal, zero, negative and overflowing scales."""
    finfo = torch.finfo(dtype)
    special = [0.0, -0.0, finfo.tiny, finfo.tiny / 8, finfo.max, -finfo.max / 3, 1e-3, 7.0]
    scale = torch.cat([torch.tensor(special), torch.randn(500) * 0.02]).to(dtype).reshape(-1, 4)
    raw = scale.view(unsigned).numpy()
    for r in range(1, 9):
        ours = grid.sliced_scale_bits(raw, code, 8, r)
        theirs = grid.sliced_params(scale, torch.zeros_like(scale, dtype=torch.int32), 8, r)[0]
        assert np.array_equal(ours, theirs.view(unsigned).numpy())


@pytest.mark.parametrize("parent_bits", [8, 4, 2])
@pytest.mark.parametrize("extra_precision", [False, True])
def test_stream_remap_slices_packed_words_like_unpack_slice_pack(parent_bits, extra_precision):
    """Slicing packed words as a code stream gives the words of unpack, slice, pack; the
    extra-precision bucket is counted."""
    from matcli.quant.packing import StreamRemap, pack_unsigned, rows_are_streams

    rng = np.random.default_rng(parent_bits)
    q = rng.integers(0, 1 << parent_bits, size=(300, 1024), dtype=np.uint8)
    for bits in range(1, parent_bits + (0 if extra_precision else 1)):
        storage = bits + 1 if extra_precision else bits
        if not StreamRemap.supports(parent_bits, storage):
            continue
        assert rows_are_streams(q.shape[1], parent_bits, storage)
        table = grid.slice_table(parent_bits, bits, extra_precision)
        stored = table + np.uint8((1 << (storage - 1)) - (1 << (bits - 1)))
        remap = StreamRemap(stored, parent_bits, storage)
        remap.count_codes(table == (1 << bits))
        words = pack_unsigned(q, parent_bits)
        ours = remap(words.reshape(-1).view(np.uint8))
        assert np.array_equal(ours, pack_unsigned(stored[q], storage).reshape(-1).view(np.uint8))
        assert remap.counted == np.count_nonzero(table[q] == (1 << bits))


# --- the tie rule of Q(w, c) ---------------------------------------------------------------------


def _half_to_even_codes(w: torch.Tensor, scale: float, zero: int, bits: int) -> list[int]:
    """The float64/rational reference: Python's round() on exact fractions rounds half to even."""
    from fractions import Fraction

    top = (1 << bits) - 1
    return [
        min(top, max(0, round(Fraction(x) / Fraction(scale)) + zero))
        for x in w.double().flatten().tolist()
    ]


@pytest.mark.parametrize(("dtype", "symmetric"), [(torch.bfloat16, True), (torch.float32, False)])
def test_ties_round_half_to_even_in_the_grid_and_in_training(dtype, symmetric):
    """Exact halves of w / alpha (common in bf16 checkpoints) give the same codes in
    `quantize_codes`, in training's fake quantization and in its export, bit for bit equal to a
    rational reference; half of them differ from rounding half away from zero."""
    from matcli.quant.ct_format import WeightScheme
    from matcli.train.fakequant import FakeQuantLinear, fake_codes

    s = 2.0**-6
    if symmetric:  # max |w| = 127.5 s: alpha = 2 max / 255 = s exactly, z = 128
        steps = torch.cat([torch.arange(-128, 127) + 0.5, torch.tensor([127.5])])
    else:  # min -2.5 s, max 252.5 s: alpha = s, z = round(2.5) = 2 (a tie itself)
        steps = torch.cat([torch.arange(-3, 252) + 0.5, torch.tensor([252.5])])
    w = (steps * s).to(dtype).repeat(3, 1)
    scale, zero = grid.minmax_params(w, 8, symmetric)
    assert torch.all(scale.double() == s)
    assert torch.all(zero == (128 if symmetric else 2))
    codes = grid.quantize_codes(w, scale, zero, 8)
    expected = _half_to_even_codes(w, s, int(zero[0, 0]), 8)
    assert codes.flatten().tolist() == expected
    away = torch.sign(steps) * torch.floor(steps.abs() + 0.5) + zero[0, 0]
    assert (codes[0].double() != away.clamp(0, 255).double()).float().mean() >= 0.45

    linear = torch.nn.Linear(w.shape[1], 3, bias=False)
    linear.weight.data = w.float()
    fq = FakeQuantLinear(linear, WeightScheme(8, symmetric, None), dtype)
    expected_weight = (codes.double() - zero.double()) * s
    assert torch.equal(fq.quantized_weight(8).double(), expected_weight)
    exported, exported_scale, exported_zero = fq.export()
    assert torch.equal(exported, codes) and torch.equal(exported_zero, zero)
    q = fake_codes(w.float(), scale.float(), zero.float(), 8).reshape(codes.shape)
    assert torch.equal(q.to(torch.uint8), codes)
