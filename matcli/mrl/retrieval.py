"""Retrieval quality and cost of truncated embeddings, and the MRL funnel.

Similarity is cosine: every vector (and every prefix) is L2-normalized before the dot
product. For each dimension d the report gives recall@k against the exact full-dimension
top-k (no labels needed) and, with relevance labels, nDCG@10, MRR@10 and recall@k. The
funnel (MRL paper §4.3.1) shortlists K_1 candidates at d_1 over the whole corpus, then
reranks the survivors at d_2, ... (`16:200,64:50,384:10`), at N*d_1 + sum K_{i-1}*d_i
multiply-adds per query instead of N*D. With an approximate index (`--index hnsw|ivf`,
matcli/mrl/ann.py) the first stage searches an index on the d_1 prefix instead of the whole
corpus, and the later stages rerank exactly as before.

Timing is the same for the full-dimension baseline and every funnel: the normalized prefixes
of corpus and queries at every dimension a search reads are built once, untimed (they are the
index), and each search runs once untimed (torch's first call, allocations) and then
TIMING_REPEATS times; the median is reported.
"""

from __future__ import annotations

import csv
import math
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from matcli.errors import MatcliError
from matcli.inputs import read_json_object, read_utf8
from matcli.mrl.sources import (
    EmbeddingSource,
    ParquetSource,
    SafetensorsSource,
    bad_rows_message,
    open_source,
    rows_per_chunk,
)

SCORE_BLOCK_ELEMENTS = 1 << 24  # query x corpus scores held at once (64 MB of float32)
RERANK_BLOCK_ELEMENTS = 1 << 20  # candidate floats gathered at once (4 MB)
TIMING_REPEATS = 3  # timed runs of each search after its warm-up; the median is reported


@dataclass(frozen=True)
class Stage:
    dim: int
    keep: int


def parse_funnel(text: str) -> list[Stage]:
    """`16:200,64:50,384:10` -> shortlist 200 at 16 dims, keep 50 at 64, keep 10 at 384."""
    stages = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        dim, _, keep = part.partition(":")
        if not (dim.isdigit() and keep.isdigit()) or int(dim) < 1 or int(keep) < 1:
            raise MatcliError(f"--funnel {text!r}: {part!r} is not DIM:KEEP like 16:200")
        stages.append(Stage(int(dim), int(keep)))
    if not stages:
        raise MatcliError("--funnel needs at least one DIM:KEEP stage, e.g. 16:200,384:10")
    for a, b in zip(stages, stages[1:]):
        if b.keep > a.keep:
            raise MatcliError(
                f"--funnel {text!r}: a stage keeps more candidates ({b.keep}) than the one "
                f"before it ({a.keep})"
            )
    return stages


def load_matrix(path: Path, key: str | None) -> tuple[np.ndarray, list[str]]:
    """All rows as float32, and an id per row (an `ids` tensor / `id` column, else the row
    number)."""
    source = open_source(path, key)
    matrix = np.empty((source.rows, source.dim), dtype=np.float32)
    for start, x in source.chunks(rows_per_chunk(source.dim, 32 << 20)):
        matrix[start : start + len(x)] = x
    if not np.isfinite(matrix).all():
        bad = np.flatnonzero(~np.isfinite(matrix).all(axis=1))
        raise MatcliError(
            f"{bad_rows_message(source, bad)}; drop them first with truncate-embeddings "
            "--skip-bad-rows"
        )
    return matrix, _ids(source)


def _ids(source: EmbeddingSource) -> list[str]:
    if isinstance(source, SafetensorsSource) and "ids" in source.passthrough.tensors:
        code, shape = source.passthrough.tensors["ids"]
        if shape == (source.rows,) and code in ("I64", "I32"):
            return [
                str(i)
                for i in np.frombuffer(
                    source.read_tensor_bytes("ids"), dtype=np.int64 if code == "I64" else np.int32
                )
            ]
    if isinstance(source, ParquetSource) and "id" in source.passthrough.columns:
        return [
            str(v) for batch in source.batches(65536, ["id"]) for v in batch.column(0).to_pylist()
        ]
    return [str(i) for i in range(source.rows)]


