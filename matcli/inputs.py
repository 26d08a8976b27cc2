"""Small input files read with one-line errors: JSON (config.json, indexes, modules.json,
qrels) and UTF-8 text. A file that is missing, binary, not UTF-8, not valid JSON or nested
absurdly deep is refused naming the file and what it was read as."""

from __future__ import annotations

import json
from pathlib import Path

from matcli.errors import MatcliError


def read_json(path: Path, what: str) -> object:
    """The JSON value in `path` (`what`: how the message names it, e.g. `config.json`)."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise MatcliError(f"{path} is missing") from e
    except ValueError as e:  # a JSONDecodeError, UnicodeDecodeError or a too-long number
        raise MatcliError(f"{path} ({what}) is not valid JSON: {e}; fix or re-create it") from e
    except RecursionError as e:
        raise MatcliError(f"{path} ({what}) is JSON nested too deeply; fix or re-create it") from e


def read_json_object(path: Path, what: str) -> dict:
    """read_json for files that must hold a JSON object."""
    value = read_json(path, what)
    if not isinstance(value, dict):
        raise MatcliError(f"{path} ({what}) is not a JSON object; fix or re-create it")
    return value


def read_utf8(path: Path, what: str, fix: str) -> str:
    """A text file's contents; a binary or non-UTF-8 file is refused with the byte offset."""
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise MatcliError(
            f"{what} {path} is not UTF-8 text (byte {e.start} cannot be decoded); {fix}"
        ) from e
