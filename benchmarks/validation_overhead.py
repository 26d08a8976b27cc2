"""What validating a checkpoint's headers, index and links costs: the median time to open a
model folder (every check matcli makes before reading tensor data), to compare with a
command's wall time on the same folder.

    python benchmarks/validation_overhead.py FOLDER [--runs 50]

Run it from two checkouts (before and after a change to the checks) on the same folder.
"""

from __future__ import annotations

import argparse
import statistics
import time

from matcli.checkpoint.reader import ModelFolder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder")
    parser.add_argument("--runs", type=int, default=50)
    args = parser.parse_args()
    times = []
    for _ in range(args.runs):
        start = time.perf_counter()
        with ModelFolder(args.folder):
            pass
        times.append(time.perf_counter() - start)
    print(f"open and validate {args.folder}: median {statistics.median(times) * 1e3:.3f} ms")


if __name__ == "__main__":
    main()