def normalized(x: np.ndarray, dim: int) -> np.ndarray:
    p = np.ascontiguousarray(x[:, :dim], dtype=np.float32)
    norms = np.linalg.norm(p, axis=1, keepdims=True)
    return p / np.where(norms > 0, norms, 1)


def top_k(queries: np.ndarray, corpus: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k best corpus rows per query, best first (ties: lower index first).

    The corpus is scored in blocks, each block's top k kept (torch.topk: a partial selection
    that is several times faster than numpy's argpartition), so the score matrix stays about
    SCORE_BLOCK_ELEMENTS whatever the corpus size.
    """
    import torch

    k = min(k, len(corpus))
    q, c = (
        torch.from_numpy(np.ascontiguousarray(queries)),
        torch.from_numpy(np.ascontiguousarray(corpus)),
    )
    block = max(16 * k, SCORE_BLOCK_ELEMENTS // max(1, len(queries)))
    scores, index = [], []
    for start in range(0, len(c), block):
        values, found = torch.topk(q @ c[start : start + block].T, min(k, len(c) - start), dim=1)
        scores.append(values)
        index.append(found + start)
    merged_scores, merged_index = torch.cat(scores, dim=1), torch.cat(index, dim=1)
    values, keep = torch.topk(merged_scores, k, dim=1)
    best_scores, best_index = values.numpy(), torch.gather(merged_index, 1, keep).numpy()
    order = np.lexsort((best_index, -best_scores), axis=-1)
    return np.take_along_axis(best_index, order, axis=1)


def rerank(
    queries: np.ndarray, corpus: np.ndarray, candidates: np.ndarray, keep: int
) -> np.ndarray:
    """The `keep` best of each query's candidates, scored on `corpus` rows. A candidate -1 (an
    index that found fewer than asked) scores -inf: it stays last, and stays -1.

    Candidate rows are gathered for a few queries at a time into one reused buffer (about
    RERANK_BLOCK_ELEMENTS floats): gathering into fresh memory spends most of its time faulting
    in new pages, which made reranking 200 candidates dearer than an HNSW search."""
    import torch

    missing = candidates < 0
    rows, width = candidates.shape[1], corpus.shape[1]
    q, c = torch.from_numpy(np.ascontiguousarray(queries)), torch.from_numpy(corpus)
    cand = torch.from_numpy(np.where(missing, 0, candidates))
    batch = max(1, RERANK_BLOCK_ELEMENTS // max(1, rows * width))
    gathered = torch.empty(batch * rows, width, dtype=c.dtype)
    scores = torch.empty(len(q), rows, dtype=c.dtype)
    for s in range(0, len(q), batch):
        ids = cand[s : s + batch].reshape(-1)
        torch.index_select(c, 0, ids, out=gathered[: len(ids)])
        vectors = gathered[: len(ids)].view(-1, rows, width)
        scores[s : s + batch] = torch.bmm(vectors, q[s : s + batch, :, None])[..., 0]
    order = np.lexsort((candidates, -np.where(missing, -np.inf, scores.numpy())), axis=-1)
    return np.take_along_axis(candidates, order[:, :keep], axis=1)


def overlap_recall(found: np.ndarray, exact: np.ndarray) -> float:
    """Mean fraction of the exact top-k found: recall@k against full-dimension search."""
    k = exact.shape[1]
    return float(np.mean([len(set(f[:k]) & set(e)) / k for f, e in zip(found, exact)]))


def read_qrels(path: Path) -> dict[str, dict[str, float]]:
    """TSV/CSV (query_id, doc_id[, relevance]) with an optional header, or JSON
    {query: {doc: rel}}."""
    if not path.is_file():
        raise MatcliError(f"--qrels {path} does not exist")
    if path.suffix == ".json":
        return _json_qrels(path, read_json_object(path, "--qrels"))
    lines = read_utf8(path, "--qrels", "give a UTF-8 TSV/CSV or JSON file").splitlines()
    delimiter = "\t" if lines and "\t" in lines[0] else ","
    qrels: dict[str, dict[str, float]] = {}
    for i, row in enumerate(csv.reader(lines, delimiter=delimiter)):
        if not row or (i == 0 and not _is_number(row[-1]) and len(row) >= 3):
            continue
        if len(row) < 2 or (len(row) > 2 and not _is_number(row[2])):
            raise MatcliError(
                f"--qrels {path} line {i + 1}: need query_id, doc_id and an optional number"
            )
        relevance = float(row[2]) if len(row) > 2 else 1.0
        qrels.setdefault(row[0], {})[row[1]] = relevance
    return qrels


def _json_qrels(path: Path, data: dict) -> dict[str, dict[str, float]]:
    """{query: {doc: relevance}}, each relevance a number."""
    for query, docs in data.items():
        if not isinstance(docs, dict) or not all(
            isinstance(r, (int, float)) and not isinstance(r, bool) for r in docs.values()
        ):
            raise MatcliError(
                f"--qrels {path}: query {query!r} must map document ids to relevance numbers"
            )
    return {str(q): {str(d): float(r) for d, r in docs.items()} for q, docs in data.items()}


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def label_metrics(
    ranked: np.ndarray, query_ids: list[str], doc_ids: list[str], qrels: dict, k: int
) -> dict[str, float]:
    """nDCG@10, MRR@10 and recall@k over the queries that have relevant documents.

    nDCG uses the linear gain (gain = relevance label, discount log2(rank + 1)), as
    pytrec_eval, BEIR and MTEB do; with binary labels it equals the exponential form."""
    ndcg, mrr, recall = [], [], []
    for row, qid in zip(ranked, query_ids):
        relevant = {d: r for d, r in qrels.get(qid, {}).items() if r > 0}
        if not relevant:
            continue
        docs = [doc_ids[i] for i in row if i >= 0]  # -1: an index found fewer
        gains = [relevant.get(d, 0.0) for d in docs[:10]]
        dcg = sum(g / math.log2(i + 2) for i, g in enumerate(gains))
        ideal = sorted(relevant.values(), reverse=True)[:10]
        idcg = sum(g / math.log2(i + 2) for i, g in enumerate(ideal))
        ndcg.append(dcg / idcg)
        mrr.append(next((1 / (i + 1) for i, g in enumerate(gains) if g > 0), 0.0))
        recall.append(len(set(docs[:k]) & set(relevant)) / len(relevant))
    if not ndcg:
        raise MatcliError(
            "no query in --qrels matches the queries' ids; check the ids (an `ids` tensor / `id` "
            "column, or row numbers)"
        )
    return {
        "ndcg@10": float(np.mean(ndcg)),
        "mrr@10": float(np.mean(mrr)),
        f"recall@{k}": float(np.mean(recall)),
        "labelled_queries": len(ndcg),
    }


def check_request(corpus_rows: int, full: int, dims: list[int], k: int, funnels=()) -> None:
    """Every cut-off and dimension, checked before any search runs."""
    if not 1 <= k <= corpus_rows:
        raise MatcliError(f"--k {k} must be between 1 and the corpus's {corpus_rows} documents")
    for d in dims:
        if not 1 <= d <= full:
            raise MatcliError(f"--dims {d} is outside 1..{full}")
    for stages in funnels:
        for s in stages:
            if not 1 <= s.dim <= full:
                raise MatcliError(f"--funnel dimension {s.dim} is outside 1..{full}")
        if stages[0].keep > corpus_rows:
            raise MatcliError(
                f"--funnel {stages[0].dim}:{stages[0].keep} shortlists more candidates than the "
                f"corpus's {corpus_rows} documents; keep at most {corpus_rows}"
            )


def timed_search(search) -> tuple[np.ndarray, float]:
    """The search's result, and the median seconds of TIMING_REPEATS runs after a warm-up run."""
    result = search()
    seconds = []
    for _ in range(TIMING_REPEATS):
        start = time.perf_counter()
        search()
        seconds.append(time.perf_counter() - start)
    return result, statistics.median(seconds)


