"""Tables for what the writing commands plan and write (stdout), shared by every command."""

from __future__ import annotations

import json
from collections.abc import Callable

from rich.console import Console
from rich.table import Table

from matcli.cli.generate import Command
from matcli.runner import Invocation, Renderers

out = Console()


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1000
    return str(n)


def table(title: str, columns: list[str], rows: list[list[object]], right: set[str] = frozenset()):
    t = Table(title=title, title_justify="left")
    for column in columns:
        t.add_column(column, justify="right" if column in right else "left")
    for row in rows:
        t.add_row(*(str(v) for v in row))
    out.print(t)


def render_plan(d: dict) -> None:
    """A checkpoint plan: per output folder its transforms, shards and config changes."""
    out.print(
        f"[bold]plan[/bold]: matcli {d['command']} {d['input']}  (dry run: nothing is written)"
    )
    for o in d["outputs"]:
        where = o["folder"] or "output folder"
        transforms = [
            [name, t["tensors"], human_bytes(t["bytes"])]
            for name, t in sorted(o["transforms"].items())
        ]
        title = f"{where}: {o['tensors']} tensors, {human_bytes(o['bytes'])}"
        table(title, ["transform", "tensors", "bytes"], transforms, {"tensors", "bytes"})
        shards = [[name, f"{size:,}"] for name, size in o["shards"].items()]
        table("shards", ["file", "bytes"], shards, {"bytes"})
        if o["config_changes"]:
            changes = [
                [c["key"], _short(c["before"]), _short(c["after"])] for c in o["config_changes"]
            ]
            table("config.json changes", ["key", "before", "after"], changes)
    if d["copied_files"]:
        out.print("copied byte for byte: " + ", ".join(d["copied_files"]))
    simple = {k: v for k, v in (d.get("report") or {}).items() if not isinstance(v, (dict, list))}
    if simple:
        table("report", ["", "value"], [[k, v] for k, v in simple.items()])
    out.print(f"estimated peak memory: {human_bytes(d['estimated_peak_memory_bytes'])}")


def _short(value: object, width: int = 60) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    return text if len(text) <= width else text[: width - 3] + "..."


def render_written(summary: dict) -> None:
    """What a checkpoint plan wrote: one row per output folder."""
    rows = [
        [r["path"], _what(r["matcli"]), human_bytes(r["size_bytes"])] for r in summary["outputs"]
    ]
    table(f"matcli {summary['command']}: written", ["folder", "what", "size"], rows, {"size"})


def _what(info: dict) -> str:
    """A short description of an artifact from its `matcli` config block."""
    role = info.get("role")
    if role == "parent":
        return f"int{info['parent_bits']} parent ({info['scheme']}, {info['method']})"
    if role == "slice":
        if info.get("bits"):
            return f"int{info['bits']} slice, {info['format']}"
        return f"mixed, {info['average_bits']:g} bits on average slice, {info['format']}"
    if role in ("extract", "reorder"):
        widths = sorted(set(info["ffn_widths"]))
        what = f"{len(info['ffn_widths'])} layers, FFN widths {widths}"
        return what + (", neurons sorted by importance" if info.get("reordered") else "")
    if role == "nested":
        return f"nested FFNs at {', '.join(f'{g:g}' for g in info['granularities'])} of each width"
    return role or "model"


CHECKPOINT = Renderers(dry_run=render_plan, written=render_written)


def writing_command(
    name: str, description: str, options: type, plan: Callable, renderers: Renderers = CHECKPOINT
) -> Command:
    """A command that plans from its options alone (no training) and runs the plan."""

    def run(values, invocation: Invocation) -> None:
        from matcli.runner import run_writing

        run_writing(values, invocation, lambda reporter: plan(values), renderers)

    return Command(name, description, options, run)
