"""The CUDA path: training (qat, omniquant, --teacher original) and eval on a GPU, checked
against the CPU run of the same command. Opt-in: `pytest -m cuda` (skipped without a GPU).

Tolerances. The GPU and the CPU run the same fp32 arithmetic in a different order (blocked
matmuls, parallel reductions; TF32 is off for matmuls by default in torch), so one forward
agrees to about 1e-6 relative. Training compounds that: AdamW divides each gradient by its own
running magnitude, and a weight on a rounding boundary of the int8 grid can take the other code,
so after a few steps the losses drift apart by more than one forward's error but stay well
within 1% on this tiny model.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from conftest import run_matcli
from test_training import qat_args, qat_options

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

FIRST_STEP_RTOL = 1e-4  # one forward (+ no update yet): reduction order only
TRAINED_RTOL = 1e-2  # a few AdamW steps: reduction order amplified, codes flipping at ties


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "train.txt"
    path.write_text("the cat sat on the mat. the dog ate the bone. " * 200)
    return path


def qat_losses(llama: Path, corpus: Path, device: str, **overrides) -> list[dict[int, float]]:
    from matcli.train.qat import train

    options = qat_options(
        llama, corpus, **{"steps": 12, "lr": 3e-3, "warmup_steps": 2, "device": device, **overrides}
    )
    seen: list[dict[int, float]] = []
    train(options, lambda d, t, losses: seen.append(losses))
    return seen


# A random tiny model's dense teacher is nearly uniform and its int8 width nearly equal to it
# (KL ~1e-8 at the start): KL alone has nothing to lower there, so the teacher runs mix it
# half and half with the labels' cross-entropy, which must fall.
WITH_TEACHER = {"teacher": "original", "teacher_weight": 0.5}


@pytest.mark.parametrize("teacher", [{}, WITH_TEACHER], ids=["labels", "teacher"])
def test_qat_on_cuda_lowers_the_loss_and_matches_the_cpu_run(llama, corpus, teacher):
    gpu = qat_losses(llama, corpus, "cuda", **teacher)
    cpu = qat_losses(llama, corpus, "cpu", **teacher)
    for bits in (8, 4, 2):
        assert gpu[-1][bits] < gpu[0][bits], (bits, gpu[0], gpu[-1])
        assert math.isclose(gpu[0][bits], cpu[0][bits], rel_tol=FIRST_STEP_RTOL), bits
        assert math.isclose(gpu[-1][bits], cpu[-1][bits], rel_tol=TRAINED_RTOL), bits


def test_the_teacher_lives_on_the_gpu_frozen(llama, corpus):
    from matcli.train.distill import load_teacher

    options = qat_options(llama, corpus, teacher="original")
    teacher = load_teacher(options, torch.device("cuda"))
    params = list(teacher.model.parameters())
    assert all(p.is_cuda and not p.requires_grad for p in params) and not teacher.model.training


def test_qat_bf16_on_cuda_lowers_the_loss(llama, corpus):
    seen = qat_losses(llama, corpus, "cuda", precision="bf16", **WITH_TEACHER)
    assert all(seen[-1][bits] < seen[0][bits] for bits in (8, 4, 2)), (seen[0], seen[-1])


def test_a_parent_trained_on_cuda_slices_and_loads(llama, corpus, tmp_path):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "parent"
    code, _, err = run_matcli(*qat_args(llama, out, corpus, "--device", "cuda"))
    assert code == 0, err
    code, _, err = run_matcli(
        "slice", str(out), "--bits", "2", "--format", "dense", "-o", str(tmp_path / "s2")
    )
    assert code == 0, err
    tokens = torch.randint(4, 98, (2, 24), generator=torch.Generator().manual_seed(0))
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "s2", dtype=torch.float32)
    with torch.no_grad():
        logits = model(tokens).logits
    assert torch.isfinite(logits).all()
    args = ("--data", str(corpus), "--seq-len", "32", "--max-tokens", "512", "--json")
    in_memory = json.loads(run_matcli("eval", str(out), "--bits", "2", *args)[1])["results"][0]
    written = json.loads(run_matcli("eval", str(tmp_path / "s2"), *args)[1])["results"][0]
    assert math.isclose(in_memory["perplexity"], written["perplexity"], rel_tol=1e-5)


def test_omniquant_on_cuda_matches_its_fake_quant_model(llama, corpus, tmp_path):
    from matcli.evaluate import load_model
    from matcli.options import QuantizeOptions
    from matcli.train.fakequant import at_bits
    from matcli.train.omniquant import train

    out = tmp_path / "omni"
    flags = dict(seq_len=32, samples=4, epochs=3, device="cuda")
    options = QuantizeOptions(model=llama, output=out, method="omniquant", data=corpus, **flags)
    qm, history, _ = train(options)
    assert all(math.isfinite(v) for v in history.values())
    assert next(qm.model.parameters()).is_cuda
    tokens = torch.randint(4, 98, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), at_bits(qm.wrapped, 8):
        fake = qm.model(input_ids=tokens.cuda()).logits.cpu()
    cli = ["--seq-len", "32", "--samples", "4", "--epochs", "3", "--device", "cuda", "-q"]
    code, _, err = run_matcli(
        "quantize", str(llama), "-o", str(out), "--method", "omniquant", "--data", str(corpus), *cli
    )
    assert code == 0, err
    with torch.no_grad():  # the parent's int8 weights, dequantized by matcli on the CPU
        loaded = load_model(out, bits=8)(tokens).logits
    assert torch.allclose(fake, loaded, atol=1e-3), (fake - loaded).abs().max()


def test_eval_on_cuda_equals_the_cpu(llama_parent, text_file):
    def perplexities(device: str) -> list[float]:
        code, out, err = run_matcli(
            "eval", str(llama_parent), "--data", str(text_file), "--bits", "8,4,2",
            "--seq-len", "64", "--device", device, "--json",
        )  # fmt: skip
        assert code == 0, err
        return [r["perplexity"] for r in json.loads(out)["results"]]

    for gpu, cpu in zip(perplexities("cuda"), perplexities("cpu")):
        assert math.isclose(gpu, cpu, rel_tol=FIRST_STEP_RTOL), (gpu, cpu)
