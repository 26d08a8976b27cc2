"""MatQuant training: STE, the multi-width loss, QAT, resume, torchrun, OmniQuant, weighted-rtn."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import assert_refused, free_port, run_matcli
from safetensors.torch import load_file

from matcli.quant import grid
from matcli.quant.ct_format import WeightScheme
from matcli.train.fakequant import FakeQuantLinear, fake_codes, fake_slice

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "train.txt"
    path.write_text("the cat sat on the mat. the dog ate the bone. " * 200)
    return path


def qat_args(model: Path, out: Path, data: Path, *extra: str) -> list[str]:
    return [
        "quantize",
        str(model),
        "-o",
        str(out),
        "--method",
        "qat",
        "--data",
        str(data),
        "--seq-len",
        "32",
        "--batch-size",
        "4",
        "--steps",
        "6",
        "--lr",
        "1e-3",
        "-q",
        *extra,
    ]


# --- fake quantization ------------------------------------------------------------------------


def test_fake_quant_forward_equals_the_grid():
    torch.manual_seed(0)
    w = torch.randn(16, 32)
    scale, zero = grid.minmax_params(w, 8, True, 8)
    q = fake_codes(w, scale, zero.float(), 8)
    assert torch.equal(q.reshape(16, 32).to(torch.uint8), grid.quantize_codes(w, scale, zero, 8))
    codes = torch.arange(256, dtype=torch.float32)
    for r in (8, 6, 4, 3, 2):
        for extra in (False, True):
            expected = grid.codes_on_parent_grid(
                grid.slice_codes(codes.to(torch.uint8), 8, r, extra), 8, r
            )
            assert torch.equal(fake_slice(codes, 8, r, extra), expected.float())


def test_gradients_flow_through_both_roundings():
    torch.manual_seed(0)
    linear = torch.nn.Linear(32, 8, bias=False)
    fq = FakeQuantLinear(linear, WeightScheme(8, True, None), torch.float32)
    x = torch.randn(4, 32)
    fq.bits = 2
    fq(x).pow(2).sum().backward()
    grad = linear.weight.grad.clone()
    assert grad.abs().sum() > 0
    # STE: the gradient is that of a plain Linear holding the quantized weight, masked to 0
    # where the clamp of S bit (weights whose int2 code is pinned at the top bucket).
    w_q = fq.quantized_weight(2).detach().requires_grad_(True)
    torch.nn.functional.linear(x, w_q).pow(2).sum().backward()
    scale, zero = grid.minmax_params(linear.weight.detach(), 8, True)
    codes = grid.quantize_codes(linear.weight.detach(), scale, zero, 8)
    inside = (codes.to(torch.int16) + 32) >> 6 <= 3  # round_half_up(q / 64) within 0..3
    assert torch.allclose(grad[inside], w_q.grad[inside])
    assert torch.all(grad[~inside] == 0)


# --- the method registry ------------------------------------------------------------------------


def test_registry_imports_no_torch_and_names_its_methods():
    probe = (
        "import sys, matcli.train.registry as r; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers')))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stdout + out.stderr
    from matcli.errors import MatcliError
    from matcli.train.registry import METHODS, get_method

    assert list(METHODS) == ["rtn", "weighted-rtn", "qat", "omniquant"]
    for name, method in METHODS.items():
        assert get_method(name) is method and method.name == name
        assert method.help and "\n" not in method.help
    assert [m.progress_unit for m in METHODS.values()] == [None, None, "step", "block"]
    assert [m.needs_data for m in METHODS.values()] == [False, False, True, True]
    with pytest.raises(MatcliError, match="rtn, weighted-rtn, qat, omniquant"):
        get_method("gptq")


@pytest.mark.parametrize(
    ("method", "work"),
    [("qat", {"steps": 6, "tokens_per_step": 128}), ("omniquant", {"samples": 4, "epochs": 3})],
)
def test_training_dry_run_reports_the_work_and_trains_nothing(
    llama, corpus, tmp_path, method, work
):
    out = tmp_path / "o"
    args = qat_args(llama, out, corpus, "--method", method, "--samples", "4", "--epochs", "3")
    code, text, err = run_matcli(*args, "--dry-run", "--json")
    assert code == 0, err
    (output,) = json.loads(text)["outputs"]
    report = json.loads(text)["report"]
    assert report["method"] == method and report["windows_available"] > 0
    assert {k: report[k] for k in work} == work and report["tokens_to_train"] > 0
    assert output["transforms"]["quantize int8"]["tensors"] == 6 * 3
    (info,) = [c["after"] for c in output["config_changes"] if c["key"] == "matcli"]
    assert info["method"] == method and info["trained_bits"] == [8, 4, 2]
    assert not out.exists() and not (tmp_path / "o.train-state").exists()


# --- QAT ---------------------------------------------------------------------------------------


def qat_options(model: Path, data: Path, **overrides):
    """QuantizeOptions of a short QAT run on a tiny model, for the train functions."""
    from matcli.options import QuantizeOptions

    settings = dict(model=model, output=Path("/unused"), method="qat", data=data)
    return QuantizeOptions(**{**settings, "seq_len": 32, "batch_size": 4, **overrides})


def test_qat_lowers_the_loss_of_every_width(llama, corpus):
    from matcli.train.qat import train

    options = qat_options(llama, corpus, steps=25, lr=3e-3, warmup_steps=2)
    seen: list[dict[int, float]] = []
    qm, _, report = train(options, lambda done, total, losses: seen.append(losses))
    for bits in (8, 4, 2):
        first, last = np.mean([s[bits] for s in seen[:3]]), np.mean([s[bits] for s in seen[-3:]])
        assert last < first - 0.3, (bits, first, last)
    assert report["final_losses"].keys() == {"int8", "int4", "int2"}


def test_trained_parent_records_and_slices_its_widths(llama, corpus, tmp_path):
    out = tmp_path / "parent"
    code, _, err = run_matcli(*qat_args(llama, out, corpus, "--distill", "8->2"))
    assert code == 0, err
    info = json.loads((out / "config.json").read_text())["matcli"]
    assert (
        info["method"] == "qat"
        and info["trained_bits"] == [8, 4, 2]
        and info["loss_weights"] == [0.1, 0.1, 1.0]
    )
    manifest = json.loads((out / "matcli_manifest.json").read_text())
    assert manifest["report"]["steps"] == 6 and len(manifest["report"]["data_sha256"]) == 64
    assert set(manifest["report"]["final_losses"]) == {"int8", "int4", "int2"}
    code, _, err = run_matcli("slice", str(out), "--bits", "4", "-o", str(tmp_path / "s4"))
    assert code == 0 and "not trained" not in err
    code, _, err = run_matcli("slice", str(out), "--bits", "3", "-o", str(tmp_path / "s3"))
    assert code == 0 and "not trained for int3" in err
    assert not (tmp_path / "parent.train-state").exists()


def parent_tensors(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(folder / "model.safetensors")


def test_resume_after_an_interrupt_gives_the_same_weights(llama, corpus, tmp_path):
    reference = tmp_path / "reference"
    assert run_matcli(*qat_args(llama, reference, corpus, "--steps", "8"))[0] == 0
    out = tmp_path / "resumed"
    args = [
        sys.executable,
        "-m",
        "matcli",
        *qat_args(llama, out, corpus, "--steps", "8", "--save-every", "1"),
    ]
    proc = subprocess.Popen(args, stderr=subprocess.PIPE, text=True)
    state = tmp_path / "resumed.train-state"
    deadline = time.time() + 120
    while time.time() < deadline and not state.exists():
        time.sleep(0.05)
    assert proc.poll() is None, "training finished before it could be interrupted"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "--resume" in err and not out.exists()
    resume = ("--steps", "8", "--save-every", "1", "--resume")
    code, _, err = run_matcli(*qat_args(llama, out, corpus, *resume, "--lr", "0.5"))
    assert code == 2 and "options differ" in err and "lr" in err and state.exists()
    code, _, err = run_matcli(*qat_args(llama, out, corpus, *resume, "--grad-accum", "2"))
    assert code == 2 and "global batch" in err and state.exists()
    saved = tmp_path / "saved-state"
    shutil.copytree(state, saved)
    code, _, err = run_matcli(*qat_args(llama, out, corpus, *resume))
    assert code == 0, err
    assert not state.exists()
    a, b = parent_tensors(reference), parent_tensors(out)
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    # The same global batch split differently (2 sequences x 2 accumulation steps) may resume:
    # the same sequences per step, summed in another order, so equal up to float rounding.
    shutil.copytree(saved, state)
    code, _, err = run_matcli(
        *qat_args(llama, out, corpus, *resume, "--batch-size", "2", "--grad-accum", "2", "--force")
    )
    assert code == 0, err
    from matcli.checkpoint.reader import ModelFolder
    from matcli.quant.reference import dequantized_state_dict

    with ModelFolder(reference) as f, ModelFolder(out) as g:
        expected, got = dequantized_state_dict(f), dequantized_state_dict(g)
    for name, weight in expected.items():
        # float rounding only, except that a weight at a rounding boundary may land one int8
        # step away: almost every weight agrees to 1e-5 of the tensor's range
        diff, top = (weight.float() - got[name].float()).abs(), weight.float().abs().max()
        assert diff.max() <= top / 64 and (diff > 1e-5 * top).float().mean() < 1e-3, name


def test_resume_without_a_saved_state_is_refused(llama, corpus, tmp_path):
    state = tmp_path / "o.train-state"
    code, _, err = run_matcli(*qat_args(llama, tmp_path / "o", corpus, "--resume"))
    assert code == 2 and "no saved training state" in err and not state.exists()


@pytest.mark.parametrize(
    ("parallel", "extra"),
    [
        ("fsdp", ()),
        ("ddp", ()),
        ("fsdp", ("--learn-scales", "scales+weights", "--scale-lr", "3e-2")),
    ],
)
def test_two_gloo_ranks_match_one_process(llama, corpus, tmp_path, parallel, extra):
    """torchrun with 2 CPU processes (gloo), each half of the global batch: the same parent as
    one process, whether the model is sharded (FSDP2) or replicated (DDP), and with learned
    scales (sharded, then gathered for the export)."""
    single = tmp_path / "single"
    one = ("--batch-size", "4", "--device", "cpu", *extra)
    assert run_matcli(*qat_args(llama, single, corpus, *one))[0] == 0
    double = tmp_path / "double"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = qat_args(
        llama,
        double,
        corpus,
        "--batch-size",
        "2",
        "--device",
        "cpu",
        "--parallel",
        parallel,
        *extra,
    )
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        free_port(),
        "-m",
        "matcli",
        *args,
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((double / "matcli_manifest.json").read_text())["report"]
    assert report["parallel"] == f"{parallel}, 2 processes"
    a, b = parent_tensors(single), parent_tensors(double)
    for name in a:
        if name.endswith("weight_packed"):
            codes_a, codes_b = a[name].view(torch.uint8), b[name].view(torch.uint8)
            assert (codes_a != codes_b).float().mean() < 1e-3, (
                name
            )  # a rare code may flip at a rounding boundary
        elif a[name].is_floating_point():
            assert torch.allclose(a[name], b[name], rtol=1e-4, atol=1e-6), name


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--train-bits", "8,4,9"], "--train-bits width 9 is out of range"),
        (["--loss-weights", "0.1,1"], "2 weights for 3"),
        (["--device", "cuda:3"], "CUDA device"),
        (["--device", "tpu"], "not a device"),
    ],
)
def test_bad_training_input(llama, corpus, tmp_path, extra, message):
    out = tmp_path / "o"
    code, _, err = run_matcli(*qat_args(llama, out, corpus, *extra))
    assert code == 2 and message in err and "Traceback" not in err, err
    assert not out.exists() and not (tmp_path / "o.train-state").exists()


def test_training_needs_data_and_a_known_family(llama, tmp_path, corpus):
    code, _, err = run_matcli("quantize", str(llama), "-o", str(tmp_path / "o"), "--method", "qat")
    assert code == 2 and "--data" in err
    code, _, err = run_matcli(*qat_args(llama, tmp_path / "o", Path("allenai/c4:en:train")))
    assert code == 2 and (
        "install `datasets`" in err or "not in the local Hugging Face cache" in err
    )
    short = tmp_path / "short.txt"
    short.write_text("too short")
    code, _, err = run_matcli(*qat_args(llama, tmp_path / "o", short))
    assert code == 2 and "fewer than one --seq-len window" in err
    strange = Path(shutil.copytree(llama, tmp_path / "strange"))
    config = json.loads((strange / "config.json").read_text())
    config["model_type"] = "mystery"
    (strange / "config.json").write_text(json.dumps(config))
    code, _, err = run_matcli(*qat_args(strange, tmp_path / "o", corpus))
    assert code == 2 and "matcli/arch/families/mystery.yaml" in err
    assert not (tmp_path / "o").exists()


# --- OmniQuant -----------------------------------------------------------------------------------


def test_omniquant_parent_loads_and_equals_its_fake_quant_model(llama, corpus, tmp_path):
    from transformers import AutoModelForCausalLM

    from matcli.options import QuantizeOptions
    from matcli.train.fakequant import at_bits
    from matcli.train.omniquant import train

    out = tmp_path / "omni"
    options = QuantizeOptions(
        model=llama, output=out, method="omniquant", data=corpus, seq_len=32, samples=4, epochs=3
    )
    blocks: list[dict[int, float]] = []
    qm, _, report = train(options, lambda done, total, losses: blocks.append(losses))
    assert len(blocks) == 2 and report["let"] == "scale only"
    tokens = torch.randint(4, 98, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), at_bits(qm.wrapped, 8):
        fake = qm.model(input_ids=tokens).logits
    code, _, err = run_matcli(
        "quantize",
        str(llama),
        "-o",
        str(out),
        "--method",
        "omniquant",
        "--data",
        str(corpus),
        "--seq-len",
        "32",
        "--samples",
        "4",
        "--epochs",
        "3",
        "-q",
    )
    assert code == 0, err
    with torch.no_grad():
        loaded = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)(tokens).logits
    assert torch.allclose(fake, loaded, atol=1e-4), (fake - loaded).abs().max()


def test_omniquant_lowers_the_block_error(llama, corpus):
    from matcli.options import QuantizeOptions
    from matcli.train.omniquant import train

    losses = {}
    for epochs in (1, 8):
        options = QuantizeOptions(
            model=llama,
            output=Path("/unused"),
            method="omniquant",
            data=corpus,
            seq_len=32,
            samples=4,
            epochs=epochs,
        )
        _, history, _ = train(options)
        losses[epochs] = history[2]
    assert losses[8] < losses[1]


# --- weighted-rtn --------------------------------------------------------------------------------


def test_weighted_rtn_lowers_the_weighted_slice_error(llama, tmp_path):
    for method in ("rtn", "weighted-rtn"):
        assert (
            run_matcli(
                "quantize", str(llama), "-o", str(tmp_path / method), "--method", method, "-q"
            )[0]
            == 0
        )
    info = json.loads((tmp_path / "weighted-rtn" / "config.json").read_text())["matcli"]
    assert info["method"] == "weighted-rtn" and info["trained_bits"] == [8, 4, 2]
    dense = load_file(llama / "model.safetensors")
    errors = {}
    for method in ("rtn", "weighted-rtn"):
        from matcli.checkpoint.reader import ModelFolder
        from matcli.quant.reference import dequantized_state_dict

        total = 0.0
        with ModelFolder(tmp_path / method) as folder:
            for bits, weight in ((8, 0.1), (4, 0.1), (2, 1.0)):
                state = dequantized_state_dict(folder, bits)
                total += weight * sum(
                    (state[n] - dense[n]).pow(2).sum().item() for n in dense if ".mlp." in n
                )
        errors[method] = total
    assert errors["weighted-rtn"] < errors["rtn"]


def test_a_run_logging_to_a_file_shows_its_progress(llama, corpus, tmp_path):
    """stderr that is not a terminal (a background run's log) gets plain progress lines: the
    first step at once and the last, then the writing."""
    args = [a for a in qat_args(llama, tmp_path / "o", corpus, "--steps", "2") if a != "-q"]
    code, _, err = run_matcli(*args)
    assert code == 0, err
    lines = err.splitlines()
    assert any(line.startswith("qat: step 1/2  int8 ") for line in lines), err
    assert any(line.startswith("qat: step 2/2  int8 ") for line in lines), err
    assert any(line.startswith("writing: ") and "GB written" in line for line in lines), err


def test_progress_lines_carry_tokens_per_second_and_the_time_left(
    llama, corpus, tmp_path, monkeypatch
):
    monkeypatch.setenv("MATCLI_PROGRESS_SECONDS", "0")  # a line for every step
    args = [a for a in qat_args(llama, tmp_path / "o", corpus, "--steps", "4") if a != "-q"]
    code, _, err = run_matcli(*args)
    assert code == 0, err
    steps = [line for line in err.splitlines() if line.startswith("qat: step ")]
    assert [line.split()[2] for line in steps] == ["1/4", "2/4", "3/4", "4/4"], err
    for line in steps[1:]:
        rate = float(line.split(" tok/s")[0].rsplit(" ", 1)[1].replace(",", ""))
        assert rate > 0 and " int2 " in line, line
    assert all(" ETA 0:00:" in line for line in steps[1:3]) and "ETA" not in steps[3], err


def test_a_bad_progress_interval_is_refused(llama, corpus, tmp_path, monkeypatch):
    monkeypatch.setenv("MATCLI_PROGRESS_SECONDS", "soon")
    out = tmp_path / "o"
    assert_refused(qat_args(llama, out, corpus), out, "MATCLI_PROGRESS_SECONDS='soon'")


@pytest.mark.parametrize("suffix", [".txt", ".jsonl"])
def test_binary_training_text_is_refused_in_one_line(llama, tmp_path, suffix):
    data = tmp_path / f"data{suffix}"
    data.write_bytes(b"\x89PNG\r\n\x1a\n\x00\xff\xfe binary")
    code, _, err = run_matcli(*qat_args(llama, tmp_path / "o", data))
    assert code == 2 and err.count("\n") == 1 and "is not UTF-8 text (byte 0" in err, err
    assert not (tmp_path / "o").exists()


def test_the_gpu_curves_script_runs_end_to_end_on_the_cpu(llama, corpus, tmp_path, monkeypatch):
    """scripts/gpu_curves.py with a tiny budget: the dense rows, one budget of both methods
    (every width, both domains), and a second budget not started because it would overrun
    the wall budget; the table is on disk. Its matcli commands run in this process (the
    script starts a process each; only the start-up differs)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("gpu_curves", ROOT / "scripts/gpu_curves.py")
    curves = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(curves)
    commands = []

    def in_process(argv):
        commands.append(argv)
        code, _, err = run_matcli(*argv)
        assert code == 0, err

    monkeypatch.setattr(curves, "run_matcli", in_process)
    texts = tmp_path / "texts"
    texts.mkdir()
    shutil.copy(corpus, texts / "wiki_train.txt")
    (texts / "wiki_heldout.txt").write_text("the dog sat on the bone. " * 60)
    (texts / "shakespeare_heldout.txt").write_text(
        "To be, or not to be, that is the question. " * 30
    )
    out = tmp_path / "out"
    tiny = ["--device", "cpu", "--seq-len", "32", "--batch-size", "2", "--eval-tokens", "256"]
    curves.main([str(llama), str(texts), str(out), *tiny, "--budgets", "128,10000000000"])
    rows = json.loads((out / "curves.json").read_text())
    got = {(r["method"], r["tokens"], r["width"], r["domain"]) for r in rows}
    domains = ("shakespeare_heldout", "wiki_heldout")
    expected = {("dense", 0, "dense", d) for d in domains}
    expected |= {("matquant", 128, f"int{b}", d) for b in (8, 4, 2) for d in domains}
    expected |= {("int2-only-asym", 128, "int2", d) for d in domains}
    assert got == expected and all(r["perplexity"] > 1 for r in rows)
    table = (out / "curves.md").read_text()
    assert "Stopped before 10,000,000,000 tokens" in table and "| matquant | 128 | int2 |" in table
    assert not (out / "models").exists() or not any((out / "models").iterdir())
    assert [a[a.index("--teacher") + 1] for a in commands] == ["original", "original"]
    # the time of a budget: a line through the last two runs (start-up + seconds per token)
    assert curves._estimate([(100, 10.0), (200, 15.0)], 1000) == 55.0
    assert curves._estimate([(100, 10.0)], 1000) == 100.0 and curves._estimate([], 5) == 0
