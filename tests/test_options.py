"""Options as data: every field of every command's options model is a flag (or argument) of
its command line and a key of a recipe, with the same default either way."""

from __future__ import annotations

from pathlib import Path

import pytest
import typer
import yaml
from pydantic_core import PydanticUndefined
from typer.testing import CliRunner

from matcli.cli import COMMANDS
from matcli.cli.generate import Command, register
from matcli.options.base import cli_spelling, field_extra
from matcli.options.recipe import load_options

# Values for the fields a command requires (the rest keep their defaults).
REQUIRED = {
    "model": "m",
    "parent": "p",
    "input": "e.npy",
    "path": "m",
    "output": "out",
    "dims": [64],
    "data": "t.txt",
    "corpus": "c.npy",
    "queries": "q.npy",
}
# Options a command needs one of (say which it takes).
CHOSEN = {"slice": {"bits": [4, 2]}, "extract": {"ffn_config": "0.5"}}
# A recipe that sets every field needs values that satisfy the models' cross-field rules.
CONSISTENT = {
    "slice": {"bits_config": None, "target_bits": None, "dtype": None},
    "extract": {"budget": None, "budget_of": None},
    "eval": {"ffn_config": None},
}


def _captured(command: Command) -> tuple[typer.Typer, list]:
    """The command line of `command` with its run replaced by one that keeps the options."""
    seen: list = []
    app = typer.Typer(add_completion=False)
    register(app, Command(command.name, command.help, command.options, lambda o, i: seen.append(o)))
    app.command("unused")(lambda: None)  # two commands keep the name on the command line
    return app, seen


def _required_args(command: Command, tmp_path: Path) -> list[str]:
    args = [command.name]
    for name, value in _samples(command, tmp_path).items():
        text = ",".join(map(str, value)) if isinstance(value, list) else str(value)
        extra = field_extra(command.options, name)
        args += [text] if extra.get("argument") else [cli_spelling(name, extra)[0], text]
    return args


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c.name)
def test_every_field_is_a_flag_with_its_help(command):
    cli, _ = _captured(command)
    params = typer.main.get_command(cli).commands[command.name].params
    flags = {flag for p in params for flag in p.opts}
    arguments = {p.name for p in params if p.param_type_name == "argument"}
    for name, field in command.options.model_fields.items():
        extra = field_extra(command.options, name)
        if extra.get("argument"):
            assert name in arguments, name
        else:
            assert set(cli_spelling(name, extra)) <= flags, name
        assert field.description, f"{command.name} {name} has no help text"
    assert "--recipe" in flags


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c.name)
def test_defaults_are_the_same_from_the_command_line_and_a_recipe(command, tmp_path):
    cli, seen = _captured(command)
    args = _required_args(command, tmp_path)
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    (from_flags,) = seen
    required = {n: v for n, v in from_flags.model_dump().items() if n in _required(command)}
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(_plain(required)))
    from_recipe = load_options(command.options, {}, recipe)
    assert from_recipe == from_flags
    for name, field in command.options.model_fields.items():
        if name not in required and field.default is not PydanticUndefined:
            assert getattr(from_flags, name) == _default_after_validation(command, name), name


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c.name)
def test_a_recipe_may_set_every_field(command, tmp_path):
    """A recipe naming every field loads, and the command line reads the same recipe."""
    cli, seen = _captured(command)
    values = _plain(load_options(command.options, _samples(command, tmp_path)).model_dump())
    values.update(CONSISTENT.get(command.name, {}))
    assert set(values) == set(command.options.model_fields)
    recipe = tmp_path / "every.yaml"
    recipe.write_text(yaml.safe_dump(values))
    result = CliRunner().invoke(cli, [command.name, "--recipe", str(recipe)])
    assert result.exit_code == 0, result.output
    assert seen[0] == command.options(**values)


def _required(command: Command) -> set[str]:
    fields = command.options.model_fields
    required = {n for n, f in fields.items() if f.default is PydanticUndefined}
    return required | set(CHOSEN.get(command.name, {}))


def _samples(command: Command, tmp_path: Path) -> dict:
    """Values for the fields a command cannot run without."""
    fields = command.options.model_fields
    values = {}
    for name in [n for n, f in fields.items() if f.default is PydanticUndefined]:
        value = REQUIRED[name]
        values[name] = value if isinstance(value, list) else str(tmp_path / value)
    return {**values, **CHOSEN.get(command.name, {})}


def _default_after_validation(command: Command, name: str):
    """The default a model ends with (validators fill some, e.g. quantize's widths)."""
    return getattr(load_options(command.options, _samples(command, Path("/x"))), name)


def _plain(values: dict) -> dict:
    return {k: str(v) if isinstance(v, Path) else v for k, v in values.items()}


@pytest.mark.parametrize(
    ("args", "recipe", "message"),
    [
        (["--bits", "abc"], None, "invalid --bits: 'abc' is not a whole number"),
        (["--bits", "4.5"], None, "invalid --bits: '4.5' is not a whole number"),
        (["--bits", "9"], None, "invalid --bits: width 9 is out of range: widths are 1 to 8 bits"),
        (["--bits", "4", "--chunk-size", "5XB"], None, "invalid --chunk-size: size '5XB'"),
        (["--bits", "4"], b"bitz: 4\n", "unknown option 'bitz': did you mean 'bits'?"),
        (["--bits", "4"], b"bits: [4\nx: 1\n", "is not valid YAML (line 2)"),
        (["--bits", "4"], b"\xff\xfe\x00", "is not UTF-8 text"),
        (["--bits", "4"], b"- 4\n- 2\n", "must be a mapping of option names to values"),
    ],
)
def test_bad_values_are_one_line_from_flags_and_recipes(tmp_path, args, recipe, message):
    from conftest import run_matcli

    if recipe is not None:
        (tmp_path / "r.yaml").write_bytes(recipe)
        args = [*args, "--recipe", str(tmp_path / "r.yaml")]
    code, _, err = run_matcli("slice", str(tmp_path / "parent"), "-o", str(tmp_path / "o"), *args)
    assert code == 2 and message in err and err.count("\n") == 1, err
    assert not (tmp_path / "o").exists()


def test_a_missing_argument_names_it(tmp_path):
    from conftest import run_matcli

    code, _, err = run_matcli("slice", "--bits", "4", "-o", str(tmp_path / "o"))
    assert code == 2 and "missing PARENT: Parent folder made by matcli quantize." in err
