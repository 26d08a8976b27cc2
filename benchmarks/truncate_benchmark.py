"""`matcli truncate-embeddings` against the obvious numpy approach, and the MRL funnel.

    python benchmarks/truncate_benchmark.py [--workdir /tmp/matcli-bench] [--runs 3]

1. Generates an 8 GB float32 .npy file (2.6M x 768; in a child process, so that this
   process's peak RSS does not leak into the measured commands) and truncates it to 256
   dimensions with renormalization, in interleaved rounds: `matcli truncate-embeddings` (row
   chunks) and numpy (np.load the whole file, slice, normalize, np.save). Checks the outputs agree.
2. On 1M synthetic 384-d vectors with decaying variance (Matryoshka-like prefixes) and 1,000
   queries, compares exact full-dimension search with the funnels 32/64/128:200,384:10 in one
   process (same timing for all: prefixes built untimed, a warm-up, the median of repeats):
   time per query, FLOPs, and recall@10 against the exact result.
Rewrites the truncate section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import fresh_run, interleaved, machine, replace_section, table

ROWS, DIM, KEEP = 2_604_167, 768, 256
NAIVE = "numpy (load, slice, normalize, save)"
NAIVE_SCRIPT = """
import sys, numpy as np
x = np.load(sys.argv[1])
t = x[:, :int(sys.argv[3])]
n = np.linalg.norm(t, axis=1, keepdims=True)
np.save(sys.argv[2], t / np.where(n > 0, n, 1))
"""


def generate(path: Path) -> None:
    if path.exists():
        return
    rng = np.random.default_rng(0)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as f:
        np.lib.format.write_array_header_2_0(
            f, {"descr": "<f4", "fortran_order": False, "shape": (ROWS, DIM)}
        )
        for start in range(0, ROWS, 100_000):
            n = min(100_000, ROWS - start)
            f.write(rng.standard_normal((n, DIM), dtype=np.float32).tobytes())
    tmp.rename(path)


def generate_in_child(path: Path) -> None:
    """Generate in a child process: Linux keeps a process's peak RSS across exec, so every
    command this process starts later would report at least its peak (the generation's
    buffers) as its own peak RSS."""
    child = multiprocessing.get_context("spawn").Process(target=generate, args=(path,))
    child.start()
    child.join()
    if child.exitcode:
        sys.exit("generating the benchmark input failed")


def funnel_benchmark() -> list[str]:
    from matcli.mrl.retrieval import TIMING_REPEATS, evaluate, parse_funnel

    rng = np.random.default_rng(1)
    corpus = rng.standard_normal((1_000_000, 384), dtype=np.float32) * np.geomspace(
        1, 0.05, 384
    ).astype(np.float32)
    queries = corpus[rng.choice(len(corpus), 1000, replace=False)] + 0.3 * rng.standard_normal(
        (1000, 384), dtype=np.float32
    ) * np.geomspace(1, 0.05, 384).astype(np.float32)
    report = evaluate(
        corpus,
        queries,
        [384, 32],
        10,
        funnels=[
            parse_funnel("32:200,384:10"),
            parse_funnel("64:200,384:10"),
            parse_funnel("128:200,384:10"),
        ],
    )
    funnels = report["funnels"]
    lines = [
        "",
        "Funnel on 1,000,000 synthetic 384-d vectors with geometrically decaying variance (a "
        "stand-in for",
        "MRL embeddings, whose leading dimensions carry the most), 1,000 noisy queries, exact "
        "brute-force search",
        "(blocked matmul + torch.topk) in one process. Every row is timed the same way: the "
        "normalized prefixes",
        "of corpus and queries that a search reads (the 384-d ones of exact search included) are "
        "built once and",
        f"not timed, and each search runs once as a warm-up, then {TIMING_REPEATS} times; the "
        "median is shown.",
        "",
        "| search | recall@10 vs exact 384-d | FLOPs per query | ms per query | speed-up |",
        "|---|---|---|---|---|",
        f"| exact, 384 dims | 1.000 | {1_000_000 * 384:,} | {funnels[0]['full_ms_per_query']:.2f} "
        "| 1.0x |",
        f"| exact, 32 dims only | {report['dims'][1]['recall@10_vs_full']:.3f} | "
        f"{1_000_000 * 32:,} | - | - |",
    ]
    for f in funnels:
        lines.append(
            f"| funnel {f['funnel']} | {f['recall@10_vs_full']:.3f} | {f['flops_per_query']:,} | "
            f"{f['ms_per_query']:.2f} | {f['speedup_vs_full']:.1f}x |"
        )
    flops = [f["flops_vs_full"] for f in funnels]
    speed = [f["speedup_vs_full"] for f in funnels]
    lines += [
        "",
        f"FLOPs fall {min(flops):.0f}-{max(flops):.0f}x, wall time only "
        f"{min(speed):.1f}-{max(speed):.1f}x: every query still scores all 1M",
        "vectors and selects its shortlist among them, and at a small shortlist dimension that "
        "per-vector cost",
        "(writing and scanning 1M scores, and a top-200 selection, dearer than exact search's "
        "top-10) outweighs",
        "the multiply-adds. The MRL paper's 14x wall-clock speed-up is with an HNSW index, whose "
        "cost grows with",
        "the dimension; exact search is bounded by the pass over the corpus.",
    ]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/matcli-bench"))
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    work = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    big = work / "embeddings-8gb.npy"
    generate_in_child(big)
    matcli = [
        sys.executable,
        "-m",
        "matcli",
        "truncate-embeddings",
        str(big),
        "--dims",
        str(KEEP),
        "-q",
        "-o",
        str(work / "t-matcli.npy"),
    ]
    naive = [sys.executable, "-c", NAIVE_SCRIPT, str(big), str(work / "t-numpy.npy"), str(KEEP)]
    results = interleaved(
        {
            "matcli truncate-embeddings": lambda: fresh_run(work / "t-matcli.npy", matcli),
            NAIVE: lambda: fresh_run(work / "t-numpy.npy", naive),
        },
        args.runs,
    )
    a = np.load(work / "t-matcli.npy", mmap_mode="r")
    b = np.load(work / "t-numpy.npy", mmap_mode="r")
    same = max(
        float(np.abs(a[i : i + 100_000] - b[i : i + 100_000]).max())
        for i in range(0, ROWS, 100_000)
    )
    rss = max(r for _, r in results["matcli truncate-embeddings"]) / 2**20
    ratio = statistics.median(
        w for w, _ in results["matcli truncate-embeddings"]
    ) / statistics.median(w for w, _ in results[NAIVE])
    lines = [
        f"An {big.stat().st_size / 1e9:.2f} GB float32 .npy ({ROWS:,} x {DIM}) truncated to "
        f"{KEEP} dims with renormalization, "
        f"medians of {args.runs} interleaved runs on {machine()}; the outputs differ by at most "
        f"{same:.1e}.",
        "",
        *table(results, NAIVE),
        "",
        f"Targets: peak RSS <= 512 MiB: {'met' if rss <= 512 else 'MISSED'} ({rss:.0f} MiB); wall "
        f"time {ratio:.2f}x numpy's.",
        *funnel_benchmark(),
    ]
    body = "\n".join(lines)
    print(body)
    replace_section("truncate", body)


if __name__ == "__main__":
    main()
