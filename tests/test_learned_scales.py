"""`quantize --method qat --learn-scales`: LSQ's gradient against autograd's, the loss falling
with the scales alone, scales positive and exactly bf16, the exported parent slicing to exactly
the trained model at every width, --resume keeping the scales, and bad input refused."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import pytest
import torch
from conftest import assert_refused, build_llama, run_matcli
from safetensors.torch import load_file, save_file
from test_training import qat_args, qat_options

from matcli.quant import grid
from matcli.quant.ct_format import WeightScheme
from matcli.train.fakequant import FakeQuantLinear, fake_codes, fake_slice

MODULE = "model.layers.1.mlp.down_proj"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "train.txt"
    path.write_text("the cat sat on the mat. the dog ate the bone. " * 200)
    return path


@pytest.fixture(scope="module")
def bf16_llama(tmp_path_factory) -> Path:
    """A tiny llama stored in bfloat16 (as released checkpoints are), so its scales are bf16;
    larger weights than the default, so that int2 costs a KL the scales can win back."""
    path = build_llama(tmp_path_factory.mktemp("bf16") / "dense", initializer_range=0.2)
    tensors = {n: t.to(torch.bfloat16) for n, t in load_file(path / "model.safetensors").items()}
    save_file(tensors, path / "model.safetensors", metadata={"format": "pt"})
    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**config, "dtype": "bfloat16"}))
    return path


def learned(linear: torch.nn.Linear, group_size: int | None = 8) -> FakeQuantLinear:
    fq = FakeQuantLinear(linear, WeightScheme(8, True, group_size), torch.bfloat16)
    fq.enable_learned_scale()
    return fq


@pytest.mark.parametrize(("bits", "extra"), [(8, False), (4, False), (2, False), (2, True)])
def test_the_scale_gradient_is_lsq_through_q_and_s(bits, extra):
    """The one-node forward/backward equals autograd through the STE chain (round STE in Q and
    S, clamps cutting the gradient): LSQ's d w_r / d alpha = (S - z) - inside * w / alpha."""
    torch.manual_seed(0)
    linear = torch.nn.Linear(32, 8, bias=False)
    fq = learned(linear)
    with torch.no_grad():
        fq.scale_log_gain.normal_(0, 0.3)  # some groups clipped hard, some widened
    x = torch.randn(4, 32)
    fq.bits = bits
    fq(x).pow(2).sum().backward()
    w = linear.weight.detach().clone().requires_grad_(True)
    gain = fq.scale_log_gain.detach().clone().requires_grad_(True)
    scale = fq.learned_scale(gain)
    zero = torch.full_like(scale, 128.0)
    q = fake_slice(fake_codes(w, scale, zero, 8), 8, bits, extra_precision=extra)
    reference = ((q - zero.unsqueeze(-1)) * scale.unsqueeze(-1)).reshape(w.shape)
    fq.extra_precision = extra
    assert torch.equal(fq.quantized_weight(bits), reference)
    fq.scale_log_gain.grad = None
    linear.weight.grad = None
    fq(x).pow(2).sum().backward()
    torch.nn.functional.linear(x, reference).pow(2).sum().backward()
    assert torch.allclose(fq.scale_log_gain.grad, gain.grad, rtol=1e-5, atol=1e-6)
    assert torch.allclose(linear.weight.grad, w.grad, rtol=1e-5, atol=1e-6)
    assert gain.grad.abs().sum() > 0


def test_before_any_step_the_learned_scale_is_the_minmax_scale():
    torch.manual_seed(1)
    linear = torch.nn.Linear(64, 16, bias=False)
    plain = FakeQuantLinear(linear, WeightScheme(8, True, 8), torch.bfloat16)
    fq = learned(linear)
    scale, _ = grid.minmax_params(linear.weight.detach(), 8, True, 8, torch.bfloat16)
    assert torch.equal(fq.learned_scale(), scale.float())
    for bits in (8, 4, 2):
        assert torch.equal(fq.quantized_weight(bits), plain.quantized_weight(bits))
    codes, stored, zero = fq.export()
    assert stored.dtype == torch.bfloat16 and torch.equal(stored, scale)
    assert torch.equal(codes, grid.quantize_codes(linear.weight.detach(), scale, zero, 8))


def test_scales_alone_lower_the_loss_stay_positive_and_stay_bf16(bf16_llama, corpus):
    from matcli.train.qat import train
    from matcli.train.training import unwrapped_state

    options = qat_options(
        bf16_llama, corpus, steps=20, warmup_steps=2, learn_scales="scales", scale_lr=3e-2
    )
    options.teacher = "original"  # KL to the dense model: the loss is the quantization's cost
    seen: list[dict[int, float]] = []
    qm, _, report = train(options, lambda done, total, losses: seen.append(losses))
    first, last = (sum(s[2] for s in part) / 3 for part in (seen[:3], seen[-3:]))
    assert last < 0.85 * first, (first, last)
    assert report["learned_scales"] == {"train": "scales", "lr": 3e-2}
    source = load_file(bf16_llama / "model.safetensors")
    for name, tensor in unwrapped_state(qm).items():  # every weight frozen
        if name in source:
            assert torch.equal(tensor.to(torch.bfloat16), source[name]), name
    moved = 0
    for fq in qm.wrapped.values():
        scale = fq.learned_scale().detach()
        assert torch.all(scale > 0) and torch.all(torch.isfinite(scale))
        assert torch.equal(scale.to(torch.bfloat16).float(), scale)
        moved += int((scale != fq.scale_start).sum())
    assert moved > 0


