"""Progress and warnings on stderr, the same for every command.

On a terminal: rich progress bars. When stderr is a file (a background run, a CI log): one
plain line every `PLAIN_INTERVAL_S` seconds and one at the end, so a long run is never
silent until it ends. `quiet` (-q or --json) shows neither.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console

PLAIN_INTERVAL_S = 30.0
err = Console(stderr=True)

# (done, total, loss per width): what a training method reports after each step or block.
TrainingUpdate = Callable[[int, int, dict[int | str, float]], None]


class Reporter:
    def __init__(self, quiet: bool, interval_s: float = PLAIN_INTERVAL_S):
        self.quiet = quiet
        self.interval_s = interval_s

    def warn(self, warnings: list[str]) -> None:
        if not self.quiet:
            for warning in warnings:
                err.print(f"[yellow]warning:[/yellow] {warning}", highlight=False)

    @contextmanager
    def bytes(self, label: str, total: int) -> Iterator[Callable[[int], None]]:
        """A callback taking the bytes just written."""
        if self.quiet:
            yield lambda n: None
        elif sys.stderr.isatty():
            with _byte_bar() as bar:
                task = bar.add_task(label, total=total)
                yield lambda n: bar.advance(task, n)
        else:
            line = _PlainLine(label, self.interval_s)
            done = [0]

            def advance(n: int) -> None:
                done[0] += n
                line.maybe(f"{_gb(done[0])} of {_gb(total)} GB ({done[0] / max(total, 1):.0%})")

            yield advance
            line.final(f"{_gb(done[0])} GB written")

    @contextmanager
    def training(self, label: str, unit: str | None) -> Iterator[TrainingUpdate]:
        """A callback taking (done, total, loss per width) after each step or block."""
        if self.quiet or unit is None:
            yield lambda done, total, losses: None
        elif sys.stderr.isatty():
            with _training_bar() as bar:
                task = bar.add_task(f"{label}: loading", total=None)

                def update(done: int, total: int, losses: dict[int, float]) -> None:
                    text = f"{label} {unit} {done}/{total}  {_losses(losses)}"
                    bar.update(task, completed=done, total=total, description=text)

                yield update
        else:
            line = _PlainLine(label, self.interval_s)
            last = [""]

            def update(done: int, total: int, losses: dict[int, float]) -> None:
                last[0] = f"{unit} {done}/{total}  {_losses(losses)}"
                line.maybe(last[0], force=done == total)

            yield update


class _PlainLine:
    """Plain progress lines for a log file, at most one per interval."""

    def __init__(self, label: str, interval_s: float):
        self.label, self.interval_s = label, interval_s
        self.start = time.monotonic()
        self.last = self.start - interval_s  # the first update is shown at once

    def maybe(self, text: str, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self.last >= self.interval_s:
            self.last = now
            self.final(text)

    def final(self, text: str) -> None:
        elapsed = time.monotonic() - self.start
        print(f"{self.label}: {text}  [{elapsed:.0f} s]", file=sys.stderr, flush=True)


def _gb(n: int) -> str:
    return f"{n / 1e9:.2f}"


def _losses(losses: dict[int | str, float]) -> str:
    """Widths in bits (int8 ...), or named granularities as they are (nest's ffn0.5 ...)."""
    return "  ".join(
        f"{b if isinstance(b, str) else f'int{b}'} {v:.4g}"
        for b, v in sorted(losses.items(), reverse=True)
    )


def _byte_bar():
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    columns = (BarColumn(), DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn())
    return Progress(
        "[progress.description]{task.description}", *columns, console=err, transient=True
    )


def _training_bar():
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = (BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn())
    return Progress("[progress.description]{task.description}", *columns, console=err)
