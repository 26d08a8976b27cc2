"""Typer commands generated from options models: every field becomes one flag (or argument)
with the field's help and default, so an option is written once, in its model.

Flags are parsed as text and handed to pydantic, which converts and validates them: a bad
value gets the same one-line error from the command line as from a recipe. A flag left out
is not passed at all, so a recipe's value stands unless a flag overrides it.
"""

from __future__ import annotations

import inspect
import sys
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import typer

from matcli.options.base import Options, cli_spelling, field_extra
from matcli.runner import Invocation

RECIPE_HELP = "YAML file of option values; flags given on the command line override it."


Run = Callable[[Options, Invocation], None]


def command_from_options(name: str, model: type[Options], run: Run) -> Callable[..., None]:
    """A function whose signature Typer reads: one parameter per field, plus --recipe."""
    parameters = [_parameter(model, field) for field in _cli_order(model)]
    parameters.append(
        inspect.Parameter(
            "recipe",
            inspect.Parameter.KEYWORD_ONLY,
            default=typer.Option(None, "--recipe", help=RECIPE_HELP),
            annotation=Optional[Path],  # noqa: UP045 - Typer reads this annotation at run time
        )
    )

    def command(**given: object) -> None:
        from matcli.options.recipe import load_options

        recipe = given.pop("recipe")
        flags = {k: v for k, v in given.items() if v is not None and v != []}
        options = load_options(model, flags, recipe)
        run(options, Invocation(name, sys.argv[1:], recipe))

    command.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
    command.__annotations__ = {p.name: p.annotation for p in parameters}
    command.__name__ = name.replace("-", "_")
    return command


def _cli_order(model: type[Options]) -> list[str]:
    """Arguments and -o first, then the command's own options, then the shared groups'."""
    inherited = {n for base in model.__mro__[1:] for n in getattr(base, "model_fields", {})}

    def rank(name: str) -> int:
        if field_extra(model, name).get("argument"):
            return 0
        if name == "output":
            return 1
        return 3 if name in inherited else 2

    return sorted(model.model_fields, key=rank)


def _parameter(model: type[Options], name: str) -> inspect.Parameter:
    field = model.model_fields[name]
    extra = field_extra(model, name)
    shown = _shown_default(field.default)
    if extra.get("argument"):
        info = typer.Argument(
            None, help=field.description, show_default=False, metavar=name.upper()
        )
        annotation: object = Optional[str]  # noqa: UP045
    elif field.annotation is bool:
        flag = cli_spelling(name, extra)[0]
        spelling = [f"{flag}/--no-{flag[2:]}", *cli_spelling(name, extra)[1:]]
        info = typer.Option(None, *spelling, help=field.description, show_default=shown)
        annotation = Optional[bool]  # noqa: UP045
    elif extra.get("repeat"):
        info = typer.Option(None, *cli_spelling(name, extra), help=field.description)
        annotation = Optional[list[str]]  # noqa: UP045
    else:
        metavar = extra.get("metavar") or _metavar(field.annotation)
        spelling = cli_spelling(name, extra)
        info = typer.Option(
            None, *spelling, help=field.description, show_default=shown, metavar=metavar
        )
        annotation = Optional[str]  # noqa: UP045
    return inspect.Parameter(
        name, inspect.Parameter.KEYWORD_ONLY, default=info, annotation=annotation
    )


def _metavar(annotation: object) -> str:
    """How --help names a value: the choices of a Literal, else its kind."""
    kind = annotation
    if typing.get_origin(kind) in (typing.Union, types.UnionType):  # X | None
        kind = next(a for a in typing.get_args(kind) if a is not type(None))
    if typing.get_origin(kind) is typing.Literal:
        return "|".join(map(str, typing.get_args(kind)))
    if typing.get_origin(kind) is typing.Annotated:
        kind = typing.get_args(kind)[0]
    names = {int: "INT", float: "NUMBER", Path: "PATH", str: "TEXT"}
    return "LIST" if typing.get_origin(kind) is list else names.get(kind, "VALUE")


def _shown_default(default: object) -> str | bool:
    from pydantic_core import PydanticUndefined

    if default is PydanticUndefined or default is None:
        return False
    if isinstance(default, bool):
        return "yes" if default else "no"
    return str(default)


@dataclass(frozen=True)
class Command:
    """A command: its name, help, options model and what it runs with the options."""

    name: str
    help: str
    options: type[Options]
    run: Run


def register(app: typer.Typer, command: Command) -> None:
    function = command_from_options(command.name, command.options, command.run)
    app.command(command.name, help=command.help)(function)
