"""Hostile inputs beyond the model folder corpus (test_hostile_corpus.py): config.json fields
of the wrong type or disagreeing with the weights, non-finite weights and scales where a
command transforms them, and the inputs of eval, truncate-embeddings and eval-retrieval.
Each case: exit code 2, exactly one `error:` line, no traceback, nothing written, inputs
unchanged (conftest.assert_refused)."""

from __future__ import annotations

import json
import shutil
import struct
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from conftest import assert_refused
from test_hostile_corpus import CORRUPTIONS


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


# --- eval: model folder kinds and text files -----------------------------------------------

TEXT = "the cat sat on the mat. " * 40
DATA_FILES: dict[str, Callable[[Path], Path]] = {
    "binary .txt": lambda d: _write_bytes(d / "data.txt", bytes(range(256)) * 4),
    "latin-1 .txt": lambda d: _write_bytes(d / "data.txt", "caf\xe9 ".encode("latin-1") * 50),
    "empty .txt": lambda d: _write_bytes(d / "data.txt", b""),
    "missing .txt": lambda d: d / "missing.txt",
    "unknown suffix": lambda d: _write_bytes(d / "data.bin", TEXT.encode()),
    ".jsonl not JSON": lambda d: _write_bytes(d / "data.jsonl", b'{"text": "a"}\n{oops\n'),
    ".jsonl without text": lambda d: _write_bytes(d / "data.jsonl", b'{"body": "a"}\n'),
    ".jsonl binary": lambda d: _write_bytes(d / "data.jsonl", b"\x00\xff\xfe" * 30),
    ".parquet not parquet": lambda d: _write_bytes(d / "data.parquet", b"PAR1 not really"),
}


def _write_bytes(path: Path, content: bytes) -> Path:
    path.write_bytes(content)
    return path


def _text(tmp_path: Path) -> Path:
    return _write_bytes(tmp_path / "text.txt", TEXT.encode())


@pytest.mark.parametrize("kind", DATA_FILES)
def test_eval_refuses_bad_text(llama, tmp_path, kind):
    data = DATA_FILES[kind](tmp_path)
    args = ["eval", str(llama), "--data", str(data), "--seq-len", "16", "-q"]
    assert_refused(args, tmp_path / "none", "error: ", inputs=[llama])


# Every malformed model folder of the corpus, for eval of a dense model and of a parent
# sliced in memory (--bits).
EVAL_FOLDERS = [(corruption, parent) for corruption in CORRUPTIONS for parent in (False, True)]


@pytest.mark.parametrize(
    ("corruption", "parent"), EVAL_FOLDERS, ids=lambda v: {True: "--bits", False: "dense"}.get(v, v)
)
def test_eval_refuses_a_malformed_folder(request, tmp_path, corruption, parent):
    model = _copy(request.getfixturevalue("llama_parent" if parent else "llama"), tmp_path)
    CORRUPTIONS[corruption](model)
    args = ["eval", str(model), "--data", str(_text(tmp_path)), "--seq-len", "16", "-q"]
    assert_refused(args + (["--bits", "4"] if parent else []), tmp_path / "none", "error: ")


# --- truncate-embeddings and eval-retrieval: embedding files -------------------------------


def _npy_header(path: Path, header: str) -> Path:
    text = header.encode().ljust(118) + b"\n"
    path.write_bytes(b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text)) + text)
    return path


def _safetensors_raw(path: Path, header: bytes, data: bytes = b"") -> None:
    path.write_bytes(struct.pack("<Q", len(header)) + header + data)


