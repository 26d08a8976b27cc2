"""`matcli nest`: nested FFN views, the distillation objective, zero steps = reorder, resume,
torchrun, the nested record read by extract / --budget / inspect, and bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import assert_refused, free_port, run_matcli
from safetensors.torch import load_file

WIDTHS = [0.25, 0.5, 0.75, 1.0]


@pytest.fixture(scope="module")
def corpus(text_file) -> Path:
    return text_file


# Tiny settings: windows of 32 characters, 4 a step, importance on 2,048 tokens, 6 steps.
SETTINGS = {"--seq-len": 32, "--batch-size": 4, "--calibration-tokens": 2048, "--steps": 6}


def nest_args(model: Path, out: Path, data: Path, *extra: str) -> list[str]:
    flags = [str(part) for item in {**SETTINGS, "--lr": "1e-3"}.items() for part in item]
    return ["nest", str(model), "-o", str(out), "--data", str(data), *flags, "-q", *extra]


@pytest.fixture(scope="module")
def nested(llama, corpus, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("nested") / "nested"
    code, _, err = run_matcli(*nest_args(llama, out, corpus))
    assert code == 0, err
    return out


def tensors(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(folder / "model.safetensors")


def load(folder: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()


def nested_model(folder: Path):
    """The folder's model with its recorded granularities installed."""
    from matcli.matformer.nested import NestedFfn

    widths = json.loads((folder / "config.json").read_text())["matcli"]["trained_ffn_widths"]
    model = load(folder)
    return model, NestedFfn(model, widths)


# --- the nested FFN ----------------------------------------------------------------------------


def test_granularity_views_share_storage_with_the_full_weights(nested):
    model, ffn = nested_model(nested)
    params = dict(model.named_parameters())
    for layer in range(2):
        for g, m in enumerate([32, 64, 96, 128]):
            for name, view in ffn.views(layer, g).items():
                full = params[f"model.layers.{layer}.{name}.weight"]
                assert view.data_ptr() == full.data_ptr(), (layer, g, name)
                assert view.untyped_storage().data_ptr() == full.untyped_storage().data_ptr()
                assert m in view.shape and view.numel() == full.numel() * m // 128


def test_gradients_of_a_granularity_reach_only_its_prefix(nested):
    model, ffn = nested_model(nested)
    with ffn.at(1):
        model(torch.randint(0, 99, (2, 16))).logits.sum().backward()
    up, down = model.model.layers[0].mlp.up_proj.weight, model.model.layers[0].mlp.down_proj.weight
    assert up.grad[:64].abs().sum() > 0 and torch.all(up.grad[64:] == 0)
    assert down.grad[:, :64].abs().sum() > 0 and torch.all(down.grad[:, 64:] == 0)


@pytest.mark.parametrize(("spec", "g"), [("0.25", 0), ("0.5", 1), ("0.75", 2)])
def test_extract_cuts_exactly_the_trained_granularity(nested, tmp_path, spec, g):
    """The granularity trained in memory (views) is the model `extract --ffn-config` writes,
    and the config's trained widths make it a known granularity (no warning)."""
    out = tmp_path / "sub"
    code, _, err = run_matcli("extract", str(nested), "-o", str(out), "--ffn-config", spec)
    assert code == 0 and "not trained" not in err, err
    model, ffn = nested_model(nested)
    tokens = torch.randint(0, 99, (2, 24))
    with torch.no_grad(), ffn.at(g):
        expected = model(tokens).logits
    with torch.no_grad():
        assert torch.equal(load(out)(tokens).logits, expected)


def test_widths_off_the_trained_granularities_warn(nested, tmp_path):
    code, _, err = run_matcli(
        "extract", str(nested), "-o", str(tmp_path / "s"), "--ffn-config", "0.125"
    )
    assert code == 0 and "not trained" in err and "matcli nest" in err, err


def test_budget_picks_among_the_trained_granularities(nested, llama, tmp_path):
    """A budget between the 3/4 and the full model: the nested model's 3/4 (a non-nested
    model's candidates are 1/8, 1/4, 1/2, 1, so it gets 1/2)."""
    from matcli.checkpoint.reader import ModelFolder

    with ModelFolder(nested) as folder:
        total = sum(t.numel for t in folder.tensors.values())
    ffn_per_neuron = 2 * 3 * 64  # two layers x (gate row, up row, down column) of 64
    budget = str(total - ffn_per_neuron * 16)  # the full model minus 16 neurons per layer
    for model, widths in ((nested, 96), (llama, 64)):
        out = tmp_path / f"b{widths}"
        code, _, err = run_matcli("extract", str(model), "-o", str(out), "--budget", budget)
        assert code == 0, err
        assert json.loads((out / "config.json").read_text())["intermediate_size"] == widths


def test_inspect_shows_the_granularities(nested):
    code, text, err = run_matcli("inspect", str(nested), "--json")
    assert code == 0, err
    info = json.loads(text)["matcli"]
    assert info["role"] == "nested" and info["granularities"] == WIDTHS
    assert info["trained_ffn_widths"] == [[32, 64, 96, 128]] * 2


