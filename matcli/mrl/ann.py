"""An approximate index for the funnel's first stage (faiss): HNSW or IVF on the normalized
shortlist-dimension prefix, searched by inner product (= cosine on unit vectors).

This is where the MRL funnel pays off in wall time (MRL paper §4.3.1: HNSW on the
low-dimensional prefix, 14x): exact search passes over the whole corpus at every query, an
index visits a small part of it, and its cost grows with the dimension it is built on, so the
index is built on the short prefix and the later stages rerank a few hundred candidates exactly.
faiss is an optional dependency (`pip install 'matcli[ann]'`); see docs/architecture.md for why
faiss rather than hnswlib or usearch.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from matcli.errors import MatcliError

IVF_MIN_POINTS_PER_LIST = 39  # faiss's k-means warns below this many training points per list
IVF_TRAINING_POINTS_PER_LIST = 64  # a sample of nlist * 64 rows trains the coarse quantizer
IVF_TRAINING_SEED = 0


@dataclass(frozen=True)
class IndexSpec:
    """Which index, with its parameters (their defaults and limits: EvalRetrievalOptions)."""

    kind: str  # "hnsw" or "ivf"
    hnsw_m: int
    hnsw_ef_construction: int
    hnsw_ef_search: int
    ivf_nlist: int | None  # None: default_nlist(rows)
    ivf_nprobe: int

    @classmethod
    def from_options(cls, options) -> IndexSpec:
        """The spec of EvalRetrievalOptions' --index and its parameter fields."""
        return cls(
            options.index,
            options.hnsw_m,
            options.hnsw_ef_construction,
            options.hnsw_ef_search,
            options.ivf_nlist,
            options.ivf_nprobe,
        )

    def params(self, rows: int) -> dict[str, int]:
        """The parameters used on a corpus of `rows` vectors (IVF's defaults depend on it)."""
        if self.kind == "hnsw":
            return {
                "M": self.hnsw_m,
                "efConstruction": self.hnsw_ef_construction,
                "efSearch": self.hnsw_ef_search,
            }
        nlist = self.ivf_nlist or default_nlist(rows)
        if nlist > rows:
            raise MatcliError(
                f"--ivf-nlist {nlist} is more clusters than the corpus's {rows} documents; "
                f"choose at most {rows} (or leave the default)"
            )
        return {"nlist": nlist, "nprobe": min(self.ivf_nprobe, nlist)}


def default_nlist(rows: int) -> int:
    """4 sqrt(N) lists (faiss's guideline), but enough training points per list."""
    return max(1, min(round(4 * math.sqrt(rows)), rows // IVF_MIN_POINTS_PER_LIST))


def require_faiss():
    """faiss, or one line saying what to install."""
    try:
        import faiss
    except ImportError:
        raise MatcliError(
            "--index needs the faiss library: pip install 'matcli[ann]' (or pip install faiss-cpu)"
        ) from None
    return faiss


Shortlist = Callable[[np.ndarray, int], np.ndarray]


def build_shortlist(spec: IndexSpec, corpus: np.ndarray) -> tuple[Shortlist, dict]:
    """Index the (normalized, C-contiguous float32) corpus prefix. Returns the search
    (queries, k) -> row indices, best first, -1 where the index found fewer than k; and what
    the report says about the index (its kind, parameters and build seconds)."""
    faiss = require_faiss()
    rows, dim = corpus.shape
    params = spec.params(rows)
    start = time.perf_counter()
    if spec.kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, params["M"], faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = params["efConstruction"]
        index.hnsw.efSearch = params["efSearch"]  # faiss searches max(efSearch, k) candidates
    else:
        quantizer = faiss.IndexFlatIP(dim)
        index = faiss.IndexIVFFlat(quantizer, dim, params["nlist"], faiss.METRIC_INNER_PRODUCT)
        index.train(_training_sample(corpus, params["nlist"]))
        index.nprobe = params["nprobe"]
    index.add(corpus)
    built = {
        "index": spec.kind,
        "index_params": params,
        "build_seconds": time.perf_counter() - start,
    }

    def shortlist(queries: np.ndarray, k: int) -> np.ndarray:
        return index.search(np.ascontiguousarray(queries, dtype=np.float32), k)[1]

    return shortlist, built


def _training_sample(corpus: np.ndarray, nlist: int) -> np.ndarray:
    """At most nlist * IVF_TRAINING_POINTS_PER_LIST rows, drawn with a fixed seed."""
    size = min(len(corpus), nlist * IVF_TRAINING_POINTS_PER_LIST)
    if size == len(corpus):
        return corpus
    rows = np.random.default_rng(IVF_TRAINING_SEED).choice(len(corpus), size, replace=False)
    return corpus[np.sort(rows)]