EMBEDDINGS: dict[str, Callable[[Path], Path]] = {
    ".npy object dtype": lambda d: _save_npy(d, np.array([[object()] * 4] * 3, dtype=object)),
    ".npy 1-D": lambda d: _save_npy(d, np.zeros(8, np.float32)),
    ".npy 3-D": lambda d: _save_npy(d, np.zeros((2, 3, 4), np.float32)),
    ".npy integers": lambda d: _save_npy(d, np.zeros((4, 8), np.int32)),
    ".npy truncated": lambda d: _truncated(_save_npy(d, np.ones((16, 8), np.float32))),
    ".npy NaN row": lambda d: _save_npy(d, np.array([[1.0] * 8, [np.nan] * 8], np.float32)),
    ".npy pickle": lambda d: _pickle_npy(d / "e.npy"),
    ".npy bad header": lambda d: _npy_header(d / "e.npy", "{'descr': '<f4', 'shape': (2,"),
    ".npy not npy": lambda d: _write_bytes(d / "e.npy", b"just text, not an array"),
    ".npy empty file": lambda d: _write_bytes(d / "e.npy", b""),
    ".safetensors not JSON": lambda d: _st(d, b"{nope"),
    ".safetensors absurd length": lambda d: _write_bytes(
        d / "e.safetensors", struct.pack("<Q", 2**62) + b"{}"
    ),
    ".safetensors truncated": lambda d: _st(
        d, b'{"e": {"dtype": "F32", "shape": [4, 8], "data_offsets": [0, 128]}}', b"\0" * 64
    ),
    ".safetensors integer tensor": lambda d: _st(
        d, b'{"e": {"dtype": "I32", "shape": [2, 2], "data_offsets": [0, 16]}}', b"\0" * 16
    ),
    ".safetensors 1-D": lambda d: _st(
        d, b'{"e": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}', b"\0" * 16
    ),
    ".safetensors no tensors": lambda d: _st(d, b"{}"),
    ".parquet not parquet": lambda d: _write_bytes(d / "e.parquet", b"PAR1 garbage PAR1"),
    ".parquet no column": lambda d: _parquet(d, {"other": [[1.0, 2.0]]}),
    ".parquet strings": lambda d: _parquet(d, {"embedding": ["a", "b"]}),
    ".parquet ragged rows": lambda d: _parquet(d, {"embedding": [[1.0, 2.0], [1.0, 2.0, 3.0]]}),
    "unknown suffix": lambda d: _write_bytes(d / "e.csv", b"1,2,3\n"),
    "missing file": lambda d: d / "missing.npy",
    "a folder without modules.json": lambda d: (d / "folder").mkdir() or d / "folder",
}


def _save_npy(folder: Path, array: np.ndarray) -> Path:
    np.save(folder / "e.npy", array, allow_pickle=True)
    return folder / "e.npy"