# --- the objective and the loop -------------------------------------------------------------


def test_distillation_loss_is_kl_at_temperature_plus_labels():
    from matcli.train.distill import distillation_loss

    torch.manual_seed(0)
    student, teacher = torch.randn(10, 7), torch.randn(10, 7)
    labels = torch.randint(0, 7, (10,))
    t, a = 2.0, 0.7
    p, q = F.softmax(teacher / t, -1), F.softmax(student / t, -1)
    kl = (p * (p.log() - q.log())).sum(-1).mean()
    ce = -F.log_softmax(student, -1)[torch.arange(10), labels].mean()
    got = distillation_loss(student, F.log_softmax(teacher / t, -1), labels, a, t)
    assert torch.allclose(got, a * t * t * kl + (1 - a) * ce, atol=1e-6)
    assert distillation_loss(student, F.log_softmax(student, -1), labels, 1.0, 1.0).abs() < 1e-6


def test_the_nested_loss_decreases_for_every_granularity(llama, corpus):
    from matcli.matformer.nest import NestRun, checked_input
    from matcli.options import NestOptions

    tiny = {k.removeprefix("--").replace("-", "_"): v for k, v in SETTINGS.items()}
    options = NestOptions(
        **{**tiny, "steps": 25},
        model=llama,
        output=Path("/unused"),
        data=corpus,
        lr=3e-3,
        warmup_steps=2,
        teacher_weight=0.5,
    )
    seen: list[dict] = []
    run = NestRun(options, checked_input(options))
    run.steps(lambda done, total, losses: seen.append(losses))
    for name in ("ffn0.25", "ffn0.5", "ffn0.75", "ffn1"):
        first, last = np.mean([s[name] for s in seen[:3]]), np.mean([s[name] for s in seen[-3:]])
        assert last < first - 0.3, (name, first, last)


def test_zero_steps_gives_exactly_the_reordered_model(llama, corpus, tmp_path):
    reordered, zero = tmp_path / "reordered", tmp_path / "zero"
    calibration = ["--data", str(corpus), "--seq-len", "32", "--max-tokens", "2048"]
    assert run_matcli("reorder", str(llama), "-o", str(reordered), *calibration, "-q")[0] == 0
    code, _, err = run_matcli(*nest_args(llama, zero, corpus, "--steps", "0"))
    assert code == 0, err
    a, b = tensors(reordered), tensors(zero)
    assert a.keys() == b.keys() and tensors(llama).keys() == a.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    assert not torch.equal(
        a["model.layers.0.mlp.up_proj.weight"], tensors(llama)["model.layers.0.mlp.up_proj.weight"]
    )


def test_resume_after_a_kill_gives_the_uninterrupted_weights(llama, corpus, tmp_path):
    reference = tmp_path / "reference"
    assert run_matcli(*nest_args(llama, reference, corpus, "--steps", "8"))[0] == 0
    out = tmp_path / "resumed"
    every = ("--steps", "8", "--save-every", "1")
    args = nest_args(llama, out, corpus, *every)
    proc = subprocess.Popen([sys.executable, "-m", "matcli", *args], stderr=subprocess.PIPE)
    state = tmp_path / "resumed.train-state"
    deadline = time.time() + 120
    while time.time() < deadline and not (state / "state.pt").exists():
        time.sleep(0.05)
    assert proc.poll() is None, "training finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert not out.exists() and torch.load(state / "state.pt")["step"] < 8
    code, _, err = run_matcli(*nest_args(llama, out, corpus, *every, "--resume"))
    assert code == 0, err
    assert not state.exists()
    a, b = tensors(reference), tensors(out)
    for name in a:
        assert torch.equal(a[name], b[name]), name


@pytest.mark.parametrize("parallel", ["fsdp", "ddp"])
def test_two_gloo_ranks_match_one_process(llama, corpus, tmp_path, parallel):
    single, double = tmp_path / "single", tmp_path / "double"
    assert run_matcli(*nest_args(llama, single, corpus, "--device", "cpu"))[0] == 0
    args = nest_args(
        llama, double, corpus, "--batch-size", "2", "--device", "cpu", "--parallel", parallel
    )
    run = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    cmd = [*run, "--master_port", free_port(), "-m", "matcli", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((double / "matcli_manifest.json").read_text())["report"]
    assert report["parallel"] == f"{parallel}, 2 processes"
    a, b = tensors(single), tensors(double)
    for name in a:
        assert torch.allclose(a[name], b[name], rtol=1e-4, atol=1e-6), name


def test_dry_run_reports_the_work_and_trains_nothing(llama, corpus, tmp_path):
    out = tmp_path / "o"
    code, text, err = run_matcli(*nest_args(llama, out, corpus, "--dry-run", "--json"))
    assert code == 0, err
    plan = json.loads(text)
    assert plan["report"]["tokens_to_train"] == 6 * 4 * 32
    (info,) = [c["after"] for c in plan["outputs"][0]["config_changes"] if c["key"] == "matcli"]
    assert info["trained_ffn_widths"] == [[32, 64, 96, 128]] * 2
    assert not out.exists() and not (tmp_path / "o.train-state").exists()


# --- bad input --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("widths", "message"),
    [
        ("0,0.5,1", "outside (0, 1]"),
        ("0.5,1.5", "outside (0, 1]"),
        ("-0.5,1", "outside (0, 1]"),
        ("0.5,0.25,1", "not increasing"),
        ("0.5,0.5,1", "not increasing"),
        ("0.25,0.5", "end the list with 1"),
        ("0.3,1", "not a whole number of neurons"),
        ("abc,1", "widths"),
    ],
)
def test_bad_widths_are_refused(llama, corpus, tmp_path, widths, message):
    out = tmp_path / "o"
    args = nest_args(llama, out, corpus, "--widths", widths)
    assert_refused(args, out, message, inputs=[llama, corpus])
    assert not (tmp_path / "o.train-state").exists()


