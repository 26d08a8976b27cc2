"""Row transforms of MRL truncation: pure numpy functions, no I/O.

Order, as in sentence-transformers' `encode` and the MRL paper's retrieval code: optional
pre-normalization over the full vector (nomic-embed-text-v1.5 layer-normalizes first),
optional rotation (PCA), truncation to the first d values, L2 renormalization, then optional
quantization calibrated on the truncated vectors.
"""

from __future__ import annotations

import numpy as np

LAYER_NORM_EPS = 1e-5


def non_finite_rows(x: np.ndarray) -> np.ndarray:
    """Indices of rows holding NaN or inf."""
    return np.flatnonzero(~np.isfinite(x).all(axis=1))


def layer_norm(x: np.ndarray) -> np.ndarray:
    """torch.nn.functional.layer_norm over each row, without affine parameters."""
    x = x.astype(np.float64)
    mean = x.mean(axis=1, keepdims=True)
    var = x.var(axis=1, keepdims=True)
    return ((x - mean) / np.sqrt(var + LAYER_NORM_EPS)).astype(np.float32)


def truncate(x: np.ndarray, dim: int, renormalize: bool) -> np.ndarray:
    """The first `dim` values of each row, L2-renormalized unless told not to.

    A row whose kept part is all zeros stays zero (never NaN).
    """
    out = np.array(x[:, :dim], dtype=np.float32, copy=True)
    if renormalize:
        norms = np.sqrt(np.einsum("ij,ij->i", out.astype(np.float64), out.astype(np.float64)))
        nonzero = norms > 0
        out[nonzero] = (out[nonzero] / norms[nonzero, None]).astype(np.float32)
    return out


class Rotation:
    """y = (x - mean) @ rotation: PCA components as columns, largest variance first."""

    def __init__(self, rotation: np.ndarray, mean: np.ndarray):
        self.rotation = rotation.astype(np.float32)
        self.mean = mean.astype(np.float32)

    def apply(self, x: np.ndarray) -> np.ndarray:
        return ((x - self.mean) @ self.rotation).astype(np.float32)


class PcaFit:
    """Accumulates the mean and second moments over row chunks (float64), then diagonalizes.

    Uncentred (the default of `truncate-embeddings --pca`), the rotation diagonalizes E[x x^T]:
    an orthogonal change of basis, so full-dimension dot products are unchanged and only the
    order of the dimensions improves; on all-MiniLM-L6-v2 it also retrieved slightly better at
    every truncation than the centred variant (docs/results.md)."""

    def __init__(self, dim: int):
        self.count = 0
        self.sum = np.zeros(dim)
        self.outer = np.zeros((dim, dim))

    def add(self, x: np.ndarray) -> None:
        x = x.astype(np.float64)
        self.count += len(x)
        self.sum += x.sum(axis=0)
        self.outer += x.T @ x

    def finish(self, center: bool) -> tuple[Rotation, np.ndarray]:
        """The rotation and the variance along each of its columns."""
        mean = self.sum / max(1, self.count)
        cov = self.outer / max(1, self.count) - (np.outer(mean, mean) if center else 0)
        variance, vectors = np.linalg.eigh(cov)
        order = np.argsort(variance)[::-1]
        vectors = vectors[:, order]
        # Fix each component's sign (largest entry positive) so the result is deterministic.
        signs = np.sign(vectors[np.argmax(np.abs(vectors), axis=0), np.arange(vectors.shape[1])])
        vectors *= np.where(signs == 0, 1, signs)
        return Rotation(vectors, mean if center else np.zeros_like(mean)), variance[order]


def pca_rows_needed(kept: int, center: bool) -> int:
    """Rows that determine the leading `kept` components: n rows span at most n directions
    (n - 1 once centred), and any component beyond them is an arbitrary choice."""
    return kept + int(center)


class Int8Ranges:
    """Per-dimension [min, max] of the truncated vectors; codes saturate, never wrap."""

    def __init__(self, dim: int):
        self.low = np.full(dim, np.inf, dtype=np.float32)
        self.high = np.full(dim, -np.inf, dtype=np.float32)

    @classmethod
    def from_array(cls, ranges: np.ndarray) -> Int8Ranges:
        """Ranges saved by as_array() (row 0 min, row 1 max), e.g. the corpus's for its queries."""
        self = cls(ranges.shape[1])
        self.low, self.high = (np.asarray(r, dtype=np.float32) for r in ranges)
        return self

    def add(self, x: np.ndarray) -> None:
        if len(x):
            self.low = np.minimum(self.low, x.min(axis=0))
            self.high = np.maximum(self.high, x.max(axis=0))

    def quantize(self, x: np.ndarray) -> np.ndarray:
        """round((x - min) / step) - 128, clipped to [-128, 127]; step = (max - min) / 255."""
        step = (self.high - self.low) / 255
        step = np.where(step > 0, step, 1.0).astype(np.float32)
        codes = np.rint((x - self.low) / step) - 128
        return np.clip(codes, -128, 127).astype(np.int8)

    def as_array(self) -> np.ndarray:
        return np.stack([self.low, self.high]).astype(np.float32)


def binarize(x: np.ndarray) -> np.ndarray:
    """One bit per value (x > 0), packed along each row: [rows, dim / 8] uint8."""
    return np.packbits(x > 0, axis=-1)


def to_bfloat16_bits(x: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bit patterns (uint16), rounding to nearest even, as torch does."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    rounding = ((u >> 16) & 1) + np.uint32(0x7FFF)
    return ((u + rounding) >> 16).astype(np.uint16)
