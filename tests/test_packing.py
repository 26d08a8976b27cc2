"""matcli's int32 packing is compressed-tensors' pack-quantized layout, bit for bit."""

from __future__ import annotations

import pytest
import torch
from compressed_tensors.compressors.pack_quantized.helpers import pack_to_int32, unpack_from_int32
from hypothesis import given, settings
from hypothesis import strategies as st

from matcli.quant.packing import pack_int32, packed_columns, unpack_int32


@pytest.mark.parametrize("bits", range(1, 9))
@pytest.mark.parametrize("cols", [1, 3, 31, 32, 33, 100, 256])
def test_pack_matches_compressed_tensors(bits, cols):
    torch.manual_seed(bits * 1000 + cols)
    codes = torch.randint(-(2 ** (bits - 1)), 2 ** (bits - 1), (5, cols), dtype=torch.int8)
    ours = pack_int32(codes, bits)
    theirs = pack_to_int32(codes, bits)
    assert ours.shape == (5, packed_columns(cols, bits))
    assert torch.equal(ours, theirs)
    assert torch.equal(unpack_int32(theirs, bits, cols), codes)
    assert torch.equal(unpack_from_int32(ours, bits, torch.Size([5, cols])), codes)


@settings(max_examples=100, deadline=None)
@given(
    bits=st.integers(min_value=1, max_value=8),
    rows=st.integers(min_value=1, max_value=6),
    cols=st.integers(min_value=1, max_value=130),
    seed=st.integers(min_value=0, max_value=10**6),
)
def test_round_trip_any_shape(bits, rows, cols, seed):
    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(
        -(2 ** (bits - 1)), 2 ** (bits - 1), (rows, cols), dtype=torch.int8, generator=g
    )
    assert torch.equal(unpack_int32(pack_int32(codes, bits), bits, cols), codes)


def test_zero_point_layout_is_packed_along_dim0():
    from matcli.quant.ct_format import pack_zero_point

    zero = torch.randint(0, 16, (10, 3), dtype=torch.int32)
    ours = pack_zero_point(zero, 4)
    theirs = pack_to_int32((zero - 8).to(torch.int8), 4, packed_dim=0)
    assert torch.equal(ours, theirs)


def test_pack_refuses_wrong_dtype():
    with pytest.raises(TypeError):
        pack_int32(torch.zeros(2, 2, dtype=torch.int32), 4)
    with pytest.raises(ValueError):
        unpack_int32(torch.zeros(2, 3, dtype=torch.int32), 4, 8)
