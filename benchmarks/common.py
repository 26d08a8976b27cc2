"""Shared by the benchmark scripts: timing child processes and writing docs/benchmarks.md."""

from __future__ import annotations

import os
import platform
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


# Runs the command as its own child and reports its wall time and peak RSS. A process's peak
# RSS survives exec on Linux: a child forked straight from this benchmark process would start
# with this process's peak (gigabytes after generating test data). The launcher is a fresh,
# small interpreter (~10 MB), so that is all the measured command can inherit. The time runs
# until the output is on disk (`sync`): matcli fsyncs its output before the atomic rename,
# and a tool that returns with gigabytes still in the page cache has not finished writing.
_LAUNCHER = """
import os, sys, time
start = time.perf_counter()
pid = os.fork()
if pid == 0:
    os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
    os.execvp(sys.argv[1], sys.argv[1:])
_, status, usage = os.wait4(pid, 0)
os.sync()
print(os.waitstatus_to_exitcode(status), time.perf_counter() - start, usage.ru_maxrss * 1024)
"""


def run(cmd: list[str]) -> tuple[float, int]:
    """Wall seconds and peak RSS bytes of one child process (rusage from wait4)."""
    proc = subprocess.run([sys.executable, "-c", _LAUNCHER, *cmd], capture_output=True, text=True)
    out = proc.stdout.split()
    if len(out) != 3 or out[0] != "0":
        sys.exit(f"benchmark command failed: {' '.join(cmd)}\n{proc.stderr[-2000:]}")
    return float(out[1]), int(out[2])


def fresh_run(output: Path, cmd: list[str]) -> tuple[float, int]:
    """Remove the previous output (untimed, then `sync`), so that every approach writes into
    the same state of the page cache and disk; then time the command."""
    if output.is_dir():
        shutil.rmtree(output)
    elif output.exists():
        output.unlink()
    subprocess.run(["sync"], check=True)
    return run(cmd)


def copy_tree(src: Path, dst: Path) -> tuple[float, int]:
    return fresh_run(dst, ["cp", "-r", str(src), str(dst)])


def warm(folder: Path) -> None:
    """Read every file once so that all approaches start from a warm page cache."""
    subprocess.run(
        ["cat", *map(str, sorted(folder.glob("*.safetensors")))],
        stdout=subprocess.DEVNULL,
        check=True,
    )


def tensors_equal(a: Path, b: Path) -> bool:
    """Same tensor names, and the same bytes for each, compared chunk by chunk."""
    import numpy as np

    from matcli.checkpoint.reader import ModelFolder

    with ModelFolder(a) as fa, ModelFolder(b) as fb:
        if set(fa.tensors) != set(fb.tensors):
            return False
        for name, info in fa.tensors.items():
            if info.nbytes != fb.tensors[name].nbytes:
                return False
            for start in range(0, info.nbytes, 64 << 20):
                stop = min(start + (64 << 20), info.nbytes)
                if not np.array_equal(
                    fa.read_bytes(name, start, stop), fb.read_bytes(name, start, stop)
                ):
                    return False
    return True


def interleaved(approaches: dict, runs: int) -> dict[str, list[tuple[float, int]]]:
    """Each approach once per round, rounds repeated: noise hits all approaches alike."""
    results: dict[str, list[tuple[float, int]]] = {name: [] for name in approaches}
    for _ in range(runs):
        for name, fn in approaches.items():
            results[name].append(fn())
    return results


def table(results: dict[str, list[tuple[float, int]]], baseline: str) -> list[str]:
    base = statistics.median(w for w, _ in results[baseline])
    lines = [
        "| approach | wall time (median) | vs naive | peak RSS (median) | peak RSS (max) |",
        "|---|---|---|---|---|",
    ]
    for name, runs in results.items():
        wall = statistics.median(w for w, _ in runs)
        rss = [r for _, r in runs]
        lines.append(
            f"| {name} | {wall:.1f} s | {wall / base:.2f}x | {statistics.median(rss) / 2**20:.0f} "
            f"MiB | {max(rss) / 2**20:.0f} MiB |"
        )
    return lines


