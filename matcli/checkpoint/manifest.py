"""matcli_manifest.json: what made an artifact, so that it can be reproduced and checked.

It holds no timestamps or host names: the same command on the same input gives the same
manifest, like the same tensors.
"""

from __future__ import annotations

import hashlib
import json
import platform
import sys
from importlib import metadata
from pathlib import Path

from matcli import __version__
from matcli.checkpoint.reader import ModelFolder

MANIFEST_NAME = "matcli_manifest.json"
PACKAGES = ("torch", "safetensors", "numpy", "transformers", "compressed-tensors", "pydantic")


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return versions


def describe_input(folder: ModelFolder) -> dict:
    config_bytes = (folder.path / "config.json").read_bytes()
    return {
        "path": str(folder.path),
        "config_sha256": hashlib.sha256(config_bytes).hexdigest(),
        "files": [
            {"name": name, "size": h.file_size, "header_sha256": h.header_sha256}
            for name, h in folder.headers.items()
        ],
    }


def source_digest(folder: ModelFolder) -> str:
    """One hash that identifies the input: its config and every shard header."""
    h = hashlib.sha256((folder.path / "config.json").read_bytes())
    for name, header in folder.headers.items():
        h.update(name.encode() + header.header_sha256.encode())
    return h.hexdigest()


def write_manifest(folder: Path, manifest: dict) -> None:
    (folder / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2, sort_keys=False) + "\n")


def invocation(argv: list[str] | None = None) -> dict:
    """The command line as typed and, when a --recipe file was given, its path and sha256
    (the options above are the recipe and the flags already merged)."""
    argv = sys.argv[1:] if argv is None else argv
    found: dict = {"command_line": ["matcli", *argv]}
    for i, arg in enumerate(argv):
        path = (
            argv[i + 1]
            if arg == "--recipe" and i + 1 < len(argv)
            else arg.partition("=")[2]
            if arg.startswith("--recipe=")
            else None
        )
        if path and Path(path).is_file():
            found["recipe"] = {
                "path": path,
                "sha256": hashlib.sha256(Path(path).read_bytes()).hexdigest(),
            }
    return found


def base_manifest(command: str, options: dict, source: ModelFolder) -> dict:
    return {
        "matcli_version": __version__,
        "command": command,
        **invocation(),
        "options": options,
        "input": describe_input(source),
        "packages": package_versions(),
    }
