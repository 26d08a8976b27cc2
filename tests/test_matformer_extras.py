"""--reorder / matcli reorder, --budget, and eval --ffn-config."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from conftest import run_matcli
from safetensors.torch import save_file
from test_extract import config_changes, dry_run_plan, edited_copy, load, refused

from matcli.matformer.budget import candidates, parse_budget
from matcli.matformer.ffn_config import trained_widths


def logits(model, tokens):
    with torch.no_grad():
        return model(tokens).logits


@pytest.fixture(scope="module")
def tokens():
    return torch.randint(3, 98, (2, 32), generator=torch.Generator().manual_seed(1))


def test_reorder_keeps_the_function_and_makes_prefixes_the_important_neurons(
    llama, text_file, tmp_path, tokens
):
    reordered = tmp_path / "reordered"
    code, _, err = run_matcli(
        "reorder",
        str(llama),
        "-o",
        str(reordered),
        "--data",
        str(text_file),
        "--seq-len",
        "64",
        "-q",
    )
    assert code == 0, err
    dense, permuted = load(llama), load(reordered)
    assert torch.allclose(logits(dense, tokens), logits(permuted, tokens), atol=1e-5)
    assert json.loads((reordered / "config.json").read_text())["matcli"]["role"] == "reorder"

    # A prefix of the reordered model == extract --reorder of the original (same neurons).
    prefix, chosen = tmp_path / "prefix", tmp_path / "chosen"
    assert (
        run_matcli("extract", str(reordered), "-o", str(prefix), "--ffn-config", "m", "-q")[0] == 0
    )
    assert (
        run_matcli(
            "extract",
            str(llama),
            "-o",
            str(chosen),
            "--ffn-config",
            "m",
            "--reorder",
            "--data",
            str(text_file),
            "--seq-len",
            "64",
            "-q",
        )[0]
        == 0
    )
    assert torch.allclose(logits(load(prefix), tokens), logits(load(chosen), tokens), atol=1e-5)

    # Keeping the important neurons stays closer to the dense model than keeping the first ones.
    plain = tmp_path / "plain"
    assert run_matcli("extract", str(llama), "-o", str(plain), "--ffn-config", "m", "-q")[0] == 0
    reference = logits(dense, tokens)
    error = {
        name: (logits(load(tmp_path / name), tokens) - reference).pow(2).mean().item()
        for name in ("plain", "chosen")
    }
    assert error["chosen"] < error["plain"]


def test_budget_parsing():
    assert parse_budget("2.5e9") == ("parameters", 2_500_000_000)
    assert parse_budget("900M") == ("parameters", 900_000_000)
    assert parse_budget("4GB") == ("bytes", 4_000_000_000)


def test_budget_candidates_are_non_decreasing_with_one_step():
    ratios = trained_widths(None, 128)
    assert ratios == [16, 32, 64, 128]
    for widths in candidates([ratios] * 4):
        assert widths == sorted(widths) and len(set(widths)) <= 2
    assert all(len(set(w)) == 1 for w in candidates([ratios] * 4, uniform_only=True))
    assert len(candidates([ratios] * 4, uniform_only=True)) == 4


def test_budget_candidates_use_the_trained_widths():
    """Gemma 3n's trained widths (8192, 16384) apply to layers whose full width is one of them."""
    gemma = (8192, 16384)
    assert trained_widths(gemma, 16384) == [8192, 16384]
    assert trained_widths(gemma, 8192) == [8192]
    assert trained_widths(gemma, 128) == [16, 32, 64, 128]  # a scaled-down model: the ratios
    got = candidates([trained_widths(gemma, 16384)] * 3)
    assert sorted(got) == [[8192] * 3, [8192, 8192, 16384], [8192, 16384, 16384], [16384] * 3]
    # A layer with fewer levels repeats its smallest.
    assert sorted(candidates([[8192], [8192, 16384]])) == [[8192, 8192], [8192, 16384]]


def test_budget_picks_the_largest_fitting_submodel(gemma3n_35, tmp_path):
    # The model has 572,280 parameters, 430,080 of them in FFNs (35 layers x 3 x 32 x 128).
    code, out, err = run_matcli(
        "extract",
        str(gemma3n_35),
        "-o",
        str(tmp_path / "o"),
        "--budget",
        "400000",
        "--dry-run",
        "--json",
    )
    assert code == 0, err
    plan = json.loads(out)
    after = plan["report"]["parameters_after"]["total"]
    widths = next(
        c["after"] for c in plan["outputs"][0]["config_changes"] if c["key"] == "intermediate_size"
    )
    assert after <= 400_000 and widths == sorted(widths) and len(set(widths)) == 2
    # Moving one more layer up to the larger width would break the budget.
    per_neuron = 3 * 32  # a gate row, an up row and a down column
    assert after + per_neuron * (max(widths) - min(widths)) > 400_000
    refused(
        ("extract", str(gemma3n_35), "-o", str(tmp_path / "o"), "--budget", "1000"),
        tmp_path / "o",
        "no submodel fits",
    )


