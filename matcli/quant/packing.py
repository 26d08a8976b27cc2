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
    rows, cols = codes.shape
    u = (codes.numpy().astype(np.int16) + (1 << (bits - 1))).astype(np.uint8)
    words = packed_columns(cols, bits)
    if 8 % bits == 0:
        per_byte = 8 // bits
        u = _pad_columns(u, words * 4 * per_byte)
        u = u.reshape(rows, -1, per_byte)
        packed = np.zeros(u.shape[:2], dtype=np.uint8)
        for j in range(per_byte):
            packed |= u[:, :, j] << (j * bits)
    else:
        bit_planes = (u[:, :, None] >> np.arange(bits, dtype=np.uint8)) & 1
        stream = _pad_columns(bit_planes.reshape(rows, cols * bits), words * 32)
        packed = np.packbits(stream, axis=1, bitorder="little")
    return torch.from_numpy(np.ascontiguousarray(packed).view("<i4").reshape(rows, words))


def unpack_int32(packed: torch.Tensor, bits: int, cols: int) -> torch.Tensor:
    """Packed int32 [rows, words] -> signed int8 codes [rows, cols]."""
    if packed.dtype != torch.int32 or packed.dim() != 2:
        raise TypeError(f"expected 2-D int32 words, got {packed.dtype} with {packed.dim()} dims")
    rows, words = packed.shape
    if words != packed_columns(cols, bits):
        raise ValueError(f"{words} int32 words cannot hold {cols} {bits}-bit codes")
    raw = np.ascontiguousarray(packed.numpy()).view(np.uint8).reshape(rows, words * 4)
    if 8 % bits == 0:
        per_byte = 8 // bits
        mask = np.uint8((1 << bits) - 1)
        u = np.empty((rows, words * 4, per_byte), dtype=np.uint8)
        for j in range(per_byte):
            u[:, :, j] = (raw >> (j * bits)) & mask
        u = u.reshape(rows, -1)[:, :cols]
    else:
        stream = np.unpackbits(raw, axis=1, bitorder="little")[:, : cols * bits]
        planes = stream.reshape(rows, cols, bits)
        u = np.zeros((rows, cols), dtype=np.uint8)
        for j in range(bits):
            u |= planes[:, :, j] << j
    signed = u.astype(np.int16) - (1 << (bits - 1))
    return torch.from_numpy(signed.astype(np.int8))


def _pad_columns(a: np.ndarray, cols: int) -> np.ndarray:
    if a.shape[1] == cols:
        return a
    out = np.zeros((a.shape[0], cols), dtype=a.dtype)
    out[:, : a.shape[1]] = a
    return out
