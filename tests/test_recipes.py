"""Recipes: every shipped recipe validates; flags override recipe values; typos are errors."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from conftest import run_matcli

from matcli.options import QuantizeOptions, SliceOptions, read_recipe

RECIPES = sorted((Path(__file__).resolve().parent.parent / "recipes").glob("*.yaml"))


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_shipped_recipes_validate(path):
    """Every recipe loads into its command's options (training recipes get a --data)."""
    data = read_recipe(path)
    if "method" in data:
        options = QuantizeOptions(model="m", output="o", **{"data": "c4.jsonl", **data})
        assert options.method == data["method"]
        if options.method in ("qat", "omniquant"):
            assert len(options.loss_weights) == len(options.train_bits)
    else:
        SliceOptions(parent="p", output="o", **data)


def test_recipe_then_flag_override(llama, tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("bits: 4\nscheme: asymmetric\nlayers: ffn,attention\n")
    out = tmp_path / "p"
    code, _, err = run_matcli(
        "quantize",
        str(llama),
        "-o",
        str(out),
        "--recipe",
        str(recipe),
        "--scheme",
        "symmetric",
        "-q",
    )
    assert code == 0, err
    config = json.loads((out / "config.json").read_text())["matcli"]
    assert (
        config["parent_bits"] == 4
        and config["scheme"] == "symmetric"
        and config["layers"] == "ffn,attention"
    )
    manifest = json.loads((out / "matcli_manifest.json").read_text())
    assert manifest["options"]["bits"] == 4
    assert (
        manifest["command_line"][:2] == ["matcli", "quantize"]
        and "--recipe" in manifest["command_line"]
    )
    assert manifest["recipe"] == {
        "path": str(recipe),
        "sha256": hashlib.sha256(recipe.read_bytes()).hexdigest(),
    }


def test_recipe_typo_is_refused(llama, tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("bitz: 4\n")
    code, _, err = run_matcli(
        "quantize", str(llama), "-o", str(tmp_path / "p"), "--recipe", str(recipe)
    )
    assert code == 2 and "bitz" in err and not (tmp_path / "p").exists()


def test_train_bits_flag_resets_the_recipes_loss_weights(llama, text_file, tmp_path):
    """lambda belong to the widths they weigh: --train-bits on top of a recipe with
    loss_weights takes the default weights of the new widths (unless --loss-weights is given)."""
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "method: qat\nseq_len: 32\ntrain_bits: [8, 4, 2]\nloss_weights: [0.1, 0.1, 1.0]\n"
    )
    base = [
        "quantize",
        str(llama),
        "-o",
        str(tmp_path / "p"),
        "--recipe",
        str(recipe),
        "--data",
        str(text_file),
        "--dry-run",
        "--json",
    ]
    code, out, err = run_matcli(*base, "--train-bits", "4,2")
    assert code == 0, err
    (change,) = [c for c in json.loads(out)["outputs"][0]["config_changes"] if c["key"] == "matcli"]
    assert change["after"]["trained_bits"] == [4, 2] and change["after"]["loss_weights"] == [
        1.0,
        1.0,
    ]
    code, _, err = run_matcli(*base, "--train-bits", "2", "--loss-weights", "0.5,1")
    assert code == 2 and "2 weights for 1" in err
