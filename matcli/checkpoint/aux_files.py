"""Files that travel with the weights (tokenizer, chat template, generation and processor
configs, sentence-transformers modules): copied byte for byte, never re-serialized, because
re-saving a tokenizer is a classic way to break it. Links go through the policy of
checkpoint/links.py, and every copy is written as a regular file."""

from __future__ import annotations

import shutil
from pathlib import Path

from matcli.checkpoint.defaults import INDEX_NAME
from matcli.checkpoint.links import resolve_inside

# Weights in any format are not copied: the output's own safetensors replace them, and stale
# copies in another format would be loaded instead by some tools.
WEIGHT_SUFFIXES = {
    ".safetensors",
    ".bin",
    ".pt",
    ".pth",
    ".ckpt",
    ".pkl",
    ".gguf",
    ".h5",
    ".msgpack",
    ".onnx",
    ".ot",
}
REWRITTEN = {"config.json", INDEX_NAME, "matcli_manifest.json"}


def aux_files(folder: Path) -> list[Path]:
    """Relative paths of every file to copy, sorted; hidden files and folders are skipped.

    A link whose target is outside the model folder (or dangling, or a loop) is refused here,
    before anything is written.
    """
    found = []
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder)
        if any(part.startswith(".") for part in rel.parts):
            continue
        if rel.as_posix() in REWRITTEN or path.suffix in WEIGHT_SUFFIXES:
            continue
        if (path.is_symlink() or path.is_file()) and resolve_inside(folder, path).is_file():
            found.append(rel)
    return found


def copy_aux_files(source: Path, destination: Path, files: list[Path]) -> None:
    for rel in files:
        target = destination / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(resolve_inside(source, source / rel), target, follow_symlinks=False)
