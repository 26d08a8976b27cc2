"""compressed-tensors `pack-quantized` int32 packing, without importing compressed-tensors.

The layout (compressed_tensors.compressors.pack_quantized.helpers.pack_to_int32): signed
codes in [-2^(b-1), 2^(b-1) - 1] are offset to [0, 2^b - 1] and written as one dense,
least-significant-bit-first bit stream per row (element i occupies bits i*b .. i*b + b - 1),
cut into little-endian int32 words: ceil(cols * b / 32) words per row, no padding between
elements. This is compressed-tensors' layout since 0.18.0; 0.17 (the version vLLM 0.34 pins)
put 32 // b codes in each word, which differs for 3, 5, 6 and 7 bits (padded_packed_columns;
docs/formats.md says who reads which). The model-free commands cannot afford
compressed-tensors' import (it pulls in transformers: ~5 s and ~120 MB), so this module
reimplements the layout with vectorised numpy; tests check it bit for bit against
compressed-tensors' own pack and unpack. `StreamRemap` maps packed codes of one width to
packed codes of another without unpacking them (what `slice` does to every quantized Linear).
Only the tensor wrappers (pack_int32, unpack_int32) use torch.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # torch is imported by the tensor wrappers only: slicing packs without it
    import torch

if sys.byteorder != "little":  # pragma: no cover - every supported platform is little-endian
    raise ImportError("matcli's int32 packing assumes a little-endian machine")


def packed_columns(cols: int, bits: int) -> int:
    return -(-cols * bits // 32)


def padded_packed_columns(cols: int, bits: int) -> int:
    """Words per row in compressed-tensors 0.17's layout: 32 // bits codes per word, the rest
    of each word padding (10 3-bit codes and 2 unused bits). It equals the dense layout for
    1, 2, 4 and 8 bits, the widths that divide 32."""
    return -(-cols // (32 // bits))


def pack_int32(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Signed int8 codes [rows, cols] -> packed int32 [rows, ceil(cols * bits / 32)]."""
    import torch

    if codes.dtype != torch.int8 or codes.dim() != 2:
        raise TypeError(f"expected 2-D int8 codes, got {codes.dtype} with {codes.dim()} dims")
    u = (codes.numpy().astype(np.int16) + (1 << (bits - 1))).astype(np.uint8)
    return torch.from_numpy(pack_unsigned(u, bits))


def unpack_int32(packed: torch.Tensor, bits: int, cols: int) -> torch.Tensor:
    """Packed int32 [rows, words] -> signed int8 codes [rows, cols]."""
    import torch

    if packed.dtype != torch.int32 or packed.dim() != 2:
        raise TypeError(f"expected 2-D int32 words, got {packed.dtype} with {packed.dim()} dims")
    u = unpack_unsigned(packed.numpy(), bits, cols)
    return torch.from_numpy((u.astype(np.int16) - (1 << (bits - 1))).astype(np.int8))


def pack_unsigned(u: np.ndarray, bits: int) -> np.ndarray:
    """Offset codes code + 2^(b-1), as uint8 [rows, cols] -> packed int32 words [rows, words]."""
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
    return np.ascontiguousarray(packed).view("<i4").reshape(rows, words)


def unpack_unsigned(packed: np.ndarray, bits: int, cols: int) -> np.ndarray:
    """Packed words [rows, words] (int32, or their bytes [rows, 4 * words]) -> offset codes
    (code + 2^(b-1)) as uint8 [rows, cols]."""
    raw = np.ascontiguousarray(packed).view(np.uint8)
    rows, words = raw.shape[0], raw.shape[1] // 4
    if words != packed_columns(cols, bits):
        raise ValueError(f"{words} int32 words cannot hold {cols} {bits}-bit codes")
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


def rows_are_streams(cols: int, in_bits: int, out_bits: int) -> bool:
    """Whether rows of `cols` codes fill whole int32 words at both widths: then a chunk of
    rows is one continuous code stream, with no padding between rows, in and out."""
    return cols * in_bits % 32 == 0 and cols * out_bits % 32 == 0


