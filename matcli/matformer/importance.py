"""Neuron importance for models not trained as MatFormers (`--reorder`, `matcli reorder`).

A layer's FFN is a sum over hidden neurons j of down[:, j] * h_j(x), with h the input of the
down projection. Neuron j's importance is E|h_j| * ||down[:, j]||_2 over calibration tokens:
the average size of its contribution to the layer's output. Keeping the most important
neurons (instead of the first ones) is what makes a prefix cut of a dense model usable.
"""

from __future__ import annotations

from pathlib import Path

import torch

from matcli.arch import Architecture, resolve
from matcli.checkpoint.nonfinite import check_finite
from matcli.errors import MatcliError


@torch.no_grad()
def neuron_importance(
    model_path: Path, data: Path, seq_len: int, max_tokens: int
) -> dict[int, torch.Tensor]:
    """{layer: importance per FFN neuron}, measured with stock transformers on `data`."""
    from transformers import AutoTokenizer

    from matcli.data import read_texts, token_windows
    from matcli.evaluate import pretrained

    windows = token_windows(
        AutoTokenizer.from_pretrained(model_path), read_texts(data), seq_len, max_tokens
    )
    model = pretrained(model_path)
    arch = resolve(model.config.to_dict(), [n for n, _ in model.named_parameters()])
    _check_ffn_finite(model, arch)
    sums: dict[int, torch.Tensor] = {}
    downs: dict[int, torch.nn.Module] = {}
    hooks = []
    for name, module in model.named_modules():
        split = arch.split_layer(name + ".")
        if split and split[1].removesuffix(".") == arch.family.ffn.down:
            layer = split[0]
            downs[layer] = module

            def accumulate(mod, inputs, layer=layer):
                h = inputs[0].detach().float().abs().reshape(-1, inputs[0].shape[-1]).sum(0)
                sums[layer] = sums.get(layer, 0) + h

            hooks.append(module.register_forward_pre_hook(accumulate))
    if not downs:
        raise MatcliError(
            f"found no {arch.family.ffn.down} modules in {model_path}; cannot measure neuron "
            "importance"
        )
    for batch in windows.split(4):
        model(batch)
    for hook in hooks:
        hook.remove()
    return {layer: sums[layer] * downs[layer].weight.float().norm(dim=0) for layer in sorted(downs)}


def _check_ffn_finite(model, arch: Architecture) -> None:
    """NaN or inf in an FFN weight would rank neurons by garbage: refused with the tensor's
    name and the count, on the weights already in memory (no extra read of the files)."""
    ffn = arch.family.ffn
    relative = {f"{n}.weight" for n in (ffn.gate, ffn.up, ffn.down, ffn.fused_gate_up) if n}
    for name, weight in model.named_parameters():
        split = arch.split_layer(name)
        if split and split[1] in relative:
            check_finite(weight, name, action="rank neurons with")


def neuron_ranking(
    model_path: Path, data: Path, seq_len: int, max_tokens: int
) -> dict[int, list[int]]:
    """{layer: neuron indices, most important first} (ties keep index order)."""
    importance = neuron_importance(model_path, data, seq_len, max_tokens)
    return {
        layer: torch.sort(score, descending=True, stable=True).indices.tolist()
        for layer, score in importance.items()
    }