def evaluate(
    corpus: np.ndarray,
    queries: np.ndarray,
    dims: list[int],
    k: int,
    qrels=None,
    ids=None,
    funnels=(),
    ann=None,
) -> dict:
    """The whole report: per-dimension quality, and each funnel's quality, time and FLOPs (with
    `ann`, an IndexSpec: the first stage searches that index; its build time is reported)."""
    full = corpus.shape[1]
    if queries.shape[1] != full:
        raise MatcliError(f"queries have {queries.shape[1]} dimensions but the corpus has {full}")
    check_request(len(corpus), full, dims, k, funnels)
    if ann is not None:
        ann.params(len(corpus))  # its limits, checked before any search
    rank_k = max(k, 10)
    # The index of every timed search, built untimed for the baseline and the funnels alike.
    searched = {full} | {s.dim for stages in funnels for s in stages}
    index = {d: (normalized(queries, d), normalized(corpus, d)) for d in searched}

    def full_search() -> np.ndarray:
        return top_k(*index[full], rank_k)

    exact, full_seconds = timed_search(full_search) if funnels else (full_search(), 0.0)
    rows = []
    for d in dims:
        prefixes = index[d] if d in index else (normalized(queries, d), normalized(corpus, d))
        ranked = exact if d == full else top_k(*prefixes, rank_k)
        row = {"dim": d, f"recall@{k}_vs_full": overlap_recall(ranked[:, :k], exact[:, :k])}
        if qrels is not None:
            row.update(label_metrics(ranked, ids[0], ids[1], qrels, k))
        rows.append(row)
    report = {
        "corpus": len(corpus),
        "queries": len(queries),
        "full_dim": full,
        "k": k,
        "dims": rows,
    }
    baseline = FunnelBaseline(index, full, exact, k, qrels, ids, full_seconds)
    report["funnels"] = [_funnel(baseline, stages, ann) for stages in funnels]
    return report


