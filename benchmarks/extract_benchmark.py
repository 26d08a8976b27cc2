"""`matcli extract` against the MatFormer Lab notebook's approach and `cp`, in one run, on two
checkpoints whose largest tensor differs by 2x (peak RSS must not depend on it).

    python benchmarks/extract_benchmark.py [--workdir /tmp/matcli-bench-extract] [--runs 3]

For each of two synthetic Gemma 3n text checkpoints (bf16, 10 layers of hidden 2048 and FFN
8192 with Gemma 3n's layer types and KV sharing), whose largest tensor is the per-layer
embedding with 262,144 rows (1.34 GB, E4B's vocabulary) or 524,288 rows (2.68 GB):
1. generates it (~2.9 GB and ~4.2 GB);
2. extracts FFN width 4096 with layers 1 and 2 skipped, three ways, in interleaved rounds:
   matcli extract; the notebook's approach (benchmarks/naive_extract.py); cp -r;
3. checks that matcli's and the notebook's tensors are identical, then deletes the
   checkpoint and the outputs.
Both tables go into the extract section of docs/benchmarks.md.
"""

import argparse
import shutil
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
    table,
    tensors_equal,
    warm,
    write_random_checkpoint,
)

LAYERS, HIDDEN, FFN, KV, PLE, VOCAB = 10, 2048, 8192, 512, 256, 65536
PLE_VOCABS = (262144, 524288)  # rows of the per-layer embedding: 1.34 GB, then 2.68 GB
WIDTH, SKIP = 4096, "1,2"
NAIVE = "notebook (whole tensors, 4 GB shard dicts)"


def generate(path: Path, ple_vocab: int) -> None:
    specs = {
        "model.embed_tokens.weight": ("BF16", (VOCAB, HIDDEN)),
        "model.embed_tokens_per_layer.weight": ("BF16", (ple_vocab, LAYERS * PLE)),
        "model.per_layer_model_projection.weight": ("BF16", (LAYERS * PLE, HIDDEN)),
        "model.per_layer_projection_norm.weight": ("BF16", (PLE,)),
        "model.norm.weight": ("BF16", (HIDDEN,)),
    }
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        specs[p + "mlp.gate_proj.weight"] = ("BF16", (FFN, HIDDEN))
        specs[p + "mlp.up_proj.weight"] = ("BF16", (FFN, HIDDEN))
        specs[p + "mlp.down_proj.weight"] = ("BF16", (HIDDEN, FFN))
        for proj, out in {"q_proj": HIDDEN, "k_proj": KV, "v_proj": KV, "o_proj": HIDDEN}.items():
            specs[f"{p}self_attn.{proj}.weight"] = ("BF16", (out, HIDDEN))
        for norm in (
            "input_layernorm",
            "post_attention_layernorm",
            "pre_feedforward_layernorm",
            "post_feedforward_layernorm",
        ):
            specs[f"{p}{norm}.weight"] = ("BF16", (HIDDEN,))
        specs[p + "per_layer_input_gate.weight"] = ("BF16", (PLE, HIDDEN))
        specs[p + "per_layer_projection.weight"] = ("BF16", (HIDDEN, PLE))
    config = {
        "model_type": "gemma3n_text",
        "architectures": ["Gemma3nForCausalLM"],
        "num_hidden_layers": LAYERS,
        "hidden_size": HIDDEN,
        "intermediate_size": [FFN] * LAYERS,
        "hidden_size_per_layer_input": PLE,
        "vocab_size": VOCAB,
        "vocab_size_per_layer_input": ple_vocab,
        "num_kv_shared_layers": 4,
        "layer_types": (["sliding_attention"] * 4 + ["full_attention"]) * 2,
        "activation_sparsity_pattern": [0.95] * 4 + [0.0] * 6,
        "torch_dtype": "bfloat16",
    }
    write_random_checkpoint(path, specs, config, shard_bytes=2_000_000_000)


def checkpoint_path(work: Path, ple_vocab: int) -> Path:
    return work / f"gemma3n-synthetic-ple{ple_vocab}"


