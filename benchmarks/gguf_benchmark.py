"""`matcli slice --format gguf` (streamed) against gguf-py's writer holding every tensor.

    python benchmarks/gguf_benchmark.py --parent PARENT [--bits 4] [--runs 3]

PARENT is a symmetric group-32 parent (recipes/gguf-parent-g32.yaml). Times, in interleaved
rounds, `matcli slice PARENT --bits B --format gguf -o OUT -q` and benchmarks/naive_gguf.py
(the same tensors and metadata, added to `GGUFWriter` in memory and written at the end); wall
time and peak RSS of each child process, medians over runs. Checks that both files hold the
same tensors, byte for byte, then rewrites the gguf section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, fresh_run, interleaved, machine, replace_section, table, warm

MATCLI = "matcli slice --format gguf"
NAIVE = "naive (GGUFWriter.add_tensor, then write)"


def same_tensors(a: Path, b: Path) -> bool:
    import gguf
    import numpy as np

    ta, tb = gguf.GGUFReader(a).tensors, gguf.GGUFReader(b).tensors
    return [t.name for t in ta] == [t.name for t in tb] and all(
        np.array_equal(x.data, y.data) for x, y in zip(ta, tb)
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--parent", type=Path, required=True)
    parser.add_argument("--bits", default="4")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/matcli-gguf-bench"))
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    ours, naive = args.workdir / "matcli.gguf", args.workdir / "naive.gguf"
    py = sys.executable
    warm(args.parent)
    slice_args = ["slice", str(args.parent), "--bits", args.bits, "--format", "gguf", "-q"]
    approaches = {
        MATCLI: lambda: fresh_run(ours, [py, "-m", "matcli", *slice_args, "-o", str(ours)]),
        NAIVE: lambda: fresh_run(
            naive,
            [
                py,
                str(ROOT / "benchmarks" / "naive_gguf.py"),
                str(args.parent),
                args.bits,
                str(naive),
            ],
        ),
    }
    results = interleaved(approaches, args.runs)
    equal = same_tensors(ours, naive)
    size = ours.stat().st_size / 1e9
    body = "\n".join(
        [
            f"Parent: {args.parent.name} ({args.parent}), int{args.bits} GGUF of {size:.3f} GB. "
            f"Medians of {args.runs} interleaved runs on {machine()}. "
            f"Tensors of both files identical: {equal}.",
            "",
            *table(results, NAIVE),
        ]
    )
    replace_section("gguf", body)
    print(body)


if __name__ == "__main__":
    main()
