"""Architecture data: every family loads, resolves, and finds its Linears."""

from __future__ import annotations

import re

import pytest

from matcli.arch import Architecture, families, family_for_model_type, resolve
from matcli.errors import MatcliError

EXPECTED_TYPES = {
    "llama",
    "mistral",
    "qwen2",
    "qwen3",
    "gemma2",
    "gemma3_text",
    "gemma3",
    "gemma3n_text",
    "gemma3n",
    "bert",
}


def test_every_family_loads_and_covers_the_supported_types():
    types = {t for f in families().values() for t in f.model_types}
    assert types >= EXPECTED_TYPES


@pytest.mark.parametrize(
    ("model_type", "names", "module", "kind", "layer"),
    [
        ("llama", ["model.layers.3.mlp.up_proj.weight"], "model.layers.3.mlp.up_proj", "ffn", 3),
        (
            "qwen3",
            ["model.layers.0.self_attn.k_proj.weight"],
            "model.layers.0.self_attn.k_proj",
            "attention",
            0,
        ),
        (
            "gemma3n",
            ["model.language_model.layers.7.mlp.down_proj.weight"],
            "model.language_model.layers.7.mlp.down_proj",
            "ffn",
            7,
        ),
        (
            "gemma3",
            ["language_model.model.layers.2.mlp.gate_proj.weight"],
            "language_model.model.layers.2.mlp.gate_proj",
            "ffn",
            2,
        ),
        ("bert", ["encoder.layer.1.output.dense.weight"], "encoder.layer.1.output.dense", "ffn", 1),
        (
            "bert",
            ["encoder.layer.1.attention.output.dense.weight"],
            "encoder.layer.1.attention.output.dense",
            "attention",
            1,
        ),
        (
            "llama",
            ["model.layers.0.mlp.gate_up_proj.weight"],
            "model.layers.0.mlp.gate_up_proj",
            "ffn",
            0,
        ),
    ],
)
def test_layer_and_kind(model_type, names, module, kind, layer):
    arch = resolve({"model_type": model_type}, names)
    assert arch.linear_kind(module) == kind
    assert arch.split_layer(module + ".")[0] == layer


def test_unknown_family_names_the_file_to_add():
    with pytest.raises(MatcliError, match=r"matcli/arch/families/phi9\.yaml"):
        family_for_model_type("phi9")


def test_wrong_layout_is_reported():
    with pytest.raises(MatcliError, match="layer prefixes"):
        Architecture(family_for_model_type("llama"), ["transformer.h.0.mlp.c_fc.weight"])


def test_projection_regex_matches_every_layout_of_the_family():
    arch = resolve({"model_type": "gemma3"}, ["language_model.model.layers.0.mlp.up_proj.weight"])
    pattern = re.compile(arch.projection_regex([0, 1], ["mlp.up_proj"]))
    assert pattern.match("model.language_model.layers.1.mlp.up_proj")  # transformers v5 module name
    assert pattern.match("language_model.model.layers.0.mlp.up_proj")
    assert not pattern.match("model.language_model.layers.2.mlp.up_proj")
    assert not pattern.match("model.vision_tower.encoder.layers.0.mlp.up_proj")


def test_matformer_family_data():
    gemma3n, llama = family_for_model_type("gemma3n"), family_for_model_type("llama")
    assert gemma3n.trained_ffn_widths == (8192, 16384) and llama.trained_ffn_widths is None
    assert gemma3n.takes_per_layer_intermediate({"intermediate_size": 16384})
    assert not llama.takes_per_layer_intermediate({"intermediate_size": 128})
    assert llama.takes_per_layer_intermediate(
        {"intermediate_size": [128, 64]}
    )  # a config that already holds a list
    assert "self_attn.k_proj.weight" in gemma3n.kv_sharing.optional_in_shared_layers


def test_effective_count_leaves_out_embeddings_and_towers():
    arch = resolve({"model_type": "gemma3n"}, ["model.language_model.layers.0.mlp.up_proj.weight"])
    assert arch.counts_as_effective("model.language_model.layers.0.mlp.up_proj.weight")
    for name in (
        "model.language_model.embed_tokens_per_layer.weight",
        "model.vision_tower.timm_model.conv_stem.conv.weight",
        "model.embed_audio.embedding.weight",
    ):
        assert not arch.counts_as_effective(name)
