"""One runner for every command that writes: the steps they share, once and in this order.

    check the destination -> build the plan (training methods train here) ->
    dry run: render the plan  |  run: write it into a staging folder, add the manifests,
    rename into place -> report what was written

A plan is any object with the `WritingPlan` shape: checkpoint plans (quantize, slice,
extract, reorder) and embedding plans (truncate-embeddings) alike.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from matcli.errors import MatcliError
from matcli.options.base import WriteOptions, input_paths
from matcli.progress import Reporter


@dataclass(frozen=True)
class Invocation:
    """How the command was called: recorded in the manifest of what it writes."""

    command: str
    argv: list[str]
    recipe: Path | None

    def manifest_fields(self) -> dict:
        import hashlib

        fields: dict = {"command_line": ["matcli", *self.argv]}
        if self.recipe is not None:
            digest = hashlib.sha256(self.recipe.read_bytes()).hexdigest()
            fields["recipe"] = {"path": str(self.recipe), "sha256": digest}
        return fields


class WritingPlan(Protocol):
    warnings: list[str]

    def describe(self) -> dict:
        """Everything --dry-run shows, as JSON-able data."""

    def total_bytes(self) -> int:
        """Bytes the write will produce (the progress bar's total)."""

    def write(self, staging: Path, on_bytes: Callable[[int], None]) -> list[tuple[Path, dict]]:
        """Write every output under `staging` (a folder whose contents become the destination
        folder, or, for a file destination, the files to place beside it); return each folder
        that gets a manifest, with the plan's own manifest fields (input, output files)."""

    def summary(self, destination: Path) -> dict:
        """What was written, as JSON-able data."""

    def close(self) -> None: ...


@dataclass(frozen=True)
class Renderers:
    """How a plan kind is shown as tables: its dry run and its summary."""

    dry_run: Callable[[dict], None]
    written: Callable[[dict], None]


def run_writing(
    options: WriteOptions,
    invocation: Invocation,
    build: Callable[[Reporter], WritingPlan | None],
    renderers: Renderers,
) -> bool:
    """Check, plan (or train), then render the dry run or write atomically and report.
    True when an output was written."""
    from matcli.checkpoint.atomic import destination_problem

    return_freed_chunks()
    reporter = Reporter(quiet=options.quiet or options.json_output)
    problem = destination_problem(
        options.output, options.force, input_paths(options), options.writes_file()
    )
    if problem and not options.dry_run:
        raise MatcliError(problem)
    plan = build(reporter)
    if plan is None:  # a torchrun rank other than 0: rank 0 writes
        return False
    try:
        if problem:
            plan.warnings.append(f"a real run would stop here: {problem}")
        reporter.warn(plan.warnings)
        if options.dry_run:
            _show(plan.describe(), options, renderers.dry_run)
            return False
        _write(plan, options, invocation, reporter)
        _show(plan.summary(options.output), options, renderers.written)
        return True
    except KeyboardInterrupt:
        raise MatcliError("interrupted; no output was written", exit_code=130) from None
    finally:
        plan.close()


def _write(
    plan: WritingPlan, options: WriteOptions, invocation: Invocation, reporter: Reporter
) -> None:
    from matcli.checkpoint.manifest import write_manifest

    common = {
        "command": invocation.command,
        **invocation.manifest_fields(),
        "options": options.model_dump(mode="json", exclude=DISPLAY_FIELDS),
    }
    # A plan whose output file carries its own manifest (GGUF metadata) takes these fields
    # before writing; it then returns no folder for a manifest file.
    if hasattr(plan, "embed_manifest"):
        plan.embed_manifest(common)
    staged = _staged(options.output, options.force, options.writes_file())
    with staged as staging, reporter.bytes("writing", plan.total_bytes()) as on_bytes:
        for folder, fields in plan.write(staging, on_bytes):
            write_manifest(folder, common, fields)


# Options that change how a result is shown, not what is written.
DISPLAY_FIELDS = {"json_output", "quiet"}


@contextmanager
def _staged(destination: Path, force: bool, is_file: bool) -> Iterator[Path]:
    from matcli.checkpoint.atomic import staged_files, staged_folder

    with (staged_files if is_file else staged_folder)(destination, force) as staging:
        yield staging


def _show(data: dict, options, render: Callable[[dict], None]) -> None:
    if options.json_output:
        print(json.dumps(data, indent=2))
    elif not options.quiet:
        render(data)


# glibc's M_MMAP_THRESHOLD: blocks at least this large are mmap'd and unmapped when freed.
MMAP_THRESHOLD = -3
STREAMING_MMAP_BYTES = 1 << 20


def return_freed_chunks() -> None:
    """Let chunk buffers go back to the OS when freed. glibc raises its mmap threshold each
    time a large block is freed and then keeps such blocks on its heap, so streaming chunks
    of several sizes would grow the heap; a fixed threshold stops that (a no-op elsewhere)."""
    import ctypes

    try:
        ctypes.CDLL(None).mallopt(MMAP_THRESHOLD, STREAMING_MMAP_BYTES)
    except (AttributeError, OSError):  # not glibc
        pass