def test_loss_weights_must_match_the_widths(llama, corpus, tmp_path):
    out = tmp_path / "o"
    args = nest_args(llama, out, corpus, "--loss-weights", "1,1")
    assert_refused(args, out, "2 weights for 4", inputs=[llama])


def test_a_model_with_no_ffn_in_its_family_data_is_refused(llama, corpus, tmp_path, monkeypatch):
    import matcli.arch as arch

    families = arch.families()
    no_ffn = families["llama"].model_copy(
        update={"ffn": arch.FfnNames(gate=None, up="mlp.missing_up", down="mlp.missing_down")}
    )
    monkeypatch.setattr(arch, "families", lambda: {**families, "llama": no_ffn})
    out = tmp_path / "o"
    assert_refused(nest_args(llama, out, corpus), out, "has no FFN", inputs=[llama])


# --- Gemma 3n: per-layer widths, activation sparsity, Mix'n'Match -------------------------------


@pytest.fixture(scope="module")
def nested_gemma3n(tmp_path_factory, text_file) -> Path:
    from conftest import build_gemma3n_text, char_tokenizer

    dense = build_gemma3n_text(tmp_path_factory.mktemp("g3n") / "dense")
    char_tokenizer().save_pretrained(dense)
    out = dense.parent / "nested"
    code, _, err = run_matcli(*nest_args(dense, out, text_file, "--steps", "2"))
    assert code == 0, err
    return out


def test_gemma3n_granularities_are_what_extract_cuts(nested_gemma3n, tmp_path):
    """Per-layer FFN widths (128, 128, 256, 256) and activation sparsity over the active
    width: the granularity trained in memory is still exactly the extracted model."""
    model, ffn = nested_model(nested_gemma3n)
    assert ffn.widths == [[32, 64, 96, 128]] * 2 + [[64, 128, 192, 256]] * 2
    out = tmp_path / "half"
    assert run_matcli("extract", str(nested_gemma3n), "-o", str(out), "--ffn-config", "0.5")[0] == 0
    tokens = torch.randint(0, 99, (2, 20))
    with torch.no_grad(), ffn.at(1):
        expected = model(tokens).logits
    with torch.no_grad():
        assert torch.equal(load(out)(tokens).logits, expected)


def test_budget_mixes_the_trained_granularities_per_layer(nested_gemma3n, tmp_path):
    """Mix'n'Match on a nested Gemma 3n: --budget's choice uses only trained widths, non-
    decreasing in granularity with depth, and eval --ffn-config evaluates that choice."""
    from matcli.checkpoint.reader import ModelFolder

    with ModelFolder(nested_gemma3n) as folder:
        total = sum(t.numel for t in folder.tensors.values())
    out = tmp_path / "mix"
    budget = str(total - 3 * 64 * 48)  # below full: some layers must drop a granularity
    code, _, err = run_matcli("extract", str(nested_gemma3n), "-o", str(out), "--budget", budget)
    assert code == 0 and "not trained" not in err, err
    widths = json.loads((out / "config.json").read_text())["intermediate_size"]
    trained = json.loads((nested_gemma3n / "config.json").read_text())["matcli"]
    levels = [layer.index(w) for w, layer in zip(widths, trained["trained_ffn_widths"])]
    assert levels == sorted(levels) and len(set(levels)) == 2, widths
    spec = ",".join(map(str, widths))
    args = ["eval", str(nested_gemma3n), "--data", str(tmp_path / "t.txt"), "--ffn-config", spec]
    (tmp_path / "t.txt").write_text("the cat sat on the mat. " * 20)
    code, text, err = run_matcli(*args, "--seq-len", "16", "--json")
    assert code == 0, err
    assert json.loads(text)["results"][0]["perplexity"] > 1


def test_a_malformed_nested_record_is_refused(nested, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(nested, broken)
    config = json.loads((broken / "config.json").read_text())
    config["matcli"]["trained_ffn_widths"] = [[64, 32, 128], [32, 64, 96, 128]]
    (broken / "config.json").write_text(json.dumps(config))
    out = tmp_path / "o"
    args = ["extract", str(broken), "-o", str(out), "--ffn-config", "0.5"]
    assert_refused(args, out, "trained_ffn_widths does not describe", inputs=[broken])