def _pickle_npy(path: Path) -> Path:
    np.save(path, np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    return path


def _truncated(path: Path) -> Path:
    path.write_bytes(path.read_bytes()[:-40])
    return path


def _st(folder: Path, header: bytes, data: bytes = b"") -> Path:
    _safetensors_raw(folder / "e.safetensors", header, data)
    return folder / "e.safetensors"


def _parquet(folder: Path, columns: dict) -> Path:
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    pq.write_table(pa.table(columns), folder / "e.parquet")
    return folder / "e.parquet"


@pytest.mark.parametrize("kind", EMBEDDINGS)
def test_truncate_embeddings_refuses(tmp_path, kind):
    source = EMBEDDINGS[kind](tmp_path)
    out = tmp_path / "out"
    args = ["truncate-embeddings", str(source), "--dims", "2", "-o", str(out / "t.npy"), "-q"]
    out.mkdir()
    assert_refused(args, out, "error: ", inputs=[source] if source.exists() else [])


@pytest.mark.parametrize("side", ["corpus", "queries"])
@pytest.mark.parametrize("kind", [k for k in EMBEDDINGS if "modules.json" not in k])
def test_eval_retrieval_refuses(tmp_path, kind, side):
    good_dir = tmp_path / "good"
    good_dir.mkdir()
    good = _save_npy(good_dir, np.random.default_rng(0).normal(size=(20, 8)).astype(np.float32))
    bad = EMBEDDINGS[kind](tmp_path)
    files = {"corpus": good, "queries": good, side: bad}
    args = ["eval-retrieval", "--corpus", str(files["corpus"]), "--queries", str(files["queries"])]
    assert_refused([*args, "--dims", "4", "--k", "2", "-q"], tmp_path / "none", "error: ")


QRELS: dict[str, bytes | None] = {
    "missing": None,
    "binary .tsv": bytes(range(256)) * 2,
    "latin-1 .tsv": "q1\tcaf\xe9\t1\n".encode("latin-1"),
    "one column": b"q1\nq2\n",
    "relevance a word": b"q1\td1\tvery\nq2\td2\t1\n",
    "JSON not JSON": b"{q1: ",
    "JSON a list": b"[1, 2]",
    "JSON docs a list": b'{"q1": ["d1"]}',
    "JSON relevance a word": b'{"q1": {"d1": "high"}}',
}


@pytest.mark.parametrize("kind", QRELS)
def test_eval_retrieval_refuses_bad_qrels(tmp_path, kind):
    good = _save_npy(tmp_path, np.random.default_rng(0).normal(size=(20, 8)).astype(np.float32))
    qrels = tmp_path / ("qrels.json" if kind.startswith("JSON") else "qrels.tsv")
    if QRELS[kind] is not None:
        qrels.write_bytes(QRELS[kind])
    args = ["eval-retrieval", "--corpus", str(good), "--queries", str(good), "--qrels", str(qrels)]
    assert_refused([*args, "--dims", "4", "--k", "2", "-q"], tmp_path / "none", "error: ")


def _st_json(name: str, content: bytes | None) -> Callable[[Path], None]:
    def corrupt(folder: Path) -> None:
        if content is None:
            (folder / name).unlink()
        else:
            (folder / name).write_bytes(content)

    return corrupt


ST_FOLDERS: dict[str, Callable[[Path], None]] = {
    "modules.json not JSON": _st_json("modules.json", b"[{"),
    "modules.json an object": _st_json("modules.json", b'{"a": 1}'),
    "modules.json not UTF-8": _st_json("modules.json", b'[{"type": "\xff"}]'),
    "modules.json entries not objects": _st_json("modules.json", b"[1, 2]"),
    "module path outside": _st_json(
        "modules.json", b'[{"idx": 0, "name": "0", "path": "../..", "type": "x.Transformer"}]'
    ),
    "Pooling config missing": _st_json("1_Pooling/config.json", None),
    "Pooling config not JSON": _st_json("1_Pooling/config.json", b"{"),
    "Pooling dimension a word": _st_json(
        "1_Pooling/config.json", b'{"word_embedding_dimension": "big"}'
    ),
    "Pooling without dimension": _st_json("1_Pooling/config.json", b'{"pooling_mode": "mean"}'),
    "Transformer hidden_size a word": lambda f: _edit_config(f, hidden_size="big"),
}


@pytest.mark.parametrize("kind", ST_FOLDERS)
def test_truncate_embeddings_refuses_a_malformed_model(sentence_model, tmp_path, kind):
    model = _copy(sentence_model, tmp_path)
    ST_FOLDERS[kind](model)
    out = tmp_path / "out"
    args = ["truncate-embeddings", str(model), "--dims", "16", "-o", str(out), "-q"]
    assert_refused(args, out, "error: ", inputs=[model])


# --- a parent's own config blocks ----------------------------------------------------------

PARENT_BLOCKS = [
    ("inspect", {"matcli": [1]}, "config.json: matcli must be an object, not [1]"),
    ("eval", {"matcli": "parent"}, "config.json: matcli must be an object, not 'parent'"),
    ("inspect", {"matcli": {"role": "slice", "parent": 3}}, "parent must be an object, not 3"),
    ("slice", {"ignore": 5}, "quantization_config ignore must be a list of module names, not 5"),
]


@pytest.mark.parametrize(("command", "fields", "match"), PARENT_BLOCKS, ids=lambda v: str(v)[:30])
def test_parent_config_blocks(llama_parent, tmp_path, command, fields, match):
    parent = _copy(llama_parent, tmp_path, "parent")
    config = json.loads((parent / "config.json").read_text())
    if "ignore" in fields:
        config["quantization_config"].update(fields)
    else:
        config.update(fields)
    (parent / "config.json").write_text(json.dumps(config))
    out = tmp_path / "out"
    args = {
        "inspect": ["inspect", str(parent)],
        "eval": ["eval", str(parent), "--data", str(_text(tmp_path)), "--bits", "4", "-q"],
        "slice": ["slice", str(parent), "--bits", "4", "-o", str(out), "-q"],
    }[command]
    assert_refused(args, out, match, inputs=[parent])


# --- the shape check accepts every family's stock checkpoints ------------------------------

SIZES = dict(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2)
# head_dim is not hidden / heads: the check must read it, not assume it.
HEADS = dict(num_attention_heads=4, num_key_value_heads=2, head_dim=16)


@pytest.mark.parametrize("family", ["Qwen3", "Qwen2", "Mistral", "Gemma2", "Gemma3Text"])
@pytest.mark.parametrize("hub_style", [False, True], ids=["full config", "defaults left out"])
def test_stock_checkpoints_pass_the_shape_check(tmp_path, family, hub_style):
    """A checkpoint saved by transformers is accepted, also with the fields hub configs leave
    out (their class's defaults) removed from config.json."""
    import torch
    import transformers

    from matcli.checkpoint.reader import ModelFolder
    from matcli.matformer.source import read_source

    config_class = getattr(transformers, f"{family}Config")
    settings = {**SIZES, **HEADS}
    if family == "Qwen2":  # its config derives head_dim
        del settings["head_dim"]
    model = transformers.AutoModelForCausalLM.from_config(config_class(**settings))
    model.to(torch.float32).save_pretrained(tmp_path / "model")
    if hub_style:
        config = json.loads((tmp_path / "model" / "config.json").read_text())
        for key in ("head_dim", "num_key_value_heads", "vocab_size", "intermediate_size"):
            config.pop(key, None)
        (tmp_path / "model" / "config.json").write_text(json.dumps(config))
    with ModelFolder(tmp_path / "model") as folder:
        assert read_source(folder).full_widths == [64, 64]
