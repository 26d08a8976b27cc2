"""Files that travel with the weights (tokenizer, chat template, generation and processor
configs, sentence-transformers modules): copied byte for byte, never re-serialized, because
re-saving a tokenizer is a classic way to break it."""

from __future__ import annotations

import shutil
from pathlib import Path

from matcli.checkpoint.reader import INDEX_NAME

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
    """Relative paths of every file to copy, sorted; hidden files and folders are skipped."""
    found = []
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder)
        if any(part.startswith(".") for part in rel.parts) or not path.is_file():
            continue
        if rel.as_posix() in REWRITTEN or path.suffix in WEIGHT_SUFFIXES:
            continue
        found.append(rel)
    return found


def copy_aux_files(source: Path, destination: Path, files: list[Path]) -> None:
    for rel in files:
        target = destination / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source / rel, target)
