"""`matcli quantize --method omniquant`: MatQuant on OmniQuant's block-wise calibration.

The weights stay frozen. Block by block (a decoder layer: attention then FFN), learnable
weight clipping (LWC: per-channel/group factors sigmoid(gamma), sigmoid(beta) on the MinMax
range) and a learnable equivalent transformation (LET: a per-input-channel scale s on each FFN
projection, W -> W * s, x -> x / s) are trained to minimise

    sum over r in R of lambda_r * MSE(block_r(X_q), block_fp(X_fp)),

the multi-width version (paper Eq. 7) of OmniQuant's objective. As in OmniQuant, each block's
target is the full-precision block on full-precision inputs, and the quantized block reads the
quantized model's propagated inputs.

Choices the paper leaves open, and matcli's answers:
- Which propagated input each width reads: one stream for all widths, produced by the block at
  the parent width c (MatQuant-Omni does the same); per-width streams would multiply memory by |R|.
- LET shift: the shift delta needs a bias on the projection and on the norm before it; Llama-,
  Mistral-, Qwen- and Gemma-family FFNs and RMSNorms have none, so a shift could not be stored in
  a checkpoint stock transformers loads. matcli learns the LET scale only (delta = 0).
- Folding: the gate/up input scale goes into the FFN input norm's weight (family data:
  `ffn_input_norm`, `norm_offset`); the down-projection input scale goes into the up
  projection's per-row quantization scales (exact: per-row scaling commutes with MinMax codes).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from matcli.devices import pick_device
from matcli.options import QuantizeOptions
from matcli.train.fakequant import FakeQuantLinear, at_bits
from matcli.train.registry import Progress
from matcli.train.training import (
    QuantModel,
    decoder_layers,
    load_quant_model,
    training_windows,
    unwrapped_state,
)

LWC_LR = 1e-2  # OmniQuant's default for the clipping factors; MatQuant: constant 1e-3 overall


class Captured:
    """Each layer's call arguments (but the hidden states) for each calibration sample."""

    def __init__(self, layers: nn.ModuleList):
        self.calls: list[list[tuple[tuple, dict]]] = [[] for _ in layers]
        self.first_inputs: list[torch.Tensor] = []
        self.handles = [
            layer.register_forward_pre_hook(self._hook(i), with_kwargs=True)
            for i, layer in enumerate(layers)
        ]

    def _hook(self, index: int):
        def hook(module, args, kwargs):
            hidden = args[0] if args else kwargs["hidden_states"]
            if index == 0:
                self.first_inputs.append(hidden.detach())
            rest = args[1:] if args else ()
            kwargs = {k: v for k, v in kwargs.items() if k != "hidden_states"}
            self.calls[index].append((rest, kwargs))

        return hook

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def _run(layer: nn.Module, hidden: torch.Tensor, call: tuple[tuple, dict]) -> torch.Tensor:
    args, kwargs = call
    out = layer(hidden, *args, **kwargs)
    return out[0] if isinstance(out, tuple) else out


def _layer_modules(qm: QuantModel, index: int) -> dict[str, FakeQuantLinear]:
    return {name: fq for name, fq in qm.wrapped.items() if qm.arch.split_layer(name)[0] == index}


def _enable(qm: QuantModel, modules: dict[str, FakeQuantLinear], let: bool) -> tuple[list, list]:
    """Turn on LWC for every quantized Linear of the layer, LET for its FFN projections."""
    ffn = qm.arch.family.ffn
    clips, scales = [], []
    for fq in modules.values():
        fq.enable_lwc()
        clips += [p for p in (fq.clip_high, fq.clip_low) if p is not None]
    if not let or qm.arch.family.ffn_input_norm is None:
        return clips, scales
    by_relative = {qm.arch.split_layer(name)[1]: fq for name, fq in modules.items()}
    shared = [by_relative[n] for n in (ffn.gate, ffn.up) if n in by_relative]
    if shared and ffn.up in by_relative:
        shared[0].enable_let()
        for fq in shared[1:]:
            fq.input_scale = shared[0].input_scale  # gate and up read the same input
        scales.append(shared[0].input_scale)
    if ffn.down in by_relative and ffn.up in by_relative:
        by_relative[ffn.down].enable_let()
        scales.append(by_relative[ffn.down].input_scale)
    return clips, scales


def planned_work(options: QuantizeOptions, windows: int) -> dict:
    """What a calibration would do, for the dry run."""
    samples = min(options.samples, windows)
    return {
        "tokens_to_train": samples * options.seq_len * options.epochs,
        "samples": samples,
        "epochs": options.epochs,
    }