def machine() -> str:
    return f"{os.cpu_count()} CPU cores ({platform.machine()}), warm page cache"


def replace_section(name: str, body: str) -> None:
    """Rewrite the <!-- name:begin --> ... <!-- name:end --> part of docs/benchmarks.md."""
    path = ROOT / "docs" / "benchmarks.md"
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    text = path.read_text() if path.exists() else ""
    if begin in text:
        head, rest = text.split(begin, 1)
        text = head + begin + "\n" + body + "\n" + end + rest.split(end, 1)[1]
    else:
        text += f"\n{begin}\n{body}\n{end}\n"
    path.write_text(text)


def write_random_checkpoint(
    path: Path,
    specs: dict[str, tuple[str, tuple[int, ...]]],
    config: dict,
    shard_bytes: int,
    fixed: dict | None = None,
) -> None:
    """A synthetic checkpoint with random values, written with matcli's streaming writer.

    `specs` maps tensor names to (safetensors dtype, shape); `fixed` maps names to tensors
    given as they are (e.g. weight_shape). Skipped if `path` already holds a config.
    """
    import json

    import numpy as np
    import torch

    from matcli.checkpoint.writer import CheckpointWriter, OutputTensor, ShardLayout

    if (path / "config.json").exists():
        return
    rng = np.random.default_rng(0)
    fixed = fixed or {}

    def random_chunks(dtype: str, shape: tuple[int, ...], positive: bool = False):
        rows = max(1, (64 << 20) // max(1, int(np.prod(shape[1:])) * 4))
        for start in range(0, shape[0], rows):
            n = min(rows, shape[0] - start)
            if dtype == "I32":
                yield torch.from_numpy(
                    rng.integers(-(2**31), 2**31 - 1, size=(n, *shape[1:]), dtype=np.int32)
                )
            else:
                values = rng.standard_normal((n, *shape[1:]), dtype=np.float32) * 0.02
                # Scales are positive (slice refuses a zero, negative or non-finite one).
                values = np.abs(values) + 1e-4 if positive else values
                yield torch.from_numpy(values).to(torch.bfloat16)

    tensors = []
    for name in sorted({**specs, **fixed}):
        if name in fixed:
            t = fixed[name]
            tensors.append(
                OutputTensor(
                    name, {torch.int64: "I64"}[t.dtype], tuple(t.shape), lambda t=t: iter([t])
                )
            )
        else:
            dtype, shape = specs[name]
            tensors.append(
                OutputTensor(
                    name,
                    dtype,
                    shape,
                    lambda d=dtype, s=shape, n=name: random_chunks(d, s, n.endswith("_scale")),
                )
            )
    staging = path.with_name(path.name + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    writer = CheckpointWriter(staging, ShardLayout.plan(tensors, shard_bytes), {"format": "pt"})
    for t in tensors:
        writer.write_tensor(t)
    writer.finish()
    (staging / "config.json").write_text(json.dumps(config, indent=2))
    staging.rename(path)


def largest_tensor(folder: Path) -> int:
    from matcli.checkpoint.reader import ModelFolder

    with ModelFolder(folder) as f:
        return max(t.nbytes for t in f.tensors.values())


def qat_setup(args, **options):
    """(options, token windows, fake-quantized model on the CPU) of a QAT step benchmark:
    args.model, args.data, args.seq_len, args.batch_size; more QuantizeOptions as keywords."""
    import torch

    from matcli.options import QuantizeOptions
    from matcli.train.training import load_quant_model, training_windows

    torch.manual_seed(0)
    settings = dict(model=args.model, output=Path("/unused"), method="qat", data=args.data)
    quantize = QuantizeOptions(
        **settings, seq_len=args.seq_len, batch_size=args.batch_size, device="cpu", **options
    )
    windows = training_windows(quantize, quantize.model)
    return quantize, windows, load_quant_model(quantize, torch.device("cpu"))


def step_benchmark_args(children: list[str]):
    """The command line of a training-step benchmark (MODEL --data FILE ...); `--child` names
    the variant a child process measures."""
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("model", type=Path)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--child", choices=children)
    return parser.parse_args()
