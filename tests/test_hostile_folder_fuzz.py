"""Fuzz of what a model folder is opened with besides the shards: config.json (through the
typed accessors and the shape check) and the index.
Random JSON values and random mutations of valid files either open (and then the folder's
facts are consistent) or raise MatcliError with a one-line message; nothing else."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.numpy import save_file

from matcli.arch import resolve
from matcli.checkpoint.reader import ModelFolder
from matcli.errors import MatcliError
from matcli.matformer.source import read_source

CONFIG = {
    "model_type": "llama",
    "num_hidden_layers": 1,
    "intermediate_size": 8,
    "hidden_size": 4,
    "num_attention_heads": 1,
}
TENSORS = {
    "model.layers.0.mlp.up_proj.weight": np.zeros((8, 4), np.float32),
    "model.layers.0.mlp.down_proj.weight": np.zeros((4, 8), np.float32),
}
INDEX = {"metadata": {}, "weight_map": dict.fromkeys(TENSORS, "model-00001-of-00001.safetensors")}

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)


@st.composite
def json_text(draw, valid: dict) -> bytes:
    """A valid file with one field replaced, a random JSON value, or a mutated valid text."""
    choice = draw(st.integers(0, 2))
    if choice == 0:
        changed = json.loads(json.dumps(valid))
        key = draw(st.sampled_from(sorted(changed)))
        changed[key] = draw(json_values)
        return json.dumps(changed).encode()
    if choice == 1:
        return json.dumps(draw(json_values)).encode()
    text = bytearray(json.dumps(valid).encode())
    for _ in range(draw(st.integers(1, 3))):
        text[draw(st.integers(0, len(text) - 1))] = draw(st.integers(0, 255))
    return bytes(text)


def _folder(root: Path, config: bytes, index: bytes) -> Path:
    folder = root / "model"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    save_file(TENSORS, str(folder / "model-00001-of-00001.safetensors"))
    (folder / "config.json").write_bytes(config)
    (folder / "model.safetensors.index.json").write_bytes(index)
    return folder


def check_open(folder: Path) -> None:
    try:
        with ModelFolder(folder) as model:
            arch = resolve(model.config, list(model.tensors))
            arch.num_layers(model.text_config(arch.family.text_config))
            assert set(model.tensors) == set(TENSORS)
            # The typed config accessors and the shape check (what extract and quantize run).
            assert read_source(model).full_widths == [8]
    except MatcliError as e:
        assert "\n" not in str(e)


def test_valid_seed_opens(tmp_path):
    check_open(_folder(tmp_path, json.dumps(CONFIG).encode(), json.dumps(INDEX).encode()))


FUZZ = dict(deadline=None, suppress_health_check=list(HealthCheck), database=None)


@settings(max_examples=300, **FUZZ)
@given(config=json_text(CONFIG), index=json_text(INDEX))
def test_fuzz_config_and_index(tmp_path_factory, config, index):
    check_open(_folder(tmp_path_factory.mktemp("fuzz"), config, index))


@pytest.mark.fuzz
@settings(max_examples=100_000, **FUZZ)
@given(config=json_text(CONFIG), index=json_text(INDEX))
def test_fuzz_config_and_index_long(tmp_path_factory, config, index):
    check_open(_folder(tmp_path_factory.mktemp("fuzz"), config, index))