# Input code-stream units remapped per step: 128 KiB of input, so that every stage's
# intermediate stays in the CPU cache.
_BLOCK_UNITS = 1 << 16


class StreamRemap:
    """Maps a stream of packed c-bit codes to the stream of packed b-bit codes `code_map[q]`,
    code by code, without unpacking: c, b in {1, 2, 4, 8}, b <= c.

    The input is read two bytes at a time (16 / c codes). One 65536-entry table maps such a
    unit straight to its 16 b / c output bits; while that is less than a byte, further tables
    merge two neighbouring results into one. Each step is one numpy gather over a block small
    enough to stay in the CPU cache, so the lookup and the packing take one pass together.
    """

    def __init__(self, code_map: np.ndarray, in_bits: int, out_bits: int):
        if not self.supports(in_bits, out_bits):
            raise ValueError(f"no stream remap from {in_bits}-bit to {out_bits}-bit codes")
        self.in_bits, self.out_bits = in_bits, out_bits
        per_unit = _codes_of_units(in_bits)
        width = per_unit.shape[0] * out_bits
        packed = sum(
            code_map[codes].astype(np.uint32) << (j * out_bits) for j, codes in enumerate(per_unit)
        )
        self.first = packed.astype(np.uint16 if width > 8 else np.uint8)
        self.merges = []
        units = np.arange(1 << 16, dtype=np.uint32)
        while width < 8:
            mask = (1 << width) - 1
            self.merges.append(((units & mask) | ((units >> 8) & mask) << width).astype(np.uint8))
            width *= 2
        self._scratch = (np.empty(_BLOCK_UNITS, np.uint8), np.empty(_BLOCK_UNITS // 2, np.uint8))
        self._counts: np.ndarray | None = None
        self.counted = 0

    @staticmethod
    def supports(in_bits: int, out_bits: int) -> bool:
        return in_bits in (1, 2, 4, 8) and out_bits in (1, 2, 4, 8) and out_bits <= in_bits

    def count_codes(self, flagged: np.ndarray) -> None:
        """From now on, also add the number of input codes q with flagged[q] to `counted`."""
        per_unit = _codes_of_units(self.in_bits)
        self._counts = np.asarray(flagged, dtype=np.uint8)[per_unit].sum(0, dtype=np.uint8)

    def out_bytes(self, in_bytes: int) -> int:
        return in_bytes * self.out_bits // self.in_bits

    def __call__(self, stream: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """The remapped stream of a 1-D uint8 stream (an even number of bytes whose output is
        whole bytes), into `out` (uint8) when given."""
        units = stream.view(np.uint16)
        if out is None:
            out = np.empty(self.out_bytes(len(stream)), dtype=np.uint8)
        for start in range(0, len(units), _BLOCK_UNITS):
            block = units[start : start + _BLOCK_UNITS]
            first = self.out_bytes(2 * start)
            self._block(block, out[first : first + self.out_bytes(2 * len(block))])
        return out

    def _block(self, block: np.ndarray, out: np.ndarray) -> None:
        if self._counts is not None:
            counts = np.take(self._counts, block, out=self._scratch[0][: len(block)])
            self.counted += int(counts.sum())
        if not self.merges:
            np.take(self.first, block, out=out.view(self.first.dtype))
            return
        current = np.take(self.first, block, out=self._scratch[0][: len(block)])
        for i, table in enumerate(self.merges):
            pairs = current.view(np.uint16)
            last = i == len(self.merges) - 1
            target = out if last else self._scratch[(i + 1) % 2][: len(pairs)]
            current = np.take(table, pairs, out=target)


def _codes_of_units(bits: int) -> np.ndarray:
    """[16 / bits, 65536]: the codes of every 16-bit unit of a bits-wide code stream, in
    stream order (least significant first)."""
    units = np.arange(1 << 16, dtype=np.uint32)
    shifts = np.arange(0, 16, bits, dtype=np.uint32)[:, None]
    return (units >> shifts) & ((1 << bits) - 1)
