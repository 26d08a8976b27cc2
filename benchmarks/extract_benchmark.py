"""`matcli extract` against the MatFormer Lab notebook's approach and `cp`, in one run.

    python benchmarks/extract_benchmark.py [--workdir /tmp/matcli-bench] [--runs 3]

1. Generates a synthetic Gemma 3n text checkpoint (~2.9 GB, bf16): 10 layers of hidden 2048
   and FFN 8192 with Gemma 3n's layer types and KV sharing, and a 1.34 GB per-layer
   embedding (262144 x 10 x 256) as the largest tensor.
2. Extracts FFN width 4096 with layers 1 and 2 skipped, three ways, in interleaved rounds:
   matcli extract; the notebook's approach (benchmarks/naive_extract.py); cp -r.
3. Checks that matcli's and the notebook's tensors are identical, and rewrites the extract
   section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    ROOT,
    copy_tree,
    interleaved,
    largest_tensor,
    machine,
    replace_section,
    fresh_run,
    table,
    tensors_equal,
    warm,
    write_random_checkpoint,
)

LAYERS, HIDDEN, FFN, KV, PLE, PLE_VOCAB, VOCAB = 10, 2048, 8192, 512, 256, 262144, 65536
WIDTH, SKIP = 4096, "1,2"
NAIVE = "notebook (whole tensors, 4 GB shard dicts)"


def generate(path: Path) -> None:
    specs = {
        "model.embed_tokens.weight": ("BF16", (VOCAB, HIDDEN)),
        "model.embed_tokens_per_layer.weight": ("BF16", (PLE_VOCAB, LAYERS * PLE)),
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
        for norm in ("input_layernorm", "post_attention_layernorm", "pre_feedforward_layernorm", "post_feedforward_layernorm"):
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
        "vocab_size_per_layer_input": PLE_VOCAB,
        "num_kv_shared_layers": 4,
        "layer_types": (["sliding_attention"] * 4 + ["full_attention"]) * 2,
        "activation_sparsity_pattern": [0.95] * 4 + [0.0] * 6,
        "torch_dtype": "bfloat16",
    }
    write_random_checkpoint(path, specs, config, shard_bytes=2_000_000_000)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/matcli-bench"))
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    work = args.workdir
    model = work / "gemma3n-synthetic"
    generate(model)
    size = sum(p.stat().st_size for p in model.glob("*.safetensors"))
    largest = largest_tensor(model)
    matcli = [sys.executable, "-m", "matcli", "extract", str(model), "--ffn-config", str(WIDTH), "--skip-layers", SKIP, "-q", "-o"]
    naive = [sys.executable, str(ROOT / "benchmarks" / "naive_extract.py"), str(model)]
    approaches = {
        "matcli extract": lambda: fresh_run(work / "extract-matcli", matcli + [str(work / "extract-matcli")]),
        NAIVE: lambda: fresh_run(work / "extract-naive", naive + [str(work / "extract-naive"), str(WIDTH), SKIP]),
        "cp -r": lambda: copy_tree(model, work / "extract-cp"),
    }
    warm(model)
    results = interleaved(approaches, args.runs)
    same = tensors_equal(work / "extract-matcli", work / "extract-naive")
    lines = [
        f"Synthetic Gemma 3n text checkpoint: {size / 1e9:.2f} GB (bf16), {LAYERS} layers of hidden {HIDDEN} and FFN {FFN}, "
        f"largest tensor {largest / 1e9:.2f} GB (the per-layer embedding). Extraction: FFN width {WIDTH}, layers {SKIP} skipped. "
        f"Medians of {args.runs} interleaved runs on {machine()}. "
        f"matcli's and the notebook's output tensors are {'identical' if same else 'DIFFERENT'}.",
        "",
        *table(results, NAIVE),
    ]
    ratio = statistics.median(w for w, _ in results["matcli extract"]) / statistics.median(w for w, _ in results[NAIVE])
    rss = max(r for _, r in results["matcli extract"]) / 2**20
    lines += [
        "",
        f"Targets: wall time <= 1.0x the notebook: {'met' if ratio <= 1.0 else 'MISSED'} ({ratio:.2f}x); "
        f"peak RSS <= 512 MiB: {'met' if rss <= 512 else 'MISSED'} ({rss:.0f} MiB).",
    ]
    body = "\n".join(lines)
    print(body)
    replace_section("extract", body)


if __name__ == "__main__":
    main()