@dataclass(frozen=True)
class FunnelBaseline:
    """What every funnel is measured against: the normalized prefixes, exact full-dimension
    search (its ranking and median seconds), and the labels."""

    index: dict[int, tuple[np.ndarray, np.ndarray]]
    full: int
    exact: np.ndarray
    k: int
    qrels: dict | None
    ids: tuple | None
    full_seconds: float


def run_funnel(
    index: dict[int, tuple[np.ndarray, np.ndarray]], stages: list[Stage], shortlist=None
) -> np.ndarray:
    """Shortlist at the first stage's dimension (over the whole corpus, or with `shortlist`,
    an approximate index's search), then rerank stage by stage."""
    first = stages[0]
    if shortlist is None:
        candidates = top_k(*index[first.dim], first.keep)
    else:
        candidates = shortlist(index[first.dim][0], first.keep)
    for s in stages[1:]:
        candidates = rerank(*index[s.dim], candidates, s.keep)
    return candidates


def _funnel(base: FunnelBaseline, stages: list[Stage], ann) -> dict:
    result = {"funnel": ",".join(f"{s.dim}:{s.keep}" for s in stages)}
    shortlist = None
    if ann is not None:
        from matcli.mrl.ann import build_shortlist

        shortlist, built = build_shortlist(ann, base.index[stages[0].dim][1])
        result.update(built)
    candidates, seconds = timed_search(lambda: run_funnel(base.index, stages, shortlist))
    queries, corpus_rows = base.exact.shape[0], len(base.index[base.full][1])
    final_k = min(base.k, stages[-1].keep)
    result[f"recall@{final_k}_vs_full"] = overlap_recall(candidates, base.exact[:, :final_k])
    if ann is None:  # an index's work per query is not a fixed number of multiply-adds
        flops = corpus_rows * stages[0].dim + sum(
            a.keep * b.dim for a, b in zip(stages, stages[1:])
        )
        result |= {"flops_per_query": flops, "flops_vs_full": corpus_rows * base.full / flops}
    result |= {
        "ms_per_query": seconds / queries * 1e3,
        "full_ms_per_query": base.full_seconds / queries * 1e3,
        "speedup_vs_full": base.full_seconds / seconds,
    }
    if base.qrels is not None:
        result.update(label_metrics(candidates, base.ids[0], base.ids[1], base.qrels, final_k))
    return result
