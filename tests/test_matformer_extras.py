"""--reorder / matcli reorder, --budget, and eval --ffn-config."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from conftest import run_matcli
from matcli.matformer.budget import candidates, parse_budget
from test_extract import load


def logits(model, tokens):
    with torch.no_grad():
        return model(tokens).logits


@pytest.fixture(scope="module")
def tokens():
    return torch.randint(3, 98, (2, 32), generator=torch.Generator().manual_seed(1))


def test_reorder_keeps_the_function_and_makes_prefixes_the_important_neurons(llama, text_file, tmp_path, tokens):
    reordered = tmp_path / "reordered"
    code, _, err = run_matcli("reorder", str(llama), "-o", str(reordered), "--data", str(text_file), "--seq-len", "64", "-q")
    assert code == 0, err
    dense, permuted = load(llama), load(reordered)
    assert torch.allclose(logits(dense, tokens), logits(permuted, tokens), atol=1e-5)
    assert json.loads((reordered / "config.json").read_text())["matcli"]["role"] == "reorder"

    # A prefix of the reordered model == extract --reorder of the original (same neurons).
    prefix, chosen = tmp_path / "prefix", tmp_path / "chosen"
    assert run_matcli("extract", str(reordered), "-o", str(prefix), "--ffn-config", "m", "-q")[0] == 0
    assert run_matcli("extract", str(llama), "-o", str(chosen), "--ffn-config", "m", "--reorder", "--data", str(text_file), "--seq-len", "64", "-q")[0] == 0
    assert torch.allclose(logits(load(prefix), tokens), logits(load(chosen), tokens), atol=1e-5)

    # Keeping the important neurons stays closer to the dense model than keeping the first ones.
    plain = tmp_path / "plain"
    assert run_matcli("extract", str(llama), "-o", str(plain), "--ffn-config", "m", "-q")[0] == 0
    reference = logits(dense, tokens)
    error = {name: (logits(load(tmp_path / name), tokens) - reference).pow(2).mean().item() for name in ("plain", "chosen")}
    assert error["chosen"] < error["plain"]


def test_budget_parsing():
    assert parse_budget("2.5e9") == ("parameters", 2_500_000_000)
    assert parse_budget("900M") == ("parameters", 900_000_000)
    assert parse_budget("4GB") == ("bytes", 4_000_000_000)


def test_budget_candidates_are_non_decreasing_with_one_step():
    for widths in candidates([128] * 4, [0, 1, 2, 3]):
        assert widths == sorted(widths) and len(set(widths)) <= 2
    assert all(len(set(w)) == 1 for w in candidates([128] * 4, [0, 1, 2, 3], uniform_only=True))


def test_budget_picks_the_largest_fitting_submodel(gemma3n_35, tmp_path):
    # The model has 572,280 parameters, 430,080 of them in FFNs (35 layers x 3 x 32 x 128).
    code, out, err = run_matcli("extract", str(gemma3n_35), "-o", str(tmp_path / "o"), "--budget", "400000", "--dry-run", "--json")
    assert code == 0, err
    plan = json.loads(out)
    after = plan["report"]["parameters_after"]["total"]
    widths = next(c["after"] for c in plan["outputs"][0]["config_changes"] if c["key"] == "intermediate_size")
    assert after <= 400_000 and widths == sorted(widths) and len(set(widths)) == 2
    # Moving one more layer up to the larger width would break the budget.
    per_neuron = 3 * 32  # a gate row, an up row and a down column
    assert after + per_neuron * (max(widths) - min(widths)) > 400_000
    code, _, err = run_matcli("extract", str(gemma3n_35), "-o", str(tmp_path / "o"), "--budget", "1000")
    assert code == 2 and "no submodel fits" in err


def test_eval_ffn_config_equals_the_extracted_folder(llama, text_file, tmp_path):
    assert run_matcli("extract", str(llama), "-o", str(tmp_path / "half"), "--ffn-config", "0.5", "-q")[0] == 0
    args = ("--data", str(text_file), "--seq-len", "64", "--json")
    in_memory = json.loads(run_matcli("eval", str(llama), "--ffn-config", "0.5", *args)[1])["results"][0]
    written = json.loads(run_matcli("eval", str(tmp_path / "half"), *args)[1])["results"][0]
    assert math.isclose(in_memory["perplexity"], written["perplexity"], rel_tol=1e-6)


def test_extract_needs_data_for_reorder(llama, tmp_path):
    code, _, err = run_matcli("extract", str(llama), "-o", str(tmp_path / "o"), "--ffn-config", "m", "--reorder")
    assert code == 2 and "--data" in err


def test_budget_ranked_by_calibration_loss(llama, text_file, tmp_path):
    code, out, err = run_matcli(
        "extract", str(llama), "-o", str(tmp_path / "o"), "--budget", "80000", "--rank-by-loss",
        "--data", str(text_file), "--seq-len", "64", "--dry-run", "--json",
    )
    assert code == 0, err
    assert json.loads(out)["report"]["parameters_after"]["total"] <= 80_000


def test_extract_unknown_family(llama, tmp_path):
    import shutil

    odd = Path(shutil.copytree(llama, tmp_path / "odd"))
    config = json.loads((odd / "config.json").read_text())
    config["model_type"] = "newfangled"
    (odd / "config.json").write_text(json.dumps(config))
    code, _, err = run_matcli("extract", str(odd), "-o", str(tmp_path / "o"), "--ffn-config", "0.5")
    assert code == 2 and "matcli/arch/families/newfangled.yaml" in err and not (tmp_path / "o").exists()
