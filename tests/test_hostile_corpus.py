"""A hostile corpus: every kind of malformed model folder, given to every command that reads
one. Each case must give exit code 2, exactly one stderr line beginning `error:`, no
traceback, nothing at the destination or beside it, and the input unchanged."""

from __future__ import annotations

import json
import os
import shutil
import struct
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import assert_refused

SHARD = "model.safetensors"


def _header(folder: Path) -> tuple[dict, bytes]:
    raw = (folder / SHARD).read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8 : 8 + length]), raw[8 + length :]


def _write(folder: Path, header: dict, data: bytes, raw_header: bytes | None = None) -> None:
    text = raw_header if raw_header is not None else json.dumps(header).encode()
    (folder / SHARD).write_bytes(struct.pack("<Q", len(text)) + text + data)


def _edit_header(change: Callable[[dict], None]) -> Callable[[Path], None]:
    def corrupt(folder: Path) -> None:
        header, data = _header(folder)
        change(header)
        _write(folder, header, data)

    return corrupt


def _tensors(header: dict) -> list[str]:
    return sorted(
        (n for n in header if n != "__metadata__"), key=lambda n: header[n]["data_offsets"]
    )


def _overlap(header: dict) -> None:
    first, second = _tensors(header)[:2]
    header[second]["data_offsets"] = header[first]["data_offsets"]


