"""Cost of `--teacher original` on a MatQuant QAT step (R = {8, 4, 2}): the same step with
and without the dense teacher's forward and the KL loss.

    python benchmarks/teacher_benchmark.py MODEL --data FILE \
        [--seq-len 128] [--batch-size 4] [--steps 6]

Each variant runs in its own process (peak RSS is its own): the same model, batches, AdamW
step; the first step is a warm-up and not timed; the median of the others is reported.
Rewrites the teacher section of docs/benchmarks.md.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, qat_setup, replace_section, step_benchmark_args

VARIANTS = {"labels": None, "teacher": "original"}


def child(variant: str, args) -> None:
    import contextlib
    import resource

    import torch

    from matcli.train.distill import load_teacher
    from matcli.train.qat import MultiWidthLoss, batch_indices

    options, windows, qm = qat_setup(args, teacher=VARIANTS[variant])
    objective = MultiWidthLoss(qm, options, qm.model, load_teacher(options, torch.device("cpu")))
    optimizer = torch.optim.AdamW([p for p in qm.model.parameters() if p.requires_grad], lr=1e-5)
    times = []
    for step in range(args.steps):
        batch = windows[batch_indices(len(windows), step, args.batch_size, 0)]
        start = time.perf_counter()
        objective.backward(batch, 1.0, lambda last: contextlib.nullcontext())
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"step_seconds": statistics.median(times[1:]), "peak_rss": rss}))


def measure(variant: str, args) -> dict:
    flags = ["--seq-len", str(args.seq_len), "--batch-size", str(args.batch_size)]
    cmd = [sys.executable, __file__, str(args.model), "--data", str(args.data), *flags]
    cmd += ["--steps", str(args.steps), "--child", variant]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    args = step_benchmark_args(list(VARIANTS))
    if args.child:
        child(args.child, args)
        return
    labels, teacher = (measure(v, args) for v in VARIANTS)
    ratio = teacher["step_seconds"] / labels["step_seconds"]
    rows = [
        ("MatQuant QAT, labels (cross-entropy)", labels, "1.00x"),
        ("MatQuant QAT, `--teacher original` (KL)", teacher, f"{ratio:.2f}x"),
    ]
    body = "\n".join(
        [
            f"{args.model.name}, batch {args.batch_size} x {args.seq_len} tokens, R = {{8, 4, 2}}, "
            f"AdamW, fp32 on {machine()}; median of {args.steps - 1} timed steps after one "
            "warm-up step.",
            "",
            "| step | time (median) | vs labels | peak RSS |",
            "|---|---|---|---|",
            *(
                f"| {name} | {r['step_seconds']:.2f} s | {x} | {r['peak_rss'] / 2**20:.0f} MiB |"
                for name, r, x in rows
            ),
            "",
            "Target: a step with the teacher <= 1.2x the step without it: "
            f"{'met' if ratio <= 1.2 else 'MISSED'} ({ratio:.2f}x).",
        ]
    )
    print(body)
    replace_section("teacher", body)


if __name__ == "__main__":
    main()
