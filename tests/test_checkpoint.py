"""Checkpoint layer: header validation, chunked reads, streaming sharded writer, atomic output."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from matcli.checkpoint.atomic import check_destination, staged_folder
from matcli.checkpoint.aux_files import aux_files
from matcli.checkpoint.manifest import write_manifest
from matcli.checkpoint.plan import OutputCheckpoint, Plan, copy_tensor
from matcli.checkpoint.reader import ModelFolder
from matcli.checkpoint.safetensors_file import read_header
from matcli.checkpoint.writer import CheckpointWriter, OutputTensor, ShardLayout, header_bytes
from matcli.errors import MatcliError


def make_folder(path: Path, tensors: dict[str, torch.Tensor], shards: int = 1) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps({"model_type": "llama", "num_hidden_layers": 1}))
    names = sorted(tensors)
    if shards == 1:
        save_file(tensors, path / "model.safetensors", metadata={"format": "pt"})
        return path
    weight_map = {}
    for i in range(shards):
        part = {n: tensors[n] for n in names[i::shards]}
        fname = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        save_file(part, path / fname, metadata={"format": "pt"})
        weight_map.update({n: fname for n in part})
    (path / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": weight_map})
    )
    return path


@pytest.fixture
def tensors():
    torch.manual_seed(0)
    return {
        "a.weight": torch.randn(37, 11),
        "b.weight": torch.randn(5, 3).to(torch.bfloat16),
        "c.scalar": torch.tensor(3.0),
        "d.ids": torch.arange(10, dtype=torch.int64),
        "e.empty": torch.zeros(0, 4),
    }


@pytest.mark.parametrize("shards", [1, 2])
def test_reader_reads_whole_and_by_rows(tmp_path, tensors, shards):
    folder = ModelFolder(make_folder(tmp_path / "m", tensors, shards))
    assert set(folder.tensors) == set(tensors)
    for name, t in tensors.items():
        assert torch.equal(folder.read(name), t)
    a = tensors["a.weight"]
    assert torch.equal(folder.read_rows("a.weight", 5, 9), a[5:9])
    chunks = folder.row_chunks("a.weight", max_bytes=11 * 4 * 10)
    assert chunks[0] == (0, 10) and chunks[-1] == (30, 37)
    assert torch.equal(torch.cat([folder.read_rows("a.weight", s, e) for s, e in chunks]), a)
    folder.close()


def test_header_length_absurd(tmp_path, tensors):
    path = make_folder(tmp_path / "m", tensors) / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[:8] = (10**15).to_bytes(8, "little")
    path.write_bytes(bytes(data))
    with pytest.raises(MatcliError, match="header length field"):
        read_header(path)


def test_truncated_file(tmp_path, tensors):
    path = make_folder(tmp_path / "m", tensors) / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[:-100])
    with pytest.raises(MatcliError, match="truncated"):
        read_header(path)


def test_index_pointing_outside_the_folder(tmp_path, tensors):
    folder = make_folder(tmp_path / "m", tensors, shards=2)
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    index["weight_map"]["a.weight"] = "../../etc/passwd"
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(MatcliError, match="outside the model folder"):
        ModelFolder(folder)


def test_pickle_only_folder_is_refused(tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "pytorch_model.bin").write_bytes(b"\x80\x04not really")
    with pytest.raises(MatcliError, match="pickle"):
        ModelFolder(folder)


def test_writer_round_trips_through_safetensors(tmp_path, tensors):
    source = ModelFolder(make_folder(tmp_path / "m", tensors))
    outputs = [copy_tensor(source, n) for n in sorted(tensors)]
    layout = ShardLayout.plan(outputs, max_shard_bytes=1000)
    assert len(layout.shards) > 1
    out = tmp_path / "out"
    out.mkdir()
    writer = CheckpointWriter(out, layout, {"format": "pt", "matcli.version": "x"})
    for t in outputs:
        writer.write_tensor(t)
    writer.finish()
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert index["metadata"]["total_size"] == sum(t.nbytes for t in outputs)
    for name, t in tensors.items():
        fname = index["weight_map"][name]
        with safe_open(out / fname, "pt") as f:
            assert f.metadata()["matcli.version"] == "x"
            assert torch.equal(f.get_tensor(name), t)


def test_writer_checks_byte_counts(tmp_path):
    t = OutputTensor("x", "F32", (4,), lambda: iter([torch.zeros(3)]))
    writer = CheckpointWriter(tmp_path, ShardLayout.plan([t], 10**9), {"format": "pt"})
    with pytest.raises(RuntimeError, match="missing"):
        writer.write_tensor(t)


def test_header_is_8_byte_aligned():
    t = OutputTensor("abc", "F32", (3,), lambda: iter([]))
    raw = header_bytes([t], {"format": "pt"})
    assert (len(raw) - 8) % 8 == 0


def test_destination_checks(tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("keep me")
    with pytest.raises(MatcliError, match="--force"):
        check_destination(tmp_path / "full", force=False, inputs=[])
    check_destination(tmp_path / "full", force=True, inputs=[])
    with pytest.raises(MatcliError, match="replace the input"):
        check_destination(tmp_path / "full", force=True, inputs=[tmp_path / "full" / "sub"])
    (tmp_path / "file").write_text("")
    with pytest.raises(MatcliError, match="is a file"):
        check_destination(tmp_path / "file", force=True, inputs=[])


def test_staged_folder_leaves_nothing_on_failure(tmp_path):
    dest = tmp_path / "out"
    with pytest.raises(RuntimeError), staged_folder(dest, force=False) as staging:
        (staging / "model.safetensors").write_bytes(b"half")
        raise RuntimeError("disk full")
    assert not dest.exists()
    assert list(tmp_path.iterdir()) == []


def test_staged_folder_with_force_replaces_atomically(tmp_path):
    dest = tmp_path / "out"
    dest.mkdir()
    (dest / "old").write_text("old")
    with staged_folder(dest, force=True) as staging:
        (staging / "new").write_text("new")
        assert (dest / "old").exists()  # the old output stays until the new one is complete
    assert [p.name for p in dest.iterdir()] == ["new"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_aux_files_are_copied_byte_for_byte(tmp_path, tensors):
    source = make_folder(tmp_path / "m", tensors)
    tokenizer = '{"model": {"vocab": {"\\u00e9": 1}},   "odd spacing": true}'
    (source / "tokenizer.json").write_text(tokenizer)
    (source / "1_Pooling").mkdir()
    (source / "1_Pooling" / "config.json").write_text('{"pooling_mode_mean_tokens": true}')
    (source / "pytorch_model.bin").write_bytes(b"stale pickle")
    (source / ".cache").mkdir()
    assert [p.as_posix() for p in aux_files(source)] == ["1_Pooling/config.json", "tokenizer.json"]
    folder = ModelFolder(source)
    plan = Plan(
        "copy",
        folder,
        [
            OutputCheckpoint(
                "", dict(folder.config), [copy_tensor(folder, n) for n in sorted(tensors)]
            )
        ],
    )
    with staged_folder(tmp_path / "out", force=False) as staging:
        for folder_out, fields in plan.write(staging, lambda n: None):
            write_manifest(folder_out, {"command": "copy"}, fields)
    assert (tmp_path / "out" / "tokenizer.json").read_text() == tokenizer
    assert (tmp_path / "out" / "1_Pooling" / "config.json").exists()
    assert not (tmp_path / "out" / "pytorch_model.bin").exists()
    manifest = json.loads((tmp_path / "out" / "matcli_manifest.json").read_text())
    assert manifest["input"]["files"][0]["name"] == "model.safetensors"
    assert len(manifest["output"]["files"][0]["header_sha256"]) == 64


def test_copies_fall_back_when_the_kernel_cannot_copy(tmp_path, tensors, monkeypatch):
    """copy_file_range fails across some filesystems (EXDEV): bytes are then read and written."""
    import errno
    import os

    def refuse(*args):
        raise OSError(errno.EXDEV, "cross-device")

    monkeypatch.setattr(os, "copy_file_range", refuse)
    source = ModelFolder(make_folder(tmp_path / "m", tensors))
    outputs = [copy_tensor(source, n) for n in sorted(tensors)]
    out = tmp_path / "out"
    out.mkdir()
    writer = CheckpointWriter(out, ShardLayout.plan(outputs, 10**9), {"format": "pt"})
    for t in outputs:
        writer.write_tensor(t)
    writer.finish()
    with safe_open(out / "model.safetensors", "pt") as f:
        for name, t in tensors.items():
            assert torch.equal(f.get_tensor(name), t)
