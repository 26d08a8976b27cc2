"""Cost of a MatQuant QAT step (R = {8, 4, 2}) against a plain fine-tuning step.

    python benchmarks/qat_benchmark.py MODEL --data FILE \
        [--seq-len 128] [--batch-size 4] [--steps 6]

Each approach runs in its own process (so peak RSS is its own): the same model, batch and
sequence length, AdamW; the first step is a warm-up and not timed; the median of the other
steps is reported. Rewrites the qat section of docs/benchmarks.md.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, qat_setup, replace_section, step_benchmark_args


def child(kind: str, args) -> None:
    import contextlib
    import resource

    import torch
    import torch.nn.functional as F

    from matcli.train.qat import MultiWidthLoss, batch_indices

    options, windows, qm = qat_setup(args)
    objective = MultiWidthLoss(qm, options, qm.model)
    params = [p for p in qm.model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-5)
    times = []
    for step in range(args.steps):
        batch = windows[batch_indices(len(windows), step, args.batch_size, 0)]
        start = time.perf_counter()
        if kind == "qat":
            objective.backward(batch, 1.0, lambda last: contextlib.nullcontext())
        else:
            logits = qm.model(input_ids=batch).logits[:, :-1].float()
            F.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1)
            ).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"step_seconds": statistics.median(times[1:]), "peak_rss": rss}))


def main() -> None:
    args = step_benchmark_args(["qat", "plain"])
    if args.child:
        child(args.child, args)
        return
    results = {}
    for kind in ("plain", "qat"):
        cmd = [
            sys.executable,
            __file__,
            str(args.model),
            "--data",
            str(args.data),
            "--seq-len",
            str(args.seq_len),
            "--batch-size",
            str(args.batch_size),
            "--steps",
            str(args.steps),
            "--child",
            kind,
        ]
        out = subprocess.run(
            cmd, capture_output=True, text=True, check=True, env={**os.environ, "TQDM_DISABLE": "1"}
        ).stdout
        results[kind] = json.loads(out.strip().splitlines()[-1])
    plain, qat = results["plain"], results["qat"]
    ratio = qat["step_seconds"] / plain["step_seconds"]
    body = "\n".join(
        [
            f"{args.model.name}, batch {args.batch_size} x {args.seq_len} tokens, AdamW, fp32 on "
            f"{machine()}; median of {args.steps - 1} timed steps after one warm-up step.",
            "",
            "| step | time (median) | vs plain | peak RSS |",
            "|---|---|---|---|",
            f"| plain fine-tuning | {plain['step_seconds']:.2f} s | 1.00x | "
            f"{plain['peak_rss'] / 2**20:.0f} MiB |",
            f"| MatQuant QAT, R = {{8, 4, 2}} | {qat['step_seconds']:.2f} s | {ratio:.2f}x | "
            f"{qat['peak_rss'] / 2**20:.0f} MiB |",
            "",
            "Target: <= 3.3x a plain step (<= 10% fake-quant overhead per width on top of the 3 "
            f"forward/backward passes): {'met' if ratio <= 3.3 else 'MISSED'} ({ratio:.2f}x, "
            f"i.e. {(ratio / 3 - 1) * 100:+.0f}% per width).",
        ]
    )
    print(body)
    replace_section("qat", body)


if __name__ == "__main__":
    main()