def test_budget_of_effective_parameters(gemma3n_35, tmp_path):
    """--budget-of effective leaves out the embeddings (the report's effective count), so the
    same number buys a larger submodel than a budget on every tensor."""
    args = ("extract", str(gemma3n_35), "-o", str(tmp_path / "o"), "--budget", "400000")
    total = dry_run_plan(*args)["report"]["parameters_after"]
    effective = dry_run_plan(*args, "--budget-of", "effective")["report"]["parameters_after"]
    assert total["total"] <= 400_000 and effective["effective"] <= 400_000 < effective["total"]
    assert effective["effective"] > total["effective"]


def test_eval_ffn_config_equals_the_extracted_folder(llama, text_file, tmp_path):
    assert (
        run_matcli(
            "extract", str(llama), "-o", str(tmp_path / "half"), "--ffn-config", "0.5", "-q"
        )[0]
        == 0
    )
    args = ("--data", str(text_file), "--seq-len", "64", "--json")
    in_memory = json.loads(run_matcli("eval", str(llama), "--ffn-config", "0.5", *args)[1])[
        "results"
    ][0]
    written = json.loads(run_matcli("eval", str(tmp_path / "half"), *args)[1])["results"][0]
    assert math.isclose(in_memory["perplexity"], written["perplexity"], rel_tol=1e-6)


def test_extract_needs_data_for_reorder(llama, tmp_path):
    refused(
        ("extract", str(llama), "-o", str(tmp_path / "o"), "--ffn-config", "m", "--reorder"),
        tmp_path / "o",
        "--data",
    )


def test_budget_ranked_by_calibration_loss(llama, text_file, tmp_path):
    """Neurons 32..63 of every FFN are made harmful, so the largest submodel under the budget
    (width 64) is no longer the best: --rank-by-loss must pick the candidate whose measured
    loss is lowest, which is not the size-only pick."""
    from safetensors.torch import load_file

    state = load_file(llama / "model.safetensors")
    unk = state["lm_head.weight"][0]  # token 0, <unk>, never occurs in the text
    unk *= 10
    for i in range(2):
        p = f"model.layers.{i}.mlp."
        state[p + "up_proj.weight"][32:64] = state[p + "gate_proj.weight"][
            32:64
        ]  # silu(z) * z >= 0: always on
        state[p + "down_proj.weight"][:, 32:64] = 10 * (unk / unk.norm()).unsqueeze(
            1
        )  # ... and pushing towards <unk>
    sabotaged = edited_copy(llama, tmp_path / "sabotaged")
    save_file(state, sabotaged / "model.safetensors", metadata={"format": "pt"})
    # 41,280 parameters outside the FFNs + 2 x 3 x 64 per neuron: widths 16, 32, 64 fit, 128
    # does not.
    data = ("--data", str(text_file), "--seq-len", "64", "--max-tokens", "2048")
    args = ("extract", str(sabotaged), "-o", str(tmp_path / "o"), "--budget", "80000")
    by_size = config_changes(dry_run_plan(*args))["intermediate_size"]
    by_loss = config_changes(dry_run_plan(*args, "--rank-by-loss", *data))["intermediate_size"]
    perplexity = {
        width: json.loads(
            run_matcli("eval", str(sabotaged), "--ffn-config", str(width), *data, "--json")[1]
        )["results"][0]["perplexity"]
        for width in (16, 32, 64)
    }
    assert (
        by_size == 64 and by_loss == min(perplexity, key=perplexity.get) and by_loss != by_size
    ), perplexity
    assert not (tmp_path / "o").exists()


def test_extract_unknown_family(llama, tmp_path):
    import shutil

    odd = Path(shutil.copytree(llama, tmp_path / "odd"))
    config = json.loads((odd / "config.json").read_text())
    config["model_type"] = "newfangled"
    (odd / "config.json").write_text(json.dumps(config))
    refused(
        ("extract", str(odd), "-o", str(tmp_path / "o"), "--ffn-config", "0.5"),
        tmp_path / "o",
        "matcli/arch/families/newfangled.yaml",
    )