def _hole(header: dict) -> None:
    last = _tensors(header)[-1]
    begin, end = header[last]["data_offsets"]
    header[last]["data_offsets"] = [begin + 4, end]
    header[last]["shape"] = [(end - begin - 4) // 4]


def _edit_config(change: Callable[[dict], None]) -> Callable[[Path], None]:
    def corrupt(folder: Path) -> None:
        config = json.loads((folder / "config.json").read_text())
        change(config)
        (folder / "config.json").write_text(json.dumps(config))

    return corrupt


def _replace_file(name: str, content: bytes) -> Callable[[Path], None]:
    return lambda folder: (folder / name).write_bytes(content)


def _link(name: str, target: Callable[[Path], Path]) -> Callable[[Path], None]:
    def corrupt(folder: Path) -> None:
        path = folder / name
        path.unlink(missing_ok=True)
        os.symlink(target(folder), path)

    return corrupt


def _outside_file(folder: Path) -> Path:
    secret = folder.parent / "secret.txt"
    secret.write_text("not for the output")
    return secret


def _sharded_index(weight_map_of: Callable[[list[str]], object]) -> Callable[[Path], None]:
    def corrupt(folder: Path) -> None:
        header, _ = _header(folder)
        index = {"metadata": {}, "weight_map": weight_map_of(_tensors(header))}
        (folder / "model.safetensors.index.json").write_text(json.dumps(index))

    return corrupt


CORRUPTIONS: dict[str, Callable[[Path], None]] = {
    "truncated shard": lambda f: (f / SHARD).write_bytes((f / SHARD).read_bytes()[:-100]),
    "absurd header length": lambda f: (f / SHARD).write_bytes(struct.pack("<Q", 2**60) + b"{}"),
    "shard of 3 bytes": _replace_file(SHARD, b"abc"),
    "header not JSON": lambda f: _write(f, {}, _header(f)[1], b"{not json"),
    "header not UTF-8": lambda f: _write(f, {}, _header(f)[1], b'{"\xff": 1}'),
    "header a list": lambda f: _write(f, {}, _header(f)[1], b"[1, 2]"),
    "overlapping offsets": _edit_header(_overlap),
    "a hole between tensors": _edit_header(_hole),
    "duplicate tensor names": lambda f: _write(
        f, {}, _header(f)[1], json.dumps(_header(f)[0])[:-1].encode() + b', "__metadata__": {}}'
    ),
    "metadata a list": _edit_header(lambda h: h.update(__metadata__=["a"])),
    "metadata values not text": _edit_header(lambda h: h.update(__metadata__={"k": 1})),
    "unknown dtype": _edit_header(lambda h: h[_tensors(h)[0]].update(dtype="F128")),
    "dtype a list": _edit_header(lambda h: h[_tensors(h)[0]].update(dtype=["F32"])),
    "negative shape": _edit_header(lambda h: h[_tensors(h)[0]].update(shape=[-1, 4])),
    "shape and size disagree": _edit_header(lambda h: h[_tensors(h)[0]].update(shape=[3])),
    "offsets past the end": _edit_header(
        lambda h: h[_tensors(h)[-1]].update(data_offsets=[0, 10**12])
    ),
    "config.json not JSON": _replace_file("config.json", b"{model_type: llama"),
    "config.json a list": _replace_file("config.json", b"[1]"),
    "config.json not UTF-8": _replace_file("config.json", b'{"model_type": "\xff"}'),
    "unknown model_type": _edit_config(lambda c: c.update(model_type="mystery")),
    "layer count a word": _edit_config(lambda c: c.update(num_hidden_layers="two")),
    "negative layer count": _edit_config(lambda c: c.update(num_hidden_layers=-2)),
    "no config.json": lambda f: (f / "config.json").unlink(),
    "no weights": lambda f: (f / SHARD).unlink(),
    "pickle only": lambda f: (f / SHARD).rename(f / "pytorch_model.bin"),
    "tokenizer links outside": _link("tokenizer.json", _outside_file),
    "shard links outside": lambda f: (
        shutil.copyfile(f / SHARD, f.parent / "elsewhere.safetensors"),
        _link(SHARD, lambda g: g.parent / "elsewhere.safetensors")(f),
    ),
    "config links outside": _link("config.json", _outside_file),
    "dangling link": _link("tokenizer.json", lambda f: f / "missing.json"),
    "link loop": lambda f: (
        (f / "tokenizer.json").unlink(missing_ok=True),
        os.symlink(f / "b.json", f / "tokenizer.json"),
        os.symlink(f / "tokenizer.json", f / "b.json"),
    ),
    "index maps to a number": _sharded_index(lambda names: dict.fromkeys(names, 3)),
    "index points outside": _sharded_index(lambda names: dict.fromkeys(names, "../x.safetensors")),
    "index weight_map a list": _sharded_index(lambda names: names),
    "index names a missing tensor": _sharded_index(
        lambda names: {**dict.fromkeys(names, SHARD), "ghost.weight": SHARD}
    ),
}

# Commands that read a dense model, and those that read a parent (the output is -o OUT).
DENSE_COMMANDS = {
    "extract": ["extract", "{model}", "--ffn-config", "0.5"],
    "reorder": ["reorder", "{model}", "--data", "{data}"],
    "inspect": ["inspect", "{model}"],
    "quantize rtn": ["quantize", "{model}", "--method", "rtn"],
    "quantize weighted-rtn": ["quantize", "{model}", "--method", "weighted-rtn"],
}
PARENT_COMMANDS = {
    "slice": ["slice", "{model}", "--bits", "2"],
    "slice dense": ["slice", "{model}", "--bits", "4", "--format", "dense"],
}


def _refused(source: Path, tmp_path: Path, corruption: str, command: list[str]) -> None:
    model = tmp_path / "model"
    shutil.copytree(source, model)
    CORRUPTIONS[corruption](model)
    out, data = tmp_path / "out", tmp_path / "calibration.txt"
    data.write_text("the cat sat on the mat. " * 50)
    args = [a.format(model=model, data=data) for a in command]
    if args[0] != "inspect":
        args += ["-o", str(out)]
    assert_refused(args, out, "error: ", inputs=[model])


# Not a refusal: inspect summarises a model of a family matcli does not know (its purpose).
SUMMARISED = {("unknown model_type", "inspect")}
DENSE_CASES = [
    (corruption, command)
    for corruption in CORRUPTIONS
    for command in DENSE_COMMANDS
    if (corruption, command) not in SUMMARISED
]


@pytest.mark.parametrize(("corruption", "command"), DENSE_CASES, ids=" / ".join)
def test_dense_model_corruptions(llama, tmp_path, corruption, command):
    _refused(llama, tmp_path, corruption, DENSE_COMMANDS[command])


@pytest.mark.parametrize("command", PARENT_COMMANDS, ids=str)
@pytest.mark.parametrize("corruption", CORRUPTIONS, ids=str)
def test_parent_corruptions(llama_parent, tmp_path, corruption, command):
    _refused(llama_parent, tmp_path, corruption, PARENT_COMMANDS[command])
