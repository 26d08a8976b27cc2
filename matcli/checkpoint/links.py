"""The symlink policy for everything read from a model folder (config, index, shards, and the
auxiliary files copied into outputs).

A path may be a link, or lie under a linked folder, as long as its final target (every link in
the chain followed) is inside the model folder: otherwise a `tokenizer.json` linking to
/etc/shadow would be copied into an output that the user then publishes. One layout is allowed
to point outside: the Hugging Face cache, whose model folder is
`.../models--ORG--NAME/snapshots/<rev>/` with every file a link into that same repository's
`.../models--ORG--NAME/blobs/`. Dangling links and link loops are refused too.
"""

from __future__ import annotations

import os
from pathlib import Path

from matcli.errors import MatcliError


def resolve_inside(folder: Path, path: Path) -> Path:
    """The real path of `path`, a file under the model folder `folder`, checked by the policy.

    A path that does not exist at all (no link either) is returned as is, for the caller to
    report as missing in its own words.
    """
    if not os.path.lexists(path):
        return path
    name = _shown(folder, path)
    try:
        real = Path(path).resolve(strict=True)
    except (RuntimeError, OSError) as e:  # RuntimeError: a loop, before Python 3.13
        target = os.path.realpath(path)
        if isinstance(e, FileNotFoundError) and not os.path.lexists(target):
            why = f"is a dangling link to {target}, which does not exist"
        else:
            why = "is a link loop (or a link that cannot be followed)"
        raise MatcliError(
            f"{name} in the model folder {folder} {why}; refusing to read it "
            "(replace the link with the file itself)"
        ) from e
    real_folder = Path(folder).resolve()
    if real.is_relative_to(real_folder) or _in_hf_blobs(real_folder, real):
        return real
    raise MatcliError(
        f"{name} is a link to {real}, outside the model folder {folder}; refusing to read it "
        "(replace the link with the file itself)"
    )


def _in_hf_blobs(real_folder: Path, real: Path) -> bool:
    """Whether the folder is a Hugging Face cache snapshot, `models--ORG--NAME/snapshots/REV`,
    and `real` is a file in that same repository's blobs folder."""
    snapshots = real_folder.parent
    repo = snapshots.parent
    if snapshots.name != "snapshots" or not repo.name.startswith("models--"):
        return False
    blobs = repo / "blobs"
    return real.parent == blobs and real.is_file()


def _shown(folder: Path, path: Path) -> str:
    try:
        return Path(path).relative_to(folder).as_posix()
    except ValueError:
        return str(path)
