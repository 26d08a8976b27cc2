"""`--teacher original`: the KL loss and its gradient against float64 references, one teacher
forward per batch, bad input, and non-finite weights refused before training."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import pytest
import torch
from conftest import assert_refused, build_llama, run_matcli
from test_training import qat_args, qat_options

from matcli.options import QuantizeOptions
from matcli.train.distill import OriginalTeacher, kl_to_teacher, load_teacher
from matcli.train.fakequant import at_bits
from matcli.train.qat import MultiWidthLoss
from matcli.train.training import load_quant_model


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "train.txt"
    path.write_text("the cat sat on the mat. the dog ate the bone. " * 200)
    return path


def reference_kl(student: torch.Tensor, teacher: torch.Tensor, t: float) -> torch.Tensor:
    """T^2 * mean over tokens of sum_v p_t (log p_t - log p_s), in float64, written out."""
    s, q = student.double() / t, teacher.double() / t
    log_ps = s - s.exp().sum(-1, keepdim=True).log()
    log_pt = q - q.exp().sum(-1, keepdim=True).log()
    return t**2 * (log_pt.exp() * (log_pt - log_ps)).sum(-1).mean()


@pytest.mark.parametrize("temperature", [1.0, 2.0, 0.5])
def test_kl_and_its_gradient_equal_the_float64_formula(temperature):
    generator = torch.Generator().manual_seed(0)
    student = torch.randn(12, 50, generator=generator).mul(3).requires_grad_(True)
    teacher = torch.randn(12, 50, generator=generator).mul(3)
    teacher_log_probs = torch.log_softmax(teacher / temperature, -1)
    loss = kl_to_teacher(student, teacher_log_probs, temperature)
    loss.backward()
    expected = reference_kl(student.detach(), teacher, temperature)
    assert abs(loss.item() - expected.item()) <= 1e-6 * max(1.0, expected.item())
    # d/ds of T^2 KL / N = T (softmax(s / T) - softmax(t / T)) / N
    s64, t64 = student.detach().double() / temperature, teacher.double() / temperature
    grad = temperature * (s64.softmax(-1) - t64.softmax(-1)) / student.shape[0]
    assert torch.allclose(student.grad.double(), grad, atol=1e-7)
    assert kl_to_teacher(teacher, teacher_log_probs, temperature).abs().item() < 1e-6


def options_for(llama: Path, corpus: Path, **overrides) -> QuantizeOptions:
    return qat_options(
        llama, corpus, **{"seq_len": 16, "batch_size": 2, "teacher": "original", **overrides}
    )


class CountingTeacher(OriginalTeacher):
    calls = 0

    def log_probs(self, input_ids):
        CountingTeacher.calls += 1
        return super().log_probs(input_ids)


def test_the_teacher_runs_once_per_batch_for_every_width(llama, corpus):
    options = options_for(llama, corpus)
    qm = load_quant_model(options, torch.device("cpu"))
    original = load_teacher(options, torch.device("cpu"))
    assert not original.model.training
    assert not any(p.requires_grad for p in original.model.parameters())
    teacher = CountingTeacher(original.model, 1.0)
    objective = MultiWidthLoss(qm, options, qm.model, teacher)
    batch = torch.randint(4, 98, (2, 16), generator=torch.Generator().manual_seed(0))
    for _ in range(3):
        losses = objective.backward(batch, 1.0, lambda last: contextlib.nullcontext())
    assert CountingTeacher.calls == 3 and set(losses) == {8, 4, 2}
    assert all(p.grad is None for p in original.model.parameters())


@pytest.mark.parametrize("weight", [1.0, 0.5])
def test_the_objective_on_a_tiny_model_equals_a_float64_reference(llama, corpus, weight):
    """One width: the loss MultiWidthLoss returns, and the gradient of the (dense) lm_head,
    against float64 formulas on the student's hidden states and the teacher's logits."""
    options = options_for(
        llama, corpus, train_bits=[4], teacher_weight=weight, teacher_temperature=2.0
    )
    qm = load_quant_model(options, torch.device("cpu"))
    with torch.no_grad():  # a student far from the teacher: a KL well above float32 rounding
        qm.model.lm_head.weight.mul_(30)
    teacher = load_teacher(options, torch.device("cpu"))
    objective = MultiWidthLoss(qm, options, qm.model, teacher)
    batch = torch.randint(4, 98, (2, 16), generator=torch.Generator().manual_seed(1))
    (loss,) = objective.backward(batch, 1.0, lambda last: contextlib.nullcontext()).values()
    with torch.no_grad(), at_bits(qm.wrapped, 4):
        hidden = qm.model.model(input_ids=batch).last_hidden_state[:, :-1].reshape(-1, 64)
        teacher_logits = teacher.model(input_ids=batch).logits[:, :-1].reshape(-1, 128)
    head = qm.model.lm_head.weight.detach().double().requires_grad_(True)
    logits = hidden.double() @ head.T
    targets = batch[:, 1:].reshape(-1)
    ce = torch.nn.functional.cross_entropy(logits, targets)
    expected = weight * reference_kl(logits, teacher_logits, 2.0) + (1 - weight) * ce
    expected.backward()
    assert expected.item() > 0.1 and abs(loss - expected.item()) <= 1e-5 * expected.item()
    assert torch.allclose(qm.model.lm_head.weight.grad.double(), head.grad, rtol=1e-4, atol=1e-7)


def test_a_run_with_the_teacher_writes_a_parent_that_records_it(llama, corpus, tmp_path):
    out = tmp_path / "o"
    args = qat_args(llama, out, corpus, "--teacher", "original", "--teacher-weight", "0.5")
    code, _, err = run_matcli(*args)
    assert code == 0, err
    report = json.loads((out / "matcli_manifest.json").read_text())["report"]
    assert report["teacher"] == {"model": "original", "kl_weight": 0.5, "temperature": 1.0}


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        (["--teacher", "gpt-5"], "--teacher"),
        (["--teacher-weight", "0.5"], "add --teacher original"),
        (["--teacher", "original", "--teacher-weight", "1.5"], "--teacher-weight"),
        (["--teacher", "original", "--method", "rtn"], "does not train"),
        (
            ["--teacher", "original", "--method", "omniquant", "--teacher-temperature", "2"],
            "--teacher-temperature weighs a KL loss on logits",
        ),
    ],
)
def test_bad_teacher_input_is_refused_in_one_line(llama, corpus, tmp_path, extra, match):
    out = tmp_path / "o"
    assert_refused(qat_args(llama, out, corpus, *extra), out, match, inputs=[llama])


@pytest.mark.parametrize("method", ["qat", "omniquant"])
def test_non_finite_weights_are_refused_before_training(corpus, tmp_path, method):
    from safetensors.torch import load_file, save_file

    model = build_llama(tmp_path / "nan")
    tensors = load_file(model / "model.safetensors")
    name = "model.layers.1.mlp.up_proj.weight"
    tensors[name][3, :2] = float("nan")
    tensors[name][5, 7] = float("inf")
    save_file(tensors, model / "model.safetensors", metadata={"format": "pt"})
    out = tmp_path / "o"
    args = qat_args(model, out, corpus, "--method", method, "--samples", "2", "--epochs", "1")
    assert_refused(args, out, f"{name} holds 3 NaN or infinite value(s)", inputs=[model])