def _quantized_weights(qm, bits: int) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        return {name + ".weight": fq.quantized_weight(bits) for name, fq in qm.wrapped.items()}


def test_the_parent_slices_to_exactly_the_trained_model(bf16_llama, corpus, tmp_path):
    """The CLI's parent and the same run in this process: at every width, slice(parent) in
    float32 equals the fake-quantized weight training evaluated, bit for bit, and the stored
    scales are the bf16 scales it used (not the trained weights' MinMax ones)."""
    from matcli.checkpoint.reader import ModelFolder
    from matcli.quant.reference import dequantized_state_dict
    from matcli.train.qat import train

    out = tmp_path / "parent"
    extra = ("--learn-scales", "scales+weights", "--scale-lr", "3e-2", "--group-size", "16")
    code, _, err = run_matcli(*qat_args(bf16_llama, out, corpus, *extra))
    assert code == 0, err
    settings = dict(steps=6, lr=1e-3, learn_scales="scales+weights", scale_lr=3e-2)
    qm, _, _ = train(qat_options(bf16_llama, corpus, group_size=16, **settings))
    stored = load_file(out / "model.safetensors")
    assert stored[MODULE + ".weight_scale"].dtype == torch.bfloat16
    fq = qm.wrapped[MODULE]
    minmax, _ = grid.minmax_params(fq.weight.detach(), 8, True, 16, torch.bfloat16)
    assert not torch.equal(stored[MODULE + ".weight_scale"], minmax)
    with ModelFolder(out) as folder:
        for bits in (8, 6, 4, 3, 2):
            sliced = dequantized_state_dict(folder, bits, scale_dtype=torch.float32)
            for name, weight in _quantized_weights(qm, bits).items():
                assert torch.equal(sliced[name], weight), (bits, name)
    report = json.loads((out / "matcli_manifest.json").read_text())["report"]
    assert report["learned_scales"]["train"] == "scales+weights"


class _StopAfter:
    """Ctrl-C as QAT's loop sees it, pressed once `at` steps are done."""

    def __init__(self, at: int):
        self.at, self.requested = at, False

    def progress(self, done, total, losses):
        self.requested = done >= self.at


def test_resume_keeps_the_learned_scales(bf16_llama, corpus, tmp_path, monkeypatch):
    from matcli.errors import MatcliError
    from matcli.train import qat

    settings = dict(steps=6, lr=1e-3, learn_scales="scales+weights", scale_lr=3e-2)
    reference, _, _ = qat.train(qat_options(bf16_llama, corpus, **settings))
    options = qat_options(bf16_llama, corpus, output=tmp_path / "o", **settings)
    stop = _StopAfter(3)
    monkeypatch.setattr(qat, "_stop_requests", lambda: contextlib.nullcontext(stop))
    with pytest.raises(MatcliError, match="interrupted after step 3"):
        qat.QatRun(options).steps(stop.progress)
    saved = torch.load(qat.state_dir(options) / "state.pt", weights_only=True)["params"]
    assert any(n.endswith("scale_log_gain") and t.abs().sum() > 0 for n, t in saved.items())
    monkeypatch.undo()
    run = qat.QatRun(options.model_copy(update={"resume": True}))
    assert run._restore() == 3
    for name, fq in run.qm.wrapped.items():
        assert torch.equal(fq.scale_log_gain.detach(), saved[name + ".scale_log_gain"]), name
    run.steps(lambda done, total, losses: None)
    expected, got = qat.export_inputs(reference)[0], qat.export_inputs(run.qm)[0]
    for name, (codes, scale, _) in expected.items():
        assert torch.equal(got[name][0], codes) and torch.equal(got[name][1], scale), name


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        (["--learn-scales", "scales", "--method", "rtn"], "--method rtn cannot learn scales"),
        (["--learn-scales", "scales", "--method", "omniquant"], "use --method qat"),
        (["--learn-scales", "scales", "--scheme", "asymmetric"], "use --scheme symmetric"),
        (["--scale-lr", "0.1"], "add --learn-scales"),
        (["--learn-scales", "biases"], "--learn-scales"),
    ],
)
def test_learned_scales_that_cannot_be_stored_are_refused(llama, corpus, tmp_path, extra, match):
    out = tmp_path / "o"
    assert_refused(qat_args(llama, out, corpus, *extra), out, match, inputs=[llama])
    assert not (tmp_path / "o.train-state").exists()
