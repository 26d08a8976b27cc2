"""A truncated sentence-transformers folder follows the library's own conventions: a loaded
model reports truncate_dim and the dimension d, a re-save by sentence-transformers rewrites
neither modules.json nor the added modules, and the outputs stay the truncated ones."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import torch
from test_mrl import TEXTS, encode, ok, truncate_reference

ADDED = ["LayerNorm", "Dense", "Normalize"]  # what --pre-norm layer_norm --dims 16 appends


def load(path: Path):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(path), device="cpu")


def test_a_loaded_model_reports_truncate_dim_and_outputs_the_truncated_vectors(
    sentence_model, tmp_path
):
    ok(str(sentence_model), "-o", str(tmp_path / "m"), "--dims", "16,8", "-q")
    full = encode(sentence_model, TEXTS)
    for d in (16, 8):
        model = load(tmp_path / "m" / f"d{d}")
        assert model.truncate_dim == d
        assert model.get_embedding_dimension() == d  # get_sentence_embedding_dimension before 6
        assert np.allclose(model.encode(TEXTS), truncate_reference(full, d), atol=1e-6)
    config = json.loads((tmp_path / "m" / "d8" / "config_sentence_transformers.json").read_text())
    original = json.loads((sentence_model / "config_sentence_transformers.json").read_text())
    assert config == original | {"truncate_dim": 8}  # prompts, similarity, versions kept


def test_a_resave_by_sentence_transformers_changes_nothing(sentence_model, tmp_path):
    out = tmp_path / "m"
    ok(str(sentence_model), "-o", str(out), "--dims", "16", "--pre-norm", "layer_norm", "-q")
    modules = json.loads((out / "modules.json").read_text())
    assert [m["path"] for m in modules[-3:]] == [f"{3 + i}_{kind}" for i, kind in enumerate(ADDED)]
    model = load(out)
    model.save(str(tmp_path / "resaved"))
    resaved = tmp_path / "resaved"
    assert (resaved / "modules.json").read_text() == (out / "modules.json").read_text()
    for module in modules[-3:]:
        assert (resaved / module["path"] / "config.json").read_text() == (
            out / module["path"] / "config.json"
        ).read_text()
    assert load(resaved).truncate_dim == 16
    expected = torch.nn.functional.layer_norm(
        torch.from_numpy(encode(sentence_model, TEXTS)), (48,)
    ).numpy()
    assert np.allclose(encode(resaved, TEXTS), truncate_reference(expected, 16), atol=1e-5)


def test_a_folder_saved_by_an_older_version_keeps_its_type_spelling(sentence_model, tmp_path):
    """Types written as `sentence_transformers.models.X` (versions before 6) stay that way for
    the added modules, so the version that saved the input can load the output; the folder
    names are the ones any version's save() gives."""
    old = tmp_path / "old"
    shutil.copytree(sentence_model, old)
    modules = json.loads((old / "modules.json").read_text())
    for m in modules:
        m["type"] = "sentence_transformers.models." + m["type"].rsplit(".", 1)[-1]
    (old / "modules.json").write_text(json.dumps(modules, indent=2))
    (old / "config_sentence_transformers.json").unlink()  # folders from before version 2
    ok(str(old), "-o", str(tmp_path / "m"), "--dims", "8", "-q")
    written = json.loads((tmp_path / "m" / "modules.json").read_text())
    assert [(m["path"], m["type"]) for m in written[3:]] == [
        ("3_Dense", "sentence_transformers.models.Dense"),
        ("4_Normalize", "sentence_transformers.models.Normalize"),
    ]
    model = load(tmp_path / "m")
    assert model.truncate_dim == 8
    model.save(str(tmp_path / "resaved"))
    resaved = json.loads((tmp_path / "resaved" / "modules.json").read_text())
    assert [(m["idx"], m["name"], m["path"]) for m in resaved] == [
        (m["idx"], m["name"], m["path"]) for m in written
    ]
