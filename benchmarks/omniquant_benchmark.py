"""MatQuant OmniQuant calibration of a model end to end, against single-width OmniQuant.

    python benchmarks/omniquant_benchmark.py MODEL --data FILE \
        [--recipe recipes/smollm2-135m-omniquant-cpu.yaml] [--runs 1]

Both run the full command (load, capture the calibration inputs, calibrate block by block,
fold and write the parent), each in its own process, with the recipe's samples and epochs:
- matcli quantize --method omniquant, R = {8, 4, 2} (the recipe as written);
- the same for one width, int2 only (c = 2): what plain OmniQuant costs for one model.
Wall time and peak RSS come from wait4's rusage; medians over interleaved runs. Rewrites the
omniquant section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, fresh_run, interleaved, machine, replace_section

TARGET_SECONDS = 30 * 60


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model", type=Path)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument(
        "--recipe", type=Path, default=ROOT / "recipes" / "smollm2-135m-omniquant-cpu.yaml"
    )
    parser.add_argument("--runs", type=int, default=1)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="matcli-omniquant-bench-"))
    base = [
        sys.executable,
        "-m",
        "matcli",
        "quantize",
        str(args.model),
        "--recipe",
        str(args.recipe),
        "--data",
        str(args.data),
        "-q",
    ]
    approaches = {
        "MatQuant OmniQuant, R = {8, 4, 2}": lambda: fresh_run(
            work / "matquant", base + ["-o", str(work / "matquant")]
        ),
        "OmniQuant for int2 only (c = 2)": lambda: fresh_run(
            work / "int2", base + ["--bits", "2", "--train-bits", "2", "-o", str(work / "int2")]
        ),
    }
    try:
        results = interleaved(approaches, args.runs)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    matquant, single = (statistics.median(w for w, _ in runs) for runs in results.values())
    recipe = args.recipe.relative_to(ROOT) if args.recipe.is_relative_to(ROOT) else args.recipe
    lines = [
        f"{args.model.name}, `{recipe}` "
        f"on {machine()}; the whole command (load, calibrate every block, write the parent); "
        f"median of {args.runs} run(s).",
        "",
        "| calibration | wall time (median) | vs one width | peak RSS (max) |",
        "|---|---|---|---|",
    ]
    for name, runs in results.items():
        wall = statistics.median(w for w, _ in runs)
        rss = max(r for _, r in runs) / 2**20
        lines.append(f"| {name} | {wall / 60:.1f} min | {wall / single:.2f}x | {rss:.0f} MiB |")
    lines += [
        "",
        f"Target: MatQuant OmniQuant end to end <= 30 minutes on 2 CPU cores: "
        f"{'met' if matquant <= TARGET_SECONDS else 'MISSED'} ({matquant / 60:.1f} min).",
    ]
    body = "\n".join(lines)
    print(body)
    replace_section("omniquant", body)


if __name__ == "__main__":
    main()
