"""Recipes: every shipped recipe validates; flags override recipe values; typos are errors."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from conftest import run_matcli
from matcli.recipe import QuantizeOptions, SliceOptions, read_recipe

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
    code, _, err = run_matcli("quantize", str(llama), "-o", str(out), "--recipe", str(recipe), "--scheme", "symmetric", "-q")
    assert code == 0, err
    config = json.loads((out / "config.json").read_text())["matcli"]
    assert config["parent_bits"] == 4 and config["scheme"] == "symmetric" and config["layers"] == "ffn,attention"
    manifest = json.loads((out / "matcli_manifest.json").read_text())
    assert manifest["options"]["bits"] == 4
    assert manifest["command_line"][:2] == ["matcli", "quantize"] and "--recipe" in manifest["command_line"]
    assert manifest["recipe"] == {"path": str(recipe), "sha256": hashlib.sha256(recipe.read_bytes()).hexdigest()}


def test_recipe_typo_is_refused(llama, tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("bitz: 4\n")
    code, _, err = run_matcli("quantize", str(llama), "-o", str(tmp_path / "p"), "--recipe", str(recipe))
    assert code == 2 and "bitz" in err and not (tmp_path / "p").exists()
