"""Hostile inputs beyond the model folder corpus (test_hostile_corpus.py): config.json fields
of the wrong type or disagreeing with the weights, non-finite weights and scales where a
command transforms them, and the inputs of eval, truncate-embeddings and eval-retrieval.
Each case: exit code 2, exactly one `error:` line, no traceback, nothing written, inputs
unchanged (conftest.assert_refused)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import assert_refused


def _copy(source: Path, tmp_path: Path, name: str = "model") -> Path:
    return Path(shutil.copytree(source, tmp_path / name))


def _edit_config(folder: Path, **fields) -> None:
    config = json.loads((folder / "config.json").read_text())
    config.update(fields)
    (folder / "config.json").write_text(json.dumps(config))


def _edit_tensor(folder: Path, name: str, edit: Callable) -> None:
    from safetensors.torch import load_file, save_file

    tensors = load_file(folder / "model.safetensors")
    edit(tensors[name])
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})


# --- config.json fields: typed accessors ---------------------------------------------------

TYPED_FIELDS = [
    ({"hidden_size": "two"}, "config.json: hidden_size must be a positive whole number, not 'two'"),
    ({"num_attention_heads": 0}, "num_attention_heads must be a positive whole number, not 0"),
    ({"num_key_value_heads": 2.5}, "num_key_value_heads must be a positive whole number, not 2.5"),
    ({"head_dim": [16]}, "head_dim must be a positive whole number, not [16]"),
    ({"vocab_size": True}, "vocab_size must be a positive whole number, not True"),
    ({"intermediate_size": -128}, "intermediate_size must be a positive whole number or a list"),
    ({"intermediate_size": [128, "x"]}, "intermediate_size must be a positive whole number or"),
    ({"model_type": 3}, "config.json: model_type must be a string, not 3"),
    ({"model_type": "gemma3", "text_config": [1]}, "text_config must be an object, not [1]"),
    ({"num_hidden_layers": None}, "config.json has no num_hidden_layers"),
]
COMMANDS = {
    "extract": (False, ["extract", "{m}", "--ffn-config", "0.5"]),
    "quantize": (False, ["quantize", "{m}", "--method", "rtn", "--layers", "ffn,attention"]),
    "slice": (True, ["slice", "{m}", "--bits", "4"]),
}


def _refuse(request, tmp_path, command: str, edit: Callable[[Path], None], match: str) -> None:
    on_parent, args = COMMANDS[command]
    model = _copy(request.getfixturevalue("llama_parent" if on_parent else "llama"), tmp_path)
    edit(model)
    out = tmp_path / "out"
    argv = [a.format(m=model) for a in args] + ["-o", str(out), "-q"]
    assert_refused(argv, out, match, inputs=[model])


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize(("fields", "match"), TYPED_FIELDS, ids=lambda v: str(v)[:40])
def test_config_field_of_the_wrong_type(request, tmp_path, command, fields, match):
    _refuse(request, tmp_path, command, lambda m: _edit_config(m, **fields), match)


# --- shapes against config.json ------------------------------------------------------------

K_PROJ = "model.layers.0.self_attn.k_proj.weight has shape [32, 64] but config.json says "
GATE = "model.layers.0.mlp.gate_proj.weight{} [128, 64] but config.json says "
SHAPES = [
    ("quantize", {"num_key_value_heads": 4}, K_PROJ + "[64 (num_key_value_heads x head_dim), 64"),
    ("extract", {"num_key_value_heads": 4}, K_PROJ + "[64 (num_key_value_heads x head_dim), 64"),
    ("quantize", {"head_dim": 8}, "q_proj.weight has shape [64, 64] but config.json says [32 ("),
    ("quantize", {"intermediate_size": 96}, GATE.format(" has shape") + "[96 (intermediate_size"),
    ("slice", {"intermediate_size": 96}, GATE.format("_shape holds") + "[96 (intermediate_size"),
    ("slice", {"hidden_size": 32}, GATE.format("_shape holds") + "[128 (intermediate_size[0]), 32"),
    ("extract", {"hidden_size": 32}, GATE.format(" has shape") + "[128 (intermediate_size[0]), 32"),
    ("quantize", {"vocab_size": 100}, "model.embed_tokens.weight has shape [128, 64] but config"),
    (
        "quantize",
        {"head_dim": None, "num_attention_heads": 5},
        "q_proj.weight has 64 rows, not a whole number of config.json's num_attention_heads (5)",
    ),
]


@pytest.mark.parametrize(("command", "fields", "match"), SHAPES, ids=lambda v: str(v)[:30])
def test_shape_that_disagrees_with_the_config(request, tmp_path, command, fields, match):
    _refuse(request, tmp_path, command, lambda m: _edit_config(m, **fields), match)


# --- non-finite values where weights are transformed ---------------------------------------

SCALE = "model.layers.1.mlp.up_proj.weight_scale"


@pytest.mark.parametrize("value", [float("nan"), float("inf"), 0.0, -0.5])
@pytest.mark.parametrize("form", ["compressed-tensors", "dense"])
def test_bad_scales_are_refused_while_slicing(llama_parent, tmp_path, value, form):
    parent = _copy(llama_parent, tmp_path, "parent")

    def spoil(scale):
        scale[3, 0] = value
        scale[7, 0] = value

    _edit_tensor(parent, SCALE, spoil)
    out = tmp_path / "out"
    assert_refused(
        ["slice", str(parent), "--bits", "4", "--format", form, "-o", str(out), "-q"],
        out,
        f"{SCALE} holds 2 NaN, infinite, zero or negative scale(s) (the first in row 3)",
        inputs=[parent],
    )


@pytest.mark.parametrize("value", [float("nan"), float("-inf")])
@pytest.mark.parametrize("command", ["reorder", "extract --reorder"])
def test_non_finite_ffn_weights_are_refused_while_ranking(llama, tmp_path, value, command):
    model = _copy(llama, tmp_path)
    name = "model.layers.1.mlp.down_proj.weight"
    _edit_tensor(model, name, lambda w: w.__setitem__((slice(2, 4), 5), value))
    data = tmp_path / "calibration.txt"
    data.write_text("the cat sat on the mat. " * 50)
    out = tmp_path / "out"
    args = [*command.split(), str(model), "--data", str(data), "-o", str(out), "-q"]
    if command != "reorder":
        args += ["--ffn-config", "0.5"]
    assert_refused(
        args, out, f"{name} holds 2 NaN or infinite value(s) (the first in row 2)", inputs=[model]
    )
