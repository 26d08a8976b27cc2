"""matcli_manifest.json: what made an artifact, so that it can be reproduced and checked.

It holds no timestamps or host names: the same command on the same input gives the same
manifest, like the same tensors.
"""

from __future__ import annotations

import hashlib
import json
import platform
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


def write_manifest(folder: Path, invocation: dict, fields: dict) -> None:
    """The manifest of one output folder: how matcli was called (command, command line,
    recipe, options: handed in by the runner) and the plan's own fields (input, outputs)."""
    manifest = {"matcli_version": __version__, **invocation, **fields}
    manifest["packages"] = package_versions()
    (folder / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2, sort_keys=False) + "\n")
