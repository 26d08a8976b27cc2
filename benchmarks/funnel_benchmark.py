"""The MRL funnel with an approximate first stage (`eval-retrieval --index hnsw|ivf`) against
exact full-dimension search, side by side in one run.

    python benchmarks/funnel_benchmark.py [--rows 1000000] [--batches 5] [--batch-queries 1000]
        [--news assets/news] [--workdir /tmp/matcli-funnel] [--threads N]

1. Synthetic MRL-like vectors (written once to WORKDIR as .npy, in a child process): ROWS x 384
   float32 in topic clusters (ROWS/100 topic centres, each row a centre plus noise of half its
   scale), every dimension i scaled by 1/sqrt(i+1), so the leading dimensions carry most of the
   variance as in a Matryoshka model (the first 64 of 384 carry 73%). Queries are corpus rows
   plus noise (0.3 of the scale), BATCHES x BATCH_QUERIES of them.
2. Each search runs in its own child process (its peak RSS is its own): exact 384-d search
   (blocked matmul + torch.topk, matcli's `top_k`), and the funnel FUNNEL with its first stage
   searched exactly (over the whole corpus, as without --index), by an HNSW and by an IVF index
   (faiss, built by matcli's `build_shortlist` with the eval-retrieval defaults), the later stage
   reranked exactly (matcli's `run_funnel`).
   "Build" is everything before the first query: normalizing the prefixes the search reads, and
   the index. Each child runs one batch as a warm-up, then every batch once (queries normalized
   inside the timed part); the table gives the median over the batches of ms per query.
   recall@10 is against the exact 384-d top-10 of the same queries.
3. With --news DIR (corpus.npy, queries.npy from `scripts/real_assets.py assets news`): the same
   on real all-MiniLM-L6-v2 embeddings of 3.6k news articles (their titles as queries), as they
   are and rotated by matcli's uncentred PCA (fitted on the corpus, as `truncate-embeddings
   --pca` does), which gives the non-Matryoshka model Matryoshka-like prefixes.
Rewrites the funnel section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, machine, replace_section, run

sys.path.insert(0, str(ROOT))  # this checkout's matcli, in the children too
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))

DIM, FUNNEL, K = 384, "64:200,384:10", 10
APPROACHES = ("exact", "funnel", "hnsw", "ivf")  # funnel: its first stage by exact search
NAMES = {"exact": f"exact, {DIM} dims", "funnel": f"funnel {FUNNEL}, exact first stage"}


def generate(work: Path, rows: int, queries: int) -> None:
    """corpus.npy and queries.npy, row chunk by row chunk (see the module docstring)."""
    rng = np.random.default_rng(0)
    scale = ((1 + np.arange(DIM)) ** -0.5).astype(np.float32)
    topics = rng.standard_normal((max(1, rows // 100), DIM), dtype=np.float32) * scale
    with open(work / "corpus.tmp", "wb") as f:
        np.lib.format.write_array_header_2_0(
            f, {"descr": "<f4", "fortran_order": False, "shape": (rows, DIM)}
        )
        for start in range(0, rows, 100_000):
            n = min(100_000, rows - start)
            noise = rng.standard_normal((n, DIM), dtype=np.float32)
            f.write((topics[rng.integers(0, len(topics), n)] + 0.5 * noise * scale).tobytes())
    (work / "corpus.tmp").rename(work / "corpus.npy")
    corpus = np.load(work / "corpus.npy", mmap_mode="r")
    picked = corpus[np.sort(rng.choice(rows, queries, replace=False))]
    noise = rng.standard_normal(picked.shape, dtype=np.float32)
    np.save(work / "queries.npy", (picked + 0.3 * noise * scale).astype(np.float32))


def index_spec(kind: str):
    """The eval-retrieval defaults for --index KIND (the options hold them)."""
    from matcli.mrl.ann import IndexSpec
    from matcli.options import EvalRetrievalOptions

    options = EvalRetrievalOptions(corpus="-", queries="-", funnel=[FUNNEL], index=kind)
    return IndexSpec.from_options(options)


def child(approach: str, data: Path, batch_queries: int, threads: int) -> None:
    """One approach on data/corpus.npy: build, warm up, time each batch; writes
    data/APPROACH.json and data/APPROACH-ids.npy."""
    import torch

    from matcli.mrl.retrieval import normalized, parse_funnel, run_funnel, top_k

    torch.set_num_threads(threads)
    corpus, queries = np.load(data / "corpus.npy", mmap_mode="r"), np.load(data / "queries.npy")
    stages = parse_funnel(FUNNEL)
    start = time.perf_counter()
    dims = [DIM] if approach == "exact" else sorted({s.dim for s in stages})
    prefixes = {d: normalized(corpus, d) for d in dims}
    shortlist, built = None, {}
    if approach in ("hnsw", "ivf"):
        import faiss

        from matcli.mrl.ann import build_shortlist

        faiss.omp_set_num_threads(threads)
        shortlist, built = build_shortlist(index_spec(approach), prefixes[stages[0].dim])
    build_seconds = time.perf_counter() - start

    def search(batch: np.ndarray) -> np.ndarray:
        if approach == "exact":
            return top_k(normalized(batch, DIM), prefixes[DIM], K)
        index = {d: (normalized(batch, d), prefixes[d]) for d in dims}
        return run_funnel(index, stages, shortlist)

    batches = [queries[i : i + batch_queries] for i in range(0, len(queries), batch_queries)]
    search(batches[0])  # warm-up: torch's first call, allocations
    found, ms = [], []
    for batch in batches:
        begin = time.perf_counter()
        found.append(search(batch))
        ms.append((time.perf_counter() - begin) / len(batch) * 1e3)
    np.save(data / f"{approach}-ids.npy", np.concatenate(found))
    result = {"build_seconds": build_seconds, "ms_per_query": ms} | built
    (data / f"{approach}.json").write_text(json.dumps(result))


def compare(data: Path, batch_queries: int, threads: int) -> list[str]:
    """Every approach in its own process; the table rows."""
    script = str(Path(__file__).resolve())
    results = {}
    for approach in APPROACHES:
        cmd = [sys.executable, script, "--child", approach, "--workdir", str(data)]
        _, rss = run([*cmd, "--batch-queries", str(batch_queries), "--threads", str(threads)])
        results[approach] = json.loads((data / f"{approach}.json").read_text()) | {"rss": rss}
    exact_ids = np.load(data / "exact-ids.npy")
    exact_ms = statistics.median(results["exact"]["ms_per_query"])
    lines = [
        "| search | build | recall@10 vs exact | ms per query (median) | speed-up | peak RSS |",
        "|---|---|---|---|---|---|",
    ]
    for approach, r in results.items():
        ids = np.load(data / f"{approach}-ids.npy")
        recall = np.mean([len(set(a) & set(b)) / K for a, b in zip(ids, exact_ids)])
        ms = statistics.median(r["ms_per_query"])
        name = NAMES.get(approach, f"funnel {FUNNEL}, {approach} index")
        if "index_params" in r:
            name += " (" + ", ".join(f"{k}={v}" for k, v in r["index_params"].items()) + ")"
        lines.append(
            f"| {name} | {r['build_seconds']:.1f} s | {recall:.3f} | {ms:.3f} | "
            f"{exact_ms / ms:.1f}x | {r['rss'] / 2**20:.0f} MiB |"
        )
    return lines


def synthetic(args) -> list[str]:
    data = args.workdir / f"synthetic-{args.rows}"
    data.mkdir(parents=True, exist_ok=True)
    if not (data / "queries.npy").exists():
        queries = args.batches * args.batch_queries
        child_process = multiprocessing.get_context("spawn").Process(
            target=generate, args=(data, args.rows, queries)
        )
        child_process.start()
        child_process.join()
    return [
        f"{args.rows:,} synthetic MRL-like {DIM}-d vectors (topic clusters, dimension i scaled by "
        f"1/sqrt(i+1)), {args.batches} batches of {args.batch_queries} queries:",
        "",
        *compare(data, args.batch_queries, args.threads),
    ]


def news(args) -> list[str]:
    """The real embeddings, as they are and PCA-rotated, copied into the work folder."""
    from matcli.mrl.transform import PcaFit

    corpus = np.load(args.news / "corpus.npy").astype(np.float32)
    queries = np.load(args.news / "queries.npy").astype(np.float32)
    fit = PcaFit(DIM)
    fit.add(corpus)
    rotation = fit.finish(center=False)[0].rotation.astype(np.float32)
    batch = -(-len(queries) // args.batches)
    lines = [
        f"Real all-MiniLM-L6-v2 embeddings (384-d, not Matryoshka-trained) of {len(corpus):,} "
        f"news articles, their {len(queries):,} titles as queries in {args.batches} batches",
    ]
    for name, transform in (("as they are", None), ("PCA-rotated", rotation)):
        data = args.workdir / ("news" if transform is None else "news-pca")
        data.mkdir(parents=True, exist_ok=True)
        for file, x in (("corpus.npy", corpus), ("queries.npy", queries)):
            np.save(data / file, x if transform is None else x @ transform)
        lines += ["", f"{name}:", "", *compare(data, batch, args.threads)]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/matcli-funnel"))
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--batches", type=int, default=5)
    parser.add_argument("--batch-queries", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--news", type=Path, help="folder with corpus.npy and queries.npy")
    parser.add_argument("--child", choices=APPROACHES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.workdir, args.batch_queries, args.threads)
        return
    load = os.getloadavg()[0]
    lines = synthetic(args)
    if args.news:
        lines += ["", *news(args)]
    lines += [
        "",
        f"{machine()}; {args.threads} threads for torch and faiss; load average "
        f"{load:.1f} at the start, {os.getloadavg()[0]:.1f} at the end (shared machine).",
    ]
    body = "\n".join(lines)
    print(body)
    replace_section("funnel", body)


if __name__ == "__main__":
    main()
