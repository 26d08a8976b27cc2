"""`matcli slice --bits 2` against the naive approach and `cp`, side by side in one run.

    python benchmarks/slice_benchmark.py [--workdir /tmp/matcli-bench] [--runs 3] [--layers 6]

1. Generates a synthetic int8 parent (Llama-3-8B-shaped layers: hidden 4096, FFN 14336;
   a 1.05 GB bf16 embedding as the largest tensor; 2 GB shards), about 2.6 GB in all.
2. Times, in interleaved rounds, three ways to produce the int2 model:
   - matcli: `matcli slice PARENT --bits 2 -o OUT -q` (streamed, 32 MiB chunks);
   - naive: safetensors `load_file` of every shard, the same slice transform on whole
     tensors, `save_file` (benchmarks/naive_slice.py);
   - cp: `cp -r PARENT OUT` (the floor for touching every byte).
   Wall time and peak RSS (from wait4's rusage) of each child process; medians over runs.
3. Checks that matcli's and the naive output hold identical tensors, then rewrites the
   slice section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
HIDDEN, FFN, KV, VOCAB = 4096, 14336, 1024, 128256
SHARD_BYTES = 2_000_000_000


def generate_parent(path: Path, layers: int) -> None:
    """Random codes and scales in the parent layout matcli quantize writes."""
    if (path / "config.json").exists():
        return
    import torch

    from matcli.checkpoint.writer import CheckpointWriter, OutputTensor, ShardLayout

    rng = np.random.default_rng(0)

    def random_tensor(name: str, dtype: str, shape: tuple[int, ...]) -> OutputTensor:
        def chunks():
            rows = max(1, (64 << 20) // max(1, int(np.prod(shape[1:])) * 4))
            for start in range(0, shape[0], rows):
                n = min(rows, shape[0] - start)
                if dtype == "I32":
                    yield torch.from_numpy(rng.integers(-(2**31), 2**31 - 1, size=(n, *shape[1:]), dtype=np.int32))
                else:
                    yield (torch.rand((n, *shape[1:])) * 0.01 + 1e-3).to(torch.bfloat16)

        return OutputTensor(name, dtype, shape, chunks)

    tensors = []
    specs = {"model.embed_tokens.weight": ("BF16", (VOCAB, HIDDEN)), "model.norm.weight": ("BF16", (HIDDEN,))}
    for i in range(layers):
        p = f"model.layers.{i}."
        for proj, (out, inp) in {"gate_proj": (FFN, HIDDEN), "up_proj": (FFN, HIDDEN), "down_proj": (HIDDEN, FFN)}.items():
            specs[f"{p}mlp.{proj}.weight_packed"] = ("I32", (out, inp // 4))
            specs[f"{p}mlp.{proj}.weight_scale"] = ("BF16", (out, 1))
            specs[f"{p}mlp.{proj}.weight_shape"] = ("I64", (2,))
        for proj, out in {"q_proj": HIDDEN, "k_proj": KV, "v_proj": KV, "o_proj": HIDDEN}.items():
            specs[f"{p}self_attn.{proj}.weight"] = ("BF16", (out, HIDDEN))
        specs[f"{p}input_layernorm.weight"] = ("BF16", (HIDDEN,))
        specs[f"{p}post_attention_layernorm.weight"] = ("BF16", (HIDDEN,))
    for name in sorted(specs):
        dtype, shape = specs[name]
        if name.endswith("weight_shape"):
            out, inp = (HIDDEN, FFN) if "down_proj" in name else (FFN, HIDDEN)
            tensors.append(OutputTensor(name, "I64", (2,), lambda o=out, i=inp: iter([torch.tensor([o, i])])))
        else:
            tensors.append(random_tensor(name, dtype, shape))
    staging = path.with_name(path.name + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    writer = CheckpointWriter(staging, ShardLayout.plan(tensors, SHARD_BYTES), {"format": "pt"})
    for t in tensors:
        writer.write_tensor(t)
    writer.finish()
    config = {
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "hidden_size": HIDDEN,
        "intermediate_size": FFN,
        "num_hidden_layers": layers,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "vocab_size": VOCAB,
        "torch_dtype": "bfloat16",
        "quantization_config": {
            "quant_method": "compressed-tensors",
            "format": "pack-quantized",
            "quantization_status": "compressed",
            "config_groups": {
                "group_0": {
                    "targets": ["re:.*mlp\\.(gate|up|down)_proj$"],
                    "weights": {"num_bits": 8, "type": "int", "symmetric": True, "strategy": "channel", "group_size": None},
                }
            },
            "ignore": ["lm_head"],
        },
        "matcli": {"role": "parent", "parent_bits": 8, "scheme": "symmetric", "group_size": None, "trained_bits": [8, 4, 2], "method": "synthetic", "layers": "ffn"},
    }
    (staging / "config.json").write_text(json.dumps(config, indent=2))
    staging.rename(path)


def run(cmd: list[str]) -> tuple[float, int]:
    """Wall seconds and peak RSS bytes of one child process."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"benchmark command failed: {' '.join(cmd)}")
    return wall, usage.ru_maxrss * 1024


