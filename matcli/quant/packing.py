"""compressed-tensors `pack-quantized` int32 packing, without importing compressed-tensors.

The layout (compressed_tensors.compressors.pack_quantized.helpers.pack_to_int32): signed
codes in [-2^(b-1), 2^(b-1) - 1] are offset to [0, 2^b - 1] and written as one dense,
least-significant-bit-first bit stream per row (element i occupies bits i*b .. i*b + b - 1),
cut into little-endian int32 words: ceil(cols * b / 32) words per row, no padding between
elements. The model-free commands cannot afford compressed-tensors' import (it pulls in
transformers: ~5 s and ~120 MB), so this module reimplements the layout with vectorised
numpy; tests check it bit for bit against compressed-tensors' own pack and unpack.
"""

from __future__ import annotations

import sys

import numpy as np
import torch

if sys.byteorder != "little":  # pragma: no cover - every supported platform is little-endian
    raise ImportError("matcli's int32 packing assumes a little-endian machine")


def packed_columns(cols: int, bits: int) -> int:
    return -(-cols * bits // 32)


def pack_int32(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Signed int8 codes [rows, cols] -> packed int32 [rows, ceil(cols * bits / 32)]."""
    if codes.dtype != torch.int8 or codes.dim() != 2:
        raise TypeError(f"expected 2-D int8 codes, got {codes.dtype} with {codes.dim()} dims")
    u = (codes.numpy().astype(np.int16) + (1 << (bits - 1))).astype(np.uint8)
    return pack_unsigned(u, bits)


def unpack_int32(packed: torch.Tensor, bits: int, cols: int) -> torch.Tensor:
    """Packed int32 [rows, words] -> signed int8 codes [rows, cols]."""
    u = unpack_unsigned(packed, bits, cols)
    return torch.from_numpy((u.astype(np.int16) - (1 << (bits - 1))).astype(np.int8))


def pack_unsigned(u: np.ndarray, bits: int) -> torch.Tensor:
    """Offset codes code + 2^(b-1), as uint8 [rows, cols] -> packed int32 words."""
    rows, cols = u.shape
    words = packed_columns(cols, bits)
    if bits == 8:
        packed = _pad_columns(u, words * 4)
    elif 8 % bits == 0:
        per_byte = 8 // bits
        grouped = _pad_columns(u, words * 4 * per_byte).reshape(rows, -1, per_byte)
        packed = grouped[:, :, 0].copy()
        for j in range(1, per_byte):
            packed |= grouped[:, :, j] << (j * bits)
    else:
        bit_planes = (u[:, :, None] >> np.arange(bits, dtype=np.uint8)) & 1
        stream = _pad_columns(bit_planes.reshape(rows, cols * bits), words * 32)
        packed = np.packbits(stream, axis=1, bitorder="little")
    return torch.from_numpy(np.ascontiguousarray(packed).view("<i4").reshape(rows, words))


def unpack_unsigned(packed: torch.Tensor, bits: int, cols: int) -> np.ndarray:
    """Packed int32 [rows, words] -> offset codes (code + 2^(b-1)) as uint8 [rows, cols]."""
    if packed.dtype != torch.int32 or packed.dim() != 2:
        raise TypeError(f"expected 2-D int32 words, got {packed.dtype} with {packed.dim()} dims")
    rows, words = packed.shape
    if words != packed_columns(cols, bits):
        raise ValueError(f"{words} int32 words cannot hold {cols} {bits}-bit codes")
    raw = np.ascontiguousarray(packed.numpy()).view(np.uint8).reshape(rows, words * 4)
    if bits == 8:  # one code per byte: the bytes are the codes
        return raw[:, :cols]
    if 8 % bits == 0:
        per_byte = 8 // bits
        mask = np.uint8((1 << bits) - 1)
        u = np.empty((rows, words * 4, per_byte), dtype=np.uint8)
        for j in range(per_byte):
            u[:, :, j] = (raw >> (j * bits)) & mask
        return u.reshape(rows, -1)[:, :cols]
    stream = np.unpackbits(raw, axis=1, bitorder="little")[:, : cols * bits]
    planes = stream.reshape(rows, cols, bits)
    u = np.zeros((rows, cols), dtype=np.uint8)
    for j in range(bits):
        u |= planes[:, :, j] << j
    return u


def _pad_columns(a: np.ndarray, cols: int) -> np.ndarray:
    if a.shape[1] == cols:
        return a
    out = np.zeros((a.shape[0], cols), dtype=a.dtype)
    out[:, : a.shape[1]] = a
    return out