def train(
    options: QuantizeOptions, progress: Progress = lambda done, total, losses: None
) -> tuple[QuantModel, dict[int, float], dict]:
    """Calibrate block by block; (QuantModel, the last block's MSE per width, report)."""
    device = pick_device(options.device)
    torch.manual_seed(options.seed)
    windows = training_windows(options, options.model)  # a bad --data before the model loads
    qm = load_quant_model(options, device)
    for p in qm.model.parameters():
        p.requires_grad_(False)
    order = torch.randperm(len(windows), generator=torch.Generator().manual_seed(options.seed))
    samples = windows[order[: options.samples]]
    layers = decoder_layers(qm)
    captured = _capture(qm, layers, samples.to(device))
    fp_inputs = captured.first_inputs
    q_inputs = [x.clone() for x in fp_inputs]
    history: dict[int, float] = {}
    for index, layer in enumerate(layers):
        calls = captured.calls[index]
        with torch.no_grad():
            targets = [_run(layer, x, call) for x, call in zip(fp_inputs, calls)]
        losses, q_inputs = _calibrate_layer(qm, index, layer, q_inputs, targets, calls, options)
        history = losses if losses is not None else history  # a layer with nothing to train
        fp_inputs = targets
        progress(index + 1, len(layers), history)
    report = {
        "samples": len(samples),
        "seq_len": options.seq_len,
        "epochs": options.epochs,
        "tokens_seen": len(samples) * options.seq_len * options.epochs,
        "final_block_mse": {f"int{b}": round(v, 8) for b, v in history.items()},
        "propagation": f"one stream, quantized block at int{options.bits}",
        "let": "scale only" if options.let else "off",
    }
    return qm, history, report


def _capture(qm: QuantModel, layers: nn.ModuleList, samples: torch.Tensor) -> Captured:
    """Every layer's call arguments, and the first layer's inputs, for each sample."""
    captured = Captured(layers)
    with torch.no_grad():
        for sample in samples.split(1):
            qm.model(input_ids=sample)
    captured.remove()
    return captured


def _calibrate_layer(
    qm: QuantModel,
    index: int,
    layer: nn.Module,
    q_inputs: list[torch.Tensor],
    targets: list[torch.Tensor],
    calls: list[tuple[tuple, dict]],
    options: QuantizeOptions,
) -> tuple[dict[int, float] | None, list[torch.Tensor]]:
    """Train layer `index` if it has quantized Linears (its final MSE per width, else None),
    then propagate the quantized stream through it at the parent width."""
    modules = _layer_modules(qm, index)
    if not modules:
        with torch.no_grad():
            return None, [_run(layer, x, call) for x, call in zip(q_inputs, calls)]
    weights = dict(zip(options.train_bits, options.loss_weights))
    history = _train_layer(layer, modules, qm, q_inputs, targets, calls, weights, options)
    with torch.no_grad(), at_bits(modules, options.bits):
        q_inputs = [_run(layer, x, call) for x, call in zip(q_inputs, calls)]
    for fq in modules.values():
        for p in fq.parameters(recurse=False):
            p.requires_grad_(False)
    return history, q_inputs


def _train_layer(
    layer,
    modules,
    qm,
    q_inputs,
    targets,
    calls,
    weights: dict[int, float],
    options: QuantizeOptions,
) -> dict[int, float]:
    clips, scales = _enable(qm, modules, options.let)
    groups = [{"params": clips, "lr": options.lr or LWC_LR}]
    if scales:
        groups.append({"params": scales, "lr": options.let_lr})
    optimizer = torch.optim.AdamW(groups, weight_decay=0.0)
    last: dict[int, float] = {}
    generator = torch.Generator().manual_seed(options.seed)
    for _ in range(options.epochs):
        sums = {b: 0.0 for b in weights}
        for i in torch.randperm(len(q_inputs), generator=generator).tolist():
            total = 0.0
            for bits, weight in weights.items():
                with at_bits(modules, bits):
                    loss = F.mse_loss(
                        _run(layer, q_inputs[i], calls[i]).float(), targets[i].float()
                    )
                total = total + weight * loss
                sums[bits] += loss.item() / len(q_inputs)
            optimizer.zero_grad(set_to_none=True)
            total.backward()
            optimizer.step()
            with torch.no_grad():
                for s in scales:
                    s.clamp_(min=1e-2)  # keep the transformation invertible
        last = sums
    return last


def export_inputs(qm: QuantModel) -> tuple[dict, dict]:
    """Codes of the LET-transformed weights with the LET scales folded into the checkpoint:
    gate/up input scales into the FFN input norm, down input scales into up's row scales."""
    ffn, family = qm.arch.family.ffn, qm.arch.family
    quantized = {name: fq.export() for name, fq in qm.wrapped.items()}
    state = unwrapped_state(qm)
    dense: dict[str, torch.Tensor] = {}
    for name, fq in qm.wrapped.items():
        if fq.input_scale is None:
            continue
        layer, relative = qm.arch.split_layer(name)
        s = fq.input_scale.detach().float().cpu()
        if relative == ffn.down:
            up = qm.arch.layer_name(layer, ffn.up)
            codes, scale, zero = quantized[up]
            quantized[up] = (codes, (scale.float() / s[:, None]).to(scale.dtype), zero)
        elif relative == ffn.up:
            norm = qm.arch.layer_name(layer, family.ffn_input_norm + ".weight")
            weight = state[norm].float().cpu()
            dense[norm] = (weight + family.norm_offset) / s - family.norm_offset
    return quantized, dense
