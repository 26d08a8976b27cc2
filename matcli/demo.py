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
