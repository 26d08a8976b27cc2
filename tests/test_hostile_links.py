"""Hostile checkpoints: symlinks in a model folder must never bring outside files into an output.

A link whose final target is outside the model folder is refused, except in the Hugging Face
cache layout (`models--ORG--NAME/snapshots/REV/` linking into that repository's `blobs/`).
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest
from conftest import assert_refused, run_matcli


def refused(args: list[str], model: Path, out: Path, match: str) -> None:
    """`args MODEL -o OUT -q` is refused cleanly and the model folder (links too) unchanged."""
    assert_refused([*args, str(model), "-o", str(out), "-q"], out, match, inputs=[model])


COMMANDS = {
    "slice": (["slice"], ["--bits", "2"], "llama_parent"),
    "extract": (["extract"], ["--ffn-config", "xl"], "llama"),
    "quantize": (["quantize"], ["--method", "rtn"], "llama"),
}


def command_args(name: str, request) -> tuple[list[str], list[str], Path]:
    head, tail, fixture = COMMANDS[name]
    return head, tail, request.getfixturevalue(fixture)


@pytest.fixture
def secret(tmp_path) -> Path:
    path = tmp_path / "elsewhere" / "shadow"
    path.parent.mkdir()
    path.write_text("root:secret-hash:19000:0:99999:7:::\n")
    return path


def copy_model(source: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(source, tmp_path / "model"))


def run_refused(name, request, tmp_path, plant, match):
    head, tail, source = command_args(name, request)
    model = copy_model(source, tmp_path)
    plant(model)
    out = tmp_path / "outs" / "out"
    out.parent.mkdir()
    refused([*head, *tail], model, out, match)
    return model


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_aux_file_linking_outside_is_refused(name, request, tmp_path, secret):
    def plant(model):
        (model / "tokenizer.json").unlink()
        (model / "tokenizer.json").symlink_to(secret)

    run_refused(name, request, tmp_path, plant, f"tokenizer.json is a link to {secret}")


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_aux_file_under_a_linked_folder_is_refused(name, request, tmp_path, secret):
    def plant(model):
        (model / "extra").symlink_to(secret.parent, target_is_directory=True)

    run_refused(name, request, tmp_path, plant, "outside the model folder")


def test_config_linking_outside_is_refused(request, tmp_path, secret):
    def plant(model):
        shutil.copyfile(model / "config.json", secret)
        (model / "config.json").unlink()
        (model / "config.json").symlink_to(secret)

    run_refused("slice", request, tmp_path, plant, f"config.json is a link to {secret}")


def test_link_loop_is_refused(request, tmp_path):
    def plant(model):
        (model / "tokenizer.json").unlink()
        (model / "tokenizer.json").symlink_to(model / "loop.txt")
        (model / "loop.txt").symlink_to(model / "tokenizer.json")

    run_refused("slice", request, tmp_path, plant, "link loop")


def test_dangling_link_is_refused(request, tmp_path):
    def plant(model):
        (model / "chat_template.jinja").unlink()
        (model / "chat_template.jinja").symlink_to(tmp_path / "gone.jinja")

    run_refused("slice", request, tmp_path, plant, "chat_template.jinja")


def test_link_inside_the_folder_is_copied_as_a_file(llama_parent, tmp_path):
    model = copy_model(llama_parent, tmp_path)
    (model / "templates").mkdir()
    shutil.move(model / "chat_template.jinja", model / "templates" / "chat.jinja")
    (model / "chat_template.jinja").symlink_to(Path("templates") / "chat.jinja")
    out = tmp_path / "out"
    code, _, stderr = run_matcli("slice", str(model), "--bits", "2", "-o", str(out), "-q")
    assert code == 0, stderr
    copied = out / "chat_template.jinja"
    assert not copied.is_symlink() and copied.is_file()
    assert copied.read_bytes() == (model / "templates" / "chat.jinja").read_bytes()


def hf_snapshot(source: Path, cache: Path, repo: str = "models--org--tiny") -> Path:
    """The Hugging Face cache layout: every file of the snapshot links into ../../blobs."""
    blobs, snapshot = cache / repo / "blobs", cache / repo / "snapshots" / "0123abcd"
    blobs.mkdir(parents=True)
    snapshot.mkdir(parents=True)
    for f in sorted(source.iterdir()):
        data = f.read_bytes()
        blob = blobs / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        (snapshot / f.name).symlink_to(Path("..", "..", "blobs", blob.name))
    return snapshot


def test_hugging_face_cache_snapshot_is_read(llama_parent, tmp_path):
    snapshot = hf_snapshot(llama_parent, tmp_path / "hub")
    assert (snapshot / "model.safetensors").is_symlink()
    out = tmp_path / "out"
    code, _, stderr = run_matcli("slice", str(snapshot), "--bits", "2", "-o", str(out), "-q")
    assert code == 0, stderr
    for name in ("tokenizer.json", "chat_template.jinja"):
        assert not (out / name).is_symlink() and (out / name).is_file()
        assert (out / name).read_bytes() == (llama_parent / name).read_bytes()
    assert (out / "config.json").is_file() and not (out / "config.json").is_symlink()


def test_snapshot_linking_into_another_repositorys_blobs_is_refused(llama_parent, tmp_path):
    cache = tmp_path / "hub"
    snapshot = hf_snapshot(llama_parent, cache)
    other = hf_snapshot(llama_parent, cache, "models--evil--other")
    stolen = next((other / "tokenizer.json").resolve().parent.iterdir())

    (snapshot / "tokenizer.json").unlink()
    (snapshot / "tokenizer.json").symlink_to(stolen)
    out = tmp_path / "out"
    refused(["slice", "--bits", "2"], snapshot, out, "outside the model folder")


def test_shard_linking_outside_is_refused(request, tmp_path):
    def plant(model):
        elsewhere = tmp_path / "elsewhere.safetensors"
        shutil.move(model / "model.safetensors", elsewhere)
        (model / "model.safetensors").symlink_to(elsewhere)

    run_refused("slice", request, tmp_path, plant, "model.safetensors is a link to")


def test_indexed_shard_linking_outside_is_refused(request, tmp_path, secret):
    def plant(model):
        (model / "model.safetensors").rename(model / "model-00001-of-00001.safetensors")
        (model / "model.safetensors.index.json").write_text(
            '{"metadata": {}, "weight_map": {"x": "model-00002-of-00002.safetensors"}}'
        )
        (model / "model-00002-of-00002.safetensors").symlink_to(secret)

    run_refused("slice", request, tmp_path, plant, f"is a link to {secret}")
