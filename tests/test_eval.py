"""`matcli eval`: perplexity, in-memory slicing, and the transformers path agree."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import run_matcli

from matcli.evaluate import load_model, perplexity


def test_perplexity_is_exp_of_mean_token_nll(llama):
    model = load_model(llama)
    windows = torch.randint(0, 98, (3, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logp = torch.log_softmax(model(windows).logits.double(), -1)
    nll = -logp[:, :-1].gather(-1, windows[:, 1:, None]).mean().item()
    assert math.isclose(perplexity(model, windows, batch_size=2), math.exp(nll), rel_tol=1e-5)


def test_eval_parent_at_several_widths(llama, llama_parent, text_file):
    code, out, err = run_matcli(
        "eval",
        str(llama_parent),
        "--data",
        str(text_file),
        "--bits",
        "8,4,2",
        "--seq-len",
        "64",
        "--json",
    )
    assert code == 0, err
    results = json.loads(out)["results"]
    assert [r["bits"] for r in results] == [8, 4, 2]
    dense = json.loads(
        run_matcli("eval", str(llama), "--data", str(text_file), "--seq-len", "64", "--json")[1]
    )["results"][0]
    assert dense["bits"] is None
    assert abs(results[0]["perplexity"] / dense["perplexity"] - 1) < 0.01  # int8 is close to dense


def test_eval_plot(llama_parent, text_file, tmp_path):
    plot = tmp_path / "ppl.png"
    code, _, err = run_matcli(
        "eval",
        str(llama_parent),
        "--data",
        str(text_file),
        "--bits",
        "8,2",
        "--seq-len",
        "64",
        "--plot",
        str(plot),
        "--json",
    )
    assert code == 0, err
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_in_memory_slice_equals_the_written_slice(llama_parent, text_file, tmp_path):
    assert (
        run_matcli("slice", str(llama_parent), "--bits", "3", "-o", str(tmp_path / "s"), "-q")[0]
        == 0
    )
    args = ("--data", str(text_file), "--seq-len", "64", "--json")
    in_memory = json.loads(run_matcli("eval", str(llama_parent), "--bits", "3", *args)[1])[
        "results"
    ][0]
    written = json.loads(run_matcli("eval", str(tmp_path / "s"), *args)[1])["results"][0]
    assert written["bits"] == 3
    assert math.isclose(in_memory["perplexity"], written["perplexity"], rel_tol=1e-6)


def test_eval_refusals(llama, text_file, tmp_path):
    code, _, err = run_matcli("eval", str(llama), "--data", str(text_file), "--bits", "2")
    assert code == 2 and "needs a quantized parent" in err
    code, _, err = run_matcli("eval", str(llama), "--data", str(text_file), "--seq-len", "100000")
    assert code == 2 and "fewer than one --seq-len window" in err
    code, _, err = run_matcli("eval", str(llama), "--data", str(tmp_path / "none.txt"))
    assert code == 2 and "does not exist" in err


@pytest.mark.parametrize(
    ("device", "message"), [("tpu", "not a device"), ("cuda:99", "CUDA device")]
)
def test_eval_refuses_a_device_it_does_not_have(llama, text_file, device, message):
    code, _, err = run_matcli("eval", str(llama), "--data", str(text_file), "--device", device)
    assert code == 2 and message in err and "Traceback" not in err, err