def measure(work: Path, ple_vocab: int, runs: int) -> dict:
    """Time the three approaches on one generated checkpoint, then delete it and the outputs."""
    model = checkpoint_path(work, ple_vocab)
    outputs = {name: work / f"extract-{name}" for name in ("matcli", "naive", "cp")}
    matcli = [
        sys.executable,
        "-m",
        "matcli",
        "extract",
        str(model),
        "--ffn-config",
        str(WIDTH),
        "--skip-layers",
        SKIP,
        "-q",
        "-o",
        str(outputs["matcli"]),
    ]
    naive = [
        sys.executable,
        str(ROOT / "benchmarks" / "naive_extract.py"),
        str(model),
        str(outputs["naive"]),
        str(WIDTH),
        SKIP,
    ]
    approaches = {
        "matcli extract": lambda: fresh_run(outputs["matcli"], matcli),
        NAIVE: lambda: fresh_run(outputs["naive"], naive),
        "cp -r": lambda: copy_tree(model, outputs["cp"]),
    }
    warm(model)
    results = interleaved(approaches, runs)
    measured = {
        "size": sum(p.stat().st_size for p in model.glob("*.safetensors")),
        "largest": largest_tensor(model),
        "same": tensors_equal(outputs["matcli"], outputs["naive"]),
        "results": results,
        "ratio": statistics.median(w for w, _ in results["matcli extract"])
        / statistics.median(w for w, _ in results[NAIVE]),
        "rss": max(r for _, r in results["matcli extract"]) / 2**20,
    }
    for folder in (model, *outputs.values()):
        shutil.rmtree(folder, ignore_errors=True)
    return measured


def section(m: dict, ple_vocab: int) -> list[str]:
    return [
        f"**Largest tensor {m['largest'] / 1e9:.2f} GB** (the per-layer embedding, {ple_vocab:,} "
        f"x {LAYERS} x {PLE}); "
        f"checkpoint {m['size'] / 1e9:.2f} GB. matcli's and the notebook's output tensors are "
        f"{'identical' if m['same'] else 'DIFFERENT'}.",
        "",
        *table(m["results"], NAIVE),
        "",
    ]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/matcli-bench-extract"))
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    measured = {}
    for vocab in PLE_VOCABS:  # one checkpoint on disk at a time
        generate(checkpoint_path(args.workdir, vocab), vocab)
        measured[vocab] = measure(args.workdir, vocab, args.runs)
    lines = [
        f"Synthetic Gemma 3n text checkpoints (bf16), {LAYERS} layers of hidden {HIDDEN} and FFN "
        f"{FFN}, that differ only in the "
        f"rows of the per-layer embedding, their largest tensor. Extraction: FFN width {WIDTH}, "
        f"layers {SKIP} skipped. "
        f"Medians of {args.runs} interleaved runs per checkpoint on {machine()}.",
        "",
    ]
    for vocab, m in measured.items():
        lines += section(m, vocab)
    small, large = (measured[v] for v in PLE_VOCABS)
    ratios = ", ".join(f"{m['ratio']:.2f}x" for m in measured.values())
    lines.append(
        "Targets: wall time <= 1.0x the notebook: "
        f"{'met' if max(m['ratio'] for m in measured.values()) <= 1.0 else 'MISSED'} ({ratios}); "
        "peak RSS <= 512 MiB regardless of the largest tensor: "
        f"{'met' if max(small['rss'], large['rss']) <= 512 else 'MISSED'} "
        f"({small['rss']:.0f} MiB with {small['largest'] / 1e9:.2f} GB, {large['rss']:.0f} MiB "
        f"with {large['largest'] / 1e9:.2f} GB; "
        f"the notebook's grows by {_naive_growth(small, large):.0f} MiB)."
    )
    body = "\n".join(lines)
    print(body)
    replace_section("extract", body)


def _naive_growth(small: dict, large: dict) -> float:
    return (
        max(r for _, r in large["results"][NAIVE]) - max(r for _, r in small["results"][NAIVE])
    ) / 2**20


if __name__ == "__main__":
    main()
