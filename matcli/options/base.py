"""The pieces every command's options are built from: the base model, the `option` field
helper that carries a field's command-line spelling, size and list parsing, and the shared
option groups (mixins) that several commands take."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from matcli.checkpoint.defaults import DEFAULT_CHUNK_BYTES, DEFAULT_MAX_SHARD_BYTES
from matcli.errors import MatcliError

_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12}
_UNITS |= {"KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


def parse_size(text: str | int) -> int:
    """'5GB' (decimal), '2GiB' (binary) or a plain number of bytes -> bytes."""
    if isinstance(text, int):
        return text
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", str(text))
    unit = m.group(2).upper() if m else None
    if not m or unit not in _UNITS:
        raise MatcliError(f"size {text!r} is not a number of bytes like 5000000000, 5GB or 2GiB")
    return int(float(m.group(1)) * _UNITS[unit])


def _size_value(value: object) -> object:
    """`parse_size` inside a model: its message becomes the option's error."""
    if not isinstance(value, (str, int)) or isinstance(value, bool):
        return value
    try:
        return parse_size(value)
    except MatcliError as e:
        raise ValueError(str(e)) from None


def _comma_separated(value: object) -> object:
    """'4,2' -> ['4', '2'] (the list's item type converts them); lists pass through."""
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return [value]
    return value


# A list given on the command line as `4,2` and in a recipe as `4,2` or `[4, 2]`.
IntList = Annotated[list[int], BeforeValidator(_comma_separated)]
FloatList = Annotated[list[float], BeforeValidator(_comma_separated)]
Size = Annotated[int, BeforeValidator(_size_value)]


def option(
    default: Any = ...,
    help: str = "",  # noqa: A002 - the word every CLI library uses
    *,
    short: str | None = None,
    flag: str | None = None,
    argument: bool = False,
    repeat: bool = False,
    metavar: str | None = None,
    **constraints: Any,
) -> Any:
    """A field with its help text and command-line spelling. By default a field `max_tokens`
    is the flag `--max-tokens`; `flag` renames it, `short` adds a one-letter alias,
    `argument` makes it positional, `repeat` takes the flag several times, and `metavar`
    names the value in --help (by default from the type)."""
    cli = {"short": short, "flag": flag, "argument": argument, "repeat": repeat}
    cli["metavar"] = metavar
    extra = {k: v for k, v in cli.items() if v}
    return Field(default, description=help, json_schema_extra=extra or None, **constraints)


class Options(BaseModel):
    """Every command's options: a misspelt key is an error, never silently ignored."""

    model_config = ConfigDict(extra="forbid")


class OutputOptions(Options):
    """How the result is shown."""

    json_output: bool = option(False, "Print one JSON object instead of tables.", flag="--json")
    quiet: bool = option(False, "No progress bar or tables.", short="-q")


class WriteOptions(OutputOptions):
    """Commands that write an output atomically."""

    output: Path = option(..., "Output folder (written atomically).", short="-o")
    force: bool = option(False, "Replace a non-empty output.")
    dry_run: bool = option(
        False, "Print the plan (outputs, sizes, config changes, memory) and write nothing."
    )

    def writes_file(self) -> bool:
        """Whether the output is one file (with companions beside it) rather than a folder."""
        return False


def size_option(default: int, help: str) -> Any:  # noqa: A002 - as in `option`
    """A positive number of bytes, written as 5000000000, 5GB or 2GiB."""
    return option(default, help, gt=0, metavar="SIZE")


class StreamOptions(Options):
    """Commands that stream their input in chunks."""

    chunk_size: Size = size_option(
        DEFAULT_CHUNK_BYTES, "Bytes read at a time (32MiB, 1GB, ...); peak memory grows with it."
    )


class ShardOptions(Options):
    """Commands that write safetensors shards."""

    max_shard_size: Size = size_option(
        DEFAULT_MAX_SHARD_BYTES, "Largest output shard in bytes: a number, or 500MB, 5GB, 2GiB."
    )


def cli_spelling(name: str, extra: dict) -> list[str]:
    """The flags of a field: `--max-tokens`, or the renamed one, plus its short alias."""
    flags = [extra.get("flag") or "--" + name.replace("_", "-")]
    return flags + ([extra["short"]] if extra.get("short") else [])


def field_extra(model: type[Options], name: str) -> dict:
    extra = model.model_fields[name].json_schema_extra
    return extra if isinstance(extra, dict) else {}


def input_paths(options: Options) -> list[Path]:
    """The options' positional inputs: the folders and files an output must not overwrite."""
    fields = type(options).model_fields
    paths = [getattr(options, n) for n in fields if field_extra(type(options), n).get("argument")]
    return [p for p in paths if isinstance(p, Path)]
