"""ggml's block types for an r-bit slice: which slices map exactly, and the block bytes.

ggml's Q8_0 block is one fp16 scale d and 32 int8 values (w = d * q); Q4_0 is one fp16 scale
and 32 4-bit codes n (w = d * (n - 8)), packed so that byte j holds element j in its low
nibble and element j + 16 in its high one. A symmetric slice with groups of 32 is exactly
that: the slice's weight is alpha 2^(c-r) (q_r - 2^(r-1)), so d is the sliced scale (when
fp16 holds it exactly) and the code is q_r - 2^(r-1) (Q8_0) or q_r itself (Q4_0).
Every other layout has no exact ggml type: it is refused, or re-quantized on request
with gguf-py's own quantizer (`gguf.quants`), and the added error is measured.
"""

from __future__ import annotations

import numpy as np

from matcli.checkpoint.safetensors_file import NUMPY_FLOATS

# ggml's block size for Q8_0 and Q4_0: weights per fp16 scale.
BLOCK = 32
# The exact ggml type of each slice width (by ggml's type name in gguf-py).
EXACT_TYPES = {8: "Q8_0", 4: "Q4_0"}


def exact_type(bits: int, symmetric: bool, group_size: int | None, extra: bool) -> str | None:
    """The ggml type that holds an r-bit slice exactly, or None when there is none."""
    if not symmetric or group_size != BLOCK or extra:
        return None
    return EXACT_TYPES.get(bits)


def requantized_type(bits: int) -> str:
    """The ggml type a slice without an exact one is re-quantized to (--requantize): the
    narrowest of Q4_0 and Q8_0 that has at least its levels."""
    return "Q4_0" if bits <= 4 else "Q8_0"


def scale_as_float32(raw: np.ndarray, dtype: str) -> np.ndarray:
    """A float scale's raw bits (unsigned integers of its element size) as float32 values:
    exact for BF16, F16 and F32 (F64 is narrowed, and then checked like any scale)."""
    if dtype == "BF16":
        return (raw.astype(np.uint32) << 16).view(np.float32)
    return raw.view(NUMPY_FLOATS[dtype]).astype(np.float32)


def fp16_scales(scale: np.ndarray) -> tuple[np.ndarray, int]:
    """The fp16 scales ggml stores, and how many of the given scales fp16 does not hold
    exactly (outside its range, or too fine below its normal range)."""
    with np.errstate(over="ignore"):
        half = scale.astype(np.float16)
    inexact = int(np.count_nonzero(half.astype(np.float32) != scale))
    return half, inexact


def q8_0_blocks(signed: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Q8_0 bytes [rows, blocks * 34] of int8 values [rows, cols] and fp16 scales [rows, blocks]."""
    rows, cols = signed.shape
    out = np.empty((rows, cols // BLOCK, 2 + BLOCK), dtype=np.uint8)
    out[..., :2] = scale.astype(np.float16).view(np.uint8).reshape(rows, -1, 2)
    out[..., 2:] = signed.astype(np.int8).view(np.uint8).reshape(rows, -1, BLOCK)
    return out.reshape(rows, -1)


def q4_0_blocks(codes: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Q4_0 bytes [rows, blocks * 18] of 4-bit codes [rows, cols] (n in 0..15, w = d (n - 8))
    and fp16 scales [rows, blocks]."""
    rows, cols = codes.shape
    nibbles = codes.astype(np.uint8).reshape(rows, -1, BLOCK)
    out = np.empty((rows, cols // BLOCK, 2 + BLOCK // 2), dtype=np.uint8)
    out[..., :2] = scale.astype(np.float16).view(np.uint8).reshape(rows, -1, 2)
    out[..., 2:] = nibbles[..., : BLOCK // 2] | (nibbles[..., BLOCK // 2 :] << 4)
    return out.reshape(rows, -1)


def exact_blocks(type_name: str, sliced: np.ndarray, bits: int, scale: np.ndarray) -> np.ndarray:
    """The block bytes of unsigned r-bit slice codes with their fp16 sliced scales."""
    if type_name == "Q8_0":
        return q8_0_blocks(sliced.astype(np.int16) - (1 << (bits - 1)), scale)
    return q4_0_blocks(sliced, scale)


def row_bytes(type_name: str, columns: int) -> int:
    """Bytes of one row of `columns` weights in a ggml type."""
    import gguf

    block, size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[type_name]]
    return columns // block * size


def requantize(dense: np.ndarray, type_name: str) -> tuple[np.ndarray, float, float]:
    """gguf-py's quantization of float32 rows: (block bytes, squared error, squared norm)."""
    import gguf

    qtype = gguf.GGMLQuantizationType[type_name]
    blocks = gguf.quants.quantize(dense, qtype)
    back = gguf.quants.dequantize(blocks, qtype)
    error = float(np.square(back.astype(np.float64) - dense).sum())
    return blocks, error, float(np.square(dense.astype(np.float64)).sum())
