"""What every writing command shares: options, dry-run rendering, progress, summaries."""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.console import Console
from rich.table import Table

from matcli.errors import MatcliError

if TYPE_CHECKING:
    from matcli.checkpoint.plan import Plan

out = Console()
err = Console(stderr=True)

OUTPUT = typer.Option(..., "-o", "--output", help="Output folder (written atomically).")
FORCE = typer.Option(False, "--force", help="Replace a non-empty output folder.")
DRY_RUN = typer.Option(
    False,
    "--dry-run",
    help="Print the plan (tensors, shards, config changes, memory) and write nothing.",
)
MAX_SHARD_SIZE = typer.Option(
    "5GB", "--max-shard-size", help="Largest output shard in bytes: a number, or 500MB, 5GB, 2GiB."
)
CHUNK_SIZE = typer.Option(
    "32MiB", "--chunk-size", help="Bytes read at a time; peak memory grows with it."
)
JSON_OUTPUT = typer.Option(False, "--json", help="Print one JSON object instead of tables.")
QUIET = typer.Option(False, "-q", "--quiet", help="No progress bar or tables.")
RECIPE = typer.Option(
    None,
    "--recipe",
    help="YAML file of option values; flags given on the command line override it.",
)


DISPLAY_FLAGS = ("json_output", "quiet", "recipe")


def option_values(ctx: typer.Context, **converted: object) -> dict[str, object]:
    """The command's parameters as option values (display flags left out), with overrides."""
    values = {name: value for name, value in ctx.params.items() if name not in DISPLAY_FLAGS}
    values.update(converted)
    return values


def given_flags(ctx: typer.Context) -> set[str]:
    """Names of the parameters the user actually typed (not left at their defaults)."""
    return {name for name in ctx.params if ctx.get_parameter_source(name).name != "DEFAULT"}


