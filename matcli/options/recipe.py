"""Recipes: YAML files of option values. Values come from, in increasing precedence, the
options model's defaults, the recipe, and the flags typed on the command line."""

from __future__ import annotations

from pathlib import Path
from typing import TypeVar

from pydantic import ValidationError

from matcli.errors import MatcliError
from matcli.options.base import Options, cli_spelling, field_extra

M = TypeVar("M", bound=Options)


def read_recipe(path: Path) -> dict:
    """A YAML recipe: a flat mapping of option names (dashes or underscores) to values."""
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise MatcliError(f"cannot read --recipe {path}: {e.strerror}") from e
    except UnicodeDecodeError as e:
        raise MatcliError(f"--recipe {path} is not UTF-8 text: give a YAML file") from e
    except yaml.YAMLError as e:
        where = getattr(e, "problem_mark", None)
        line = f" (line {where.line + 1})" if where else ""
        problem = getattr(e, "problem", None) or "parse error"
        raise MatcliError(f"--recipe {path} is not valid YAML{line}: {problem}") from e
    if not isinstance(data, dict):
        raise MatcliError(f"--recipe {path} must be a mapping of option names to values")
    return {str(k).replace("-", "_"): v for k, v in data.items()}


def load_options(model: type[M], flags: dict[str, object], recipe: Path | None = None) -> M:
    """The options from the flags given (only those typed) over the recipe's values."""
    values = read_recipe(recipe) if recipe is not None else {}
    for flag in flags:
        for dependent in getattr(model, "RESETS", {}).get(flag, ()):
            if dependent not in flags:
                values.pop(dependent, None)
    return build_options(model, **{**values, **flags})


def build_options(model: type[M], /, **values: object) -> M:
    """Validate settings; the first problem becomes one MatcliError line naming the flag."""
    try:
        return model(**values)
    except ValidationError as e:
        raise MatcliError(_one_line(model, e.errors()[0])) from e


# Pydantic's conversion errors, said as what the value should be.
EXPECTED = {
    "int_parsing": "a whole number",
    "int_from_float": "a whole number",
    "float_parsing": "a number",
    "bool_parsing": "true or false",
    "list_type": "a list",
    "string_type": "text",
}


def _one_line(model: type[Options], error: dict) -> str:
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] in EXPECTED:
        message = f"{error['input']!r} is not {EXPECTED[error['type']]}"
    if not error["loc"]:
        return message
    name = str(error["loc"][0])
    if name not in model.model_fields:
        return f"unknown option {name!r}: {_suggestion(model, name)}"
    extra = field_extra(model, name)
    spelled = name.upper() if extra.get("argument") else cli_spelling(name, extra)[0]
    if error["type"] == "missing":
        return f"missing {spelled}: {model.model_fields[name].description}"
    return f"invalid {spelled}: {message}"


def _suggestion(model: type[Options], name: str) -> str:
    import difflib

    close = difflib.get_close_matches(name, list(model.model_fields), n=1)
    return f"did you mean {close[0]!r}?" if close else "see --help for the options"