def tensors_equal(a: Path, b: Path) -> bool:
    """Same tensor names, and the same bytes for each, compared chunk by chunk."""
    from matcli.checkpoint.reader import ModelFolder

    with ModelFolder(a) as fa, ModelFolder(b) as fb:
        if set(fa.tensors) != set(fb.tensors):
            return False
        for name, info in fa.tensors.items():
            if info.nbytes != fb.tensors[name].nbytes:
                return False
            for start in range(0, info.nbytes, 64 << 20):
                stop = min(start + (64 << 20), info.nbytes)
                if fa.read_bytes(name, start, stop) != fb.read_bytes(name, start, stop):
                    return False
    return True


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/matcli-bench"))
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--layers", type=int, default=6)
    args = parser.parse_args()
    work = args.workdir
    parent = work / "parent"
    generate_parent(parent, args.layers)
    size = sum(p.stat().st_size for p in parent.glob("*.safetensors"))
    largest = max(t["nbytes"] for t in _tensor_sizes(parent))
    subprocess.run(["cat", *map(str, parent.glob("*.safetensors"))], stdout=subprocess.DEVNULL, check=True)

    matcli = [sys.executable, "-m", "matcli", "slice", str(parent), "--bits", "2", "-q", "--force", "-o"]
    naive = [sys.executable, str(ROOT / "benchmarks" / "naive_slice.py"), str(parent), "2"]
    approaches = {
        "matcli slice": lambda: run(matcli + [str(work / "out-matcli")]),
        "naive (load_file, transform, save_file)": lambda: run(naive + [str(work / "out-naive")]),
        "cp -r": lambda: _cp(parent, work / "out-cp"),
    }
    results: dict[str, list[tuple[float, int]]] = {name: [] for name in approaches}
    for _ in range(args.runs):
        for name, fn in approaches.items():
            results[name].append(fn())
    same = tensors_equal(work / "out-matcli", work / "out-naive")
    write_report(results, size, largest, args, same)


def _cp(src: Path, dst: Path) -> tuple[float, int]:
    shutil.rmtree(dst, ignore_errors=True)
    return run(["cp", "-r", str(src), str(dst)])


def _tensor_sizes(folder: Path) -> list[dict]:
    from matcli.checkpoint.reader import ModelFolder

    with ModelFolder(folder) as f:
        return [{"name": t.name, "nbytes": t.nbytes} for t in f.tensors.values()]


def write_report(results: dict, size: int, largest: int, args, same: bool) -> None:
    naive_wall = statistics.median(w for w, _ in results["naive (load_file, transform, save_file)"])
    lines = [
        f"Synthetic int8 parent: {size / 1e9:.2f} GB in {(size + SHARD_BYTES - 1) // SHARD_BYTES} shards, "
        f"{args.layers} Llama-3-8B-shaped layers, largest tensor {largest / 1e9:.2f} GB (the bf16 embedding). "
        f"Medians of {args.runs} interleaved runs on {os.cpu_count()} CPU cores ({platform.machine()}), warm page cache. "
        f"matcli's and the naive output tensors are {'identical' if same else 'DIFFERENT'}.",
        "",
        "| approach | wall time (median) | vs naive | peak RSS (median) | peak RSS (max) |",
        "|---|---|---|---|---|",
    ]
    for name, runs in results.items():
        wall = statistics.median(w for w, _ in runs)
        rss = [r for _, r in runs]
        lines.append(f"| {name} | {wall:.1f} s | {wall / naive_wall:.2f}x | {statistics.median(rss) / 2**20:.0f} MiB | {max(rss) / 2**20:.0f} MiB |")
    rss_bound = (largest + 300 * 2**20) / 2**20
    matcli_rss = max(r for _, r in results["matcli slice"]) / 2**20
    matcli_ratio = statistics.median(w for w, _ in results["matcli slice"]) / naive_wall
    lines += [
        "",
        f"Targets: wall time <= 1.0x naive: {'met' if matcli_ratio <= 1.0 else 'MISSED'} ({matcli_ratio:.2f}x); "
        f"peak RSS <= largest tensor + 300 MiB = {rss_bound:.0f} MiB: {'met' if matcli_rss <= rss_bound else 'MISSED'} ({matcli_rss:.0f} MiB).",
    ]
    table = "\n".join(lines)
    print(table)
    _replace_section(ROOT / "docs" / "benchmarks.md", "slice", table)


def _replace_section(path: Path, name: str, body: str) -> None:
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    text = path.read_text() if path.exists() else ""
    if begin in text:
        head, rest = text.split(begin, 1)
        text = head + begin + "\n" + body + "\n" + end + rest.split(end, 1)[1]
    else:
        text += f"\n{begin}\n{body}\n{end}\n"
    path.write_text(text)


if __name__ == "__main__":
    main()
