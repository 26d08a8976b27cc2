"""`matcli slice --bits 2` against the naive approach and `cp`, side by side in one run.

    python benchmarks/slice_benchmark.py [--workdir /tmp/matcli-bench] [--runs 3] [--layers 6]

1. Generates a synthetic int8 parent (Llama-3-8B-shaped layers: hidden 4096, FFN 14336;
   a 1.05 GB bf16 embedding as the largest tensor; 2 GB shards), about 2.6 GB in all.
2. Times, in interleaved rounds, three ways to produce the int2 model:
   - matcli: `matcli slice PARENT --bits 2 -o OUT -q` (streamed, 32 MiB chunks);
   - naive: safetensors `load_file` of every shard, the same slice transform on whole
     tensors, `save_file` (benchmarks/naive_slice.py);
   - cp: `cp -r PARENT OUT` (the floor for touching every byte; the slice's target is 2x);
   - matcli with `--format dense` (bf16 weights, 2x the bytes of the int8 input for the FFN):
     no naive counterpart, measured for its peak memory.
   Wall time and peak RSS (from wait4's rusage) of each child process; medians over runs.
3. Checks that matcli's and the naive output hold identical tensors, then rewrites the
   slice section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (
    ROOT,
    copy_tree,
    fresh_run,
    interleaved,
    largest_tensor,
    machine,
    replace_section,
    tensors_equal,
    warm,
    write_random_checkpoint,
)

MATCLI = "matcli slice"
NAIVE = "naive (load_file, transform, save_file)"
CP = "cp -r"
DENSE = "matcli slice --format dense"
# Targets: at most twice the time of copying the parent, at most 329 MiB of peak memory.
CP_TARGET = 2.0
RSS_TARGET_MIB = 329
HIDDEN, FFN, KV, VOCAB = 4096, 14336, 1024, 128256
SHARD_BYTES = 2_000_000_000


def generate_parent(path: Path, layers: int) -> None:
    """Random codes and scales in the parent layout matcli quantize writes."""
    import torch

    specs: dict[str, tuple[str, tuple[int, ...]]] = {
        "model.embed_tokens.weight": ("BF16", (VOCAB, HIDDEN)),
        "model.norm.weight": ("BF16", (HIDDEN,)),
    }
    shapes = {}
    for i in range(layers):
        p = f"model.layers.{i}."
        for proj, (out, inp) in {
            "gate_proj": (FFN, HIDDEN),
            "up_proj": (FFN, HIDDEN),
            "down_proj": (HIDDEN, FFN),
        }.items():
            specs[f"{p}mlp.{proj}.weight_packed"] = ("I32", (out, inp // 4))
            specs[f"{p}mlp.{proj}.weight_scale"] = ("BF16", (out, 1))
            shapes[f"{p}mlp.{proj}.weight_shape"] = torch.tensor([out, inp])
        for proj, out in {"q_proj": HIDDEN, "k_proj": KV, "v_proj": KV, "o_proj": HIDDEN}.items():
            specs[f"{p}self_attn.{proj}.weight"] = ("BF16", (out, HIDDEN))
        specs[f"{p}input_layernorm.weight"] = ("BF16", (HIDDEN,))
        specs[f"{p}post_attention_layernorm.weight"] = ("BF16", (HIDDEN,))
    write_random_checkpoint(path, specs, parent_config(layers), SHARD_BYTES, fixed=shapes)


def parent_config(layers: int) -> dict:
    """config.json of an int8 channel-wise symmetric parent of the FFN, as quantize writes it."""
    return {
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
                    "weights": {
                        "num_bits": 8,
                        "type": "int",
                        "symmetric": True,
                        "strategy": "channel",
                        "group_size": None,
                    },
                }
            },
            "ignore": ["lm_head"],
        },
        "matcli": {
            "role": "parent",
            "parent_bits": 8,
            "scheme": "symmetric",
            "group_size": None,
            "trained_bits": [8, 4, 2],
            "method": "synthetic",
            "layers": "ffn",
        },
    }


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
    largest = largest_tensor(parent)

    matcli = [sys.executable, "-m", "matcli", "slice", str(parent), "--bits", "2", "-q", "-o"]
    naive = [sys.executable, str(ROOT / "benchmarks" / "naive_slice.py"), str(parent), "2"]
    approaches = {
        MATCLI: lambda: fresh_run(work / "out-matcli", matcli + [str(work / "out-matcli")]),
        NAIVE: lambda: fresh_run(work / "out-naive", naive + [str(work / "out-naive")]),
        CP: lambda: copy_tree(parent, work / "out-cp"),
        DENSE: lambda: fresh_run(
            work / "out-dense",
            matcli[:-2] + ["--format", "dense", "-q", "-o", str(work / "out-dense")],
        ),
    }
    warm(parent)
    results = interleaved(approaches, args.runs)
    same = tensors_equal(work / "out-matcli", work / "out-naive")
    write_report(results, size, largest, args, same)


def write_report(results: dict, size: int, largest: int, args, same: bool) -> None:
    shards = (size + SHARD_BYTES - 1) // SHARD_BYTES
    lines = [
        f"Synthetic int8 parent: {size / 1e9:.2f} GB in {shards} shards, {args.layers} "
        f"Llama-3-8B-shaped layers, largest tensor {largest / 1e9:.2f} GB (the bf16 embedding). "
        f"Medians of {args.runs} interleaved runs on {machine()}. "
        f"matcli's and the naive output tensors are {'identical' if same else 'DIFFERENT'}.",
        "",
        *ratio_table(results, [CP, NAIVE]),
    ]
    wall = {name: statistics.median(w for w, _ in runs) for name, runs in results.items()}
    vs_cp, vs_naive = wall[MATCLI] / wall[CP], wall[MATCLI] / wall[NAIVE]
    rss = max(r for _, r in results[MATCLI]) / 2**20
    dense_rss = max(r for _, r in results[DENSE]) / 2**20
    dense_bound = (largest + 300 * 2**20) / 2**20
    lines += [
        "",
        f"Targets of `matcli slice`: wall time <= {CP_TARGET}x `cp -r`: "
        f"{met(vs_cp <= CP_TARGET)} ({vs_cp:.2f}x); <= 1.0x naive: {met(vs_naive <= 1.0)} "
        f"({vs_naive:.2f}x); peak RSS <= {RSS_TARGET_MIB} MiB: {met(rss <= RSS_TARGET_MIB)} "
        f"({rss:.0f} MiB). `--format dense` (imports torch, writes bf16 weights): peak RSS <= "
        f"largest tensor + 300 MiB = {dense_bound:.0f} MiB: {met(dense_rss <= dense_bound)} "
        f"({dense_rss:.0f} MiB).",
    ]
    body = "\n".join(lines)
    print(body)
    replace_section("slice", body)


def met(ok: bool) -> str:
    return "met" if ok else "MISSED"


def ratio_table(results: dict[str, list[tuple[float, int]]], baselines: list[str]) -> list[str]:
    """Median wall time and peak RSS of each approach, with its ratio to each baseline."""
    base = {b: statistics.median(w for w, _ in results[b]) for b in baselines}
    lines = [
        "| approach | wall time (median) | "
        + "".join(f"vs {b.split(' (')[0]} | " for b in baselines)
        + "peak RSS (median) | peak RSS (max) |",
        "|---|---|" + "---|" * len(baselines) + "---|---|",
    ]
    for name, runs in results.items():
        wall = statistics.median(w for w, _ in runs)
        rss = [r for _, r in runs]
        ratios = "".join(f"{wall / base[b]:.2f}x | " for b in baselines)
        lines.append(
            f"| {name} | {wall:.2f} s | {ratios}{statistics.median(rss) / 2**20:.0f} MiB | "
            f"{max(rss) / 2**20:.0f} MiB |"
        )
    return lines


if __name__ == "__main__":
    main()