def parse_int_list(text: str, flag: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError as e:
        raise MatcliError(f"{flag} {text!r} must be integers separated by commas, e.g. 4,2") from e


def human_bytes(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1000
    return str(n)


def folder_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def show_warnings(warnings: list[str], quiet: bool) -> None:
    if not quiet:
        for w in warnings:
            err.print(f"[yellow]warning:[/yellow] {w}", highlight=False)


# glibc's M_MMAP_THRESHOLD: blocks at least this large are mmap'd and unmapped when freed.
MMAP_THRESHOLD = -3
STREAMING_MMAP_BYTES = 1 << 20


def return_freed_chunks() -> None:
    """Let chunk buffers go back to the OS when freed. glibc raises its mmap threshold each
    time a large block is freed and then keeps such blocks on its heap, so streaming chunks
    of several sizes made the heap grow: `slice --format dense` peaked at 566 MB instead of
    354 MB (and ran 20% slower). Fixing the threshold stops that; elsewhere it is a no-op."""
    import ctypes

    try:
        ctypes.CDLL(None).mallopt(MMAP_THRESHOLD, STREAMING_MMAP_BYTES)
    except (AttributeError, OSError):  # not glibc
        pass


def run_plan(
    plan: Plan, output: Path, force: bool, dry_run: bool, json_output: bool, quiet: bool
) -> None:
    """Render the plan (dry run) or execute it with a progress bar."""
    return_freed_chunks()
    from matcli.checkpoint.atomic import check_destination
    from matcli.checkpoint.plan import execute

    try:
        check_destination(output, force, [plan.source.path])
    except MatcliError as e:
        if not dry_run:
            plan.source.close()
            raise
        plan.warnings.append(f"a real run would stop here: {e}")
    show_warnings(plan.warnings, quiet or json_output)
    try:
        if dry_run:
            description = plan.describe()
            if json_output:
                print(json.dumps(description, indent=2))
            else:
                render_plan(description)
        elif quiet or json_output or not sys.stderr.isatty():
            execute(plan, output, force)
        else:
            with _progress() as (progress, task):
                progress.update(task, total=plan.total_bytes())
                execute(plan, output, force, on_bytes=lambda n: progress.advance(task, n))
    except KeyboardInterrupt:
        raise MatcliError("interrupted; no output was written", exit_code=130) from None
    finally:
        plan.source.close()


@contextlib.contextmanager
def training_progress(options, quiet: bool):
    """A progress bar for training methods with the latest loss of every width."""
    if quiet or options.method in ("rtn", "weighted-rtn") or options.dry_run:
        yield lambda done, total, losses: None
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    unit = "step" if options.method == "qat" else "block"
    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err,
    ) as bar:
        task = bar.add_task(f"{options.method}: loading", total=None)

        def update(done: int, total: int, losses: dict[int, float]) -> None:
            shown = "  ".join(f"int{b} {v:.4g}" for b, v in sorted(losses.items(), reverse=True))
            bar.update(
                task,
                completed=done,
                total=total,
                description=f"{options.method} {unit} {done}/{total}  {shown}",
            )

        yield update


def _progress():
    from contextlib import contextmanager

    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    @contextmanager
    def bar():
        with Progress(
            "[progress.description]{task.description}",
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=err,
            transient=True,
        ) as progress:
            yield progress, progress.add_task("writing", total=None)

    return bar()


def render_plan(d: dict) -> None:
    out.print(
        f"[bold]plan[/bold]: matcli {d['command']} {d['input']}  (dry run: nothing is written)"
    )
    for o in d["outputs"]:
        where = o["folder"] or "output folder"
        table = Table(
            title=f"{where}: {o['tensors']} tensors, {human_bytes(o['bytes'])}",
            title_justify="left",
        )
        table.add_column("transform")
        table.add_column("tensors", justify="right")
        table.add_column("bytes", justify="right")
        for name, t in sorted(o["transforms"].items()):
            table.add_row(name, str(t["tensors"]), human_bytes(t["bytes"]))
        out.print(table)
        shards = Table(title="shards", title_justify="left")
        shards.add_column("file")
        shards.add_column("bytes", justify="right")
        for name, size in o["shards"].items():
            shards.add_row(name, f"{size:,}")
        out.print(shards)
        if o["config_changes"]:
            changes = Table(title="config.json changes", title_justify="left")
            changes.add_column("key")
            changes.add_column("before")
            changes.add_column("after")
            for c in o["config_changes"]:
                changes.add_row(c["key"], _short(c["before"]), _short(c["after"]))
            out.print(changes)
    if d["copied_files"]:
        out.print("copied byte for byte: " + ", ".join(d["copied_files"]))
    out.print(f"estimated peak memory: {human_bytes(d['estimated_peak_memory_bytes'])}")


def _short(value: object, width: int = 60) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    return text if len(text) <= width else text[: width - 3] + "..."


def report_written(plan: Plan, output: Path, json_output: bool, quiet: bool) -> None:
    """What was written: one row per output folder, from its final config."""
    rows = []
    for o in plan.outputs:
        folder = output / o.name if o.name else output
        rows.append(
            {
                "path": str(folder),
                "size_bytes": folder_size(folder),
                "matcli": o.config.get("matcli", {}),
            }
        )
    if json_output:
        print(
            json.dumps(
                {"outputs": rows, "warnings": plan.warnings, "report": plan.report}, indent=2
            )
        )
        return
    if quiet:
        return
    table = Table(title=f"matcli {plan.command}: written", title_justify="left")
    for column in ("folder", "what", "size"):
        table.add_column(column, justify="right" if column == "size" else "left")
    for r in rows:
        table.add_row(r["path"], _what(r["matcli"]), human_bytes(r["size_bytes"]))
    out.print(table)


def _what(info: dict) -> str:
    """A short description of an artifact from its `matcli` config block."""
    role = info.get("role")
    if role == "parent":
        return f"int{info['parent_bits']} parent ({info['scheme']}, {info['method']})"
    if role == "slice":
        bits = (
            f"int{info['bits']}"
            if info.get("bits")
            else f"mixed, {info['average_bits']:g} bits on average"
        )
        return f"{bits} slice, {info['format']}"
    if role in ("extract", "reorder"):
        widths = sorted(set(info["ffn_widths"]))
        what = f"{len(info['ffn_widths'])} layers, FFN widths {widths}"
        return what + (", neurons sorted by importance" if info.get("reordered") else "")
    return role or "model"
