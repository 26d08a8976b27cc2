"""`matcli demo`: the whole slice pipeline on a tiny Llama built here, checked end to end.

Builds a 4-layer Llama with fixed random weights (seed 0), runs `matcli quantize --method
rtn`, `matcli slice --bits 4` and `--bits 2` through the real command line, loads every
artifact with stock transformers, and reports sizes and quality against the dense model.
"""

from __future__ import annotations

from pathlib import Path

import torch


def build_tiny_llama(path: Path, seed: int = 0) -> None:
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(
        vocab_size=512,
        hidden_size=256,
        intermediate_size=768,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.save_pretrained(path)


def compare(dense_logits: torch.Tensor, logits: torch.Tensor) -> tuple[float, float]:
    """Top-1 agreement with the dense model and mean KL(dense || variant) per token."""
    agree = (dense_logits.argmax(-1) == logits.argmax(-1)).float().mean().item()
    p = torch.log_softmax(dense_logits.double(), -1)
    q = torch.log_softmax(logits.double(), -1)
    kl = (p.exp() * (p - q)).sum(-1).mean().item()
    return agree, kl


def ffn_error(dense: dict[str, torch.Tensor], variant: dict[str, torch.Tensor]) -> float:
    """Relative Frobenius error of the FFN weights: ||W - W_q|| / ||W||."""
    num = den = 0.0
    for name, w in dense.items():
        if ".mlp." in name and name.endswith(".weight"):
            num += (w.double() - variant[name].double()).pow(2).sum().item()
            den += w.double().pow(2).sum().item()
    return (num / den) ** 0.5


ARTIFACTS = ("dense", "parent-int8", "int4", "int2")


def commands(workdir: Path) -> list[list[str]]:
    """The matcli command lines the demo runs, as a user would type them."""
    parent = str(workdir / "parent-int8")
    return [
        ["quantize", str(workdir / "dense"), "-o", parent, "--method", "rtn", "-q"],
        ["slice", parent, "--bits", "4", "-o", str(workdir / "int4"), "-q"],
        ["slice", parent, "--bits", "2", "-o", str(workdir / "int2"), "-q"],
    ]


def measure(workdir: Path) -> list[dict]:
    """Each artifact loaded by stock transformers, against the dense model and against
    matcli's own dequantized weights."""
    from matcli.checkpoint.reader import ModelFolder

    torch.manual_seed(1)
    tokens = torch.randint(0, 512, (4, 64))
    with ModelFolder(workdir / "dense") as f:
        dense_weights = {n: f.read(n) for n in f.tensors}
    rows, dense_logits = [], None
    for name in ARTIFACTS:
        logits, reference_logits, reference = _loaded_and_reference(
            workdir / name, workdir / "dense", tokens
        )
        dense_logits = logits if dense_logits is None else dense_logits
        agree, kl = compare(dense_logits, logits)
        rows.append(
            {
                "model": name,
                "size": sum(p.stat().st_size for p in (workdir / name).rglob("*") if p.is_file()),
                "ffn_error": ffn_error(dense_weights, reference),
                "top1_agree": agree,
                "kl": kl,
                "mismatch": (reference_logits - logits).abs().max().item(),
            }
        )
    return rows


def _loaded_and_reference(folder: Path, dense: Path, tokens: torch.Tensor):
    """Logits of `folder` loaded by transformers; logits of the dense architecture carrying
    matcli's dequantized weights of `folder`; those weights."""
    from transformers import AutoModelForCausalLM

    from matcli.checkpoint.reader import ModelFolder
    from matcli.quant.reference import dequantized_state_dict

    with _quiet_stderr():
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
        reference_model = AutoModelForCausalLM.from_pretrained(dense, dtype=torch.float32)
    with ModelFolder(folder) as f:
        reference = dequantized_state_dict(f)
    reference_model.load_state_dict(reference, strict=True)
    with torch.no_grad():
        return model(tokens).logits, reference_model(tokens).logits, reference


def _quiet_stderr():
    """compressed-tensors draws progress bars with disable=False hard-coded; hide them."""
    import contextlib
    import io

    return contextlib.redirect_stderr(io.StringIO())
