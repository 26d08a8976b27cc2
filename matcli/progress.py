"""Progress and warnings on stderr, the same for every command.

On a terminal: rich progress bars. When stderr is a file (a background run, a CI log): one
plain line at once, then at most one every `MATCLI_PROGRESS_SECONDS` seconds (default 5) and
one at the end, so a long run is never silent until it ends; a training line has the step,
the loss per width, tokens/s and the time left. `quiet` (-q or --json) shows neither.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console

from matcli.errors import MatcliError

INTERVAL_VARIABLE = "MATCLI_PROGRESS_SECONDS"
DEFAULT_INTERVAL_S = 5.0
err = Console(stderr=True)


def plain_interval() -> float:
    """Seconds between plain progress lines: $MATCLI_PROGRESS_SECONDS, else the default."""
    text = os.environ.get(INTERVAL_VARIABLE, "").strip()
    if not text:
        return DEFAULT_INTERVAL_S
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0:
        raise MatcliError(
            f"{INTERVAL_VARIABLE}={text!r} is not a number of seconds >= 0; "
            f"unset it for the default {DEFAULT_INTERVAL_S:g}"
        )
    return value


# (done, total, loss per width): what a training method reports after each step or block.
TrainingUpdate = Callable[[int, int, dict[int | str, float]], None]


class Reporter:
    def __init__(self, quiet: bool, interval_s: float | None = None):
        self.quiet = quiet
        self.interval_s = plain_interval() if interval_s is None else interval_s

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
    def training(
        self, label: str, unit: str | None, tokens_per_unit: int | None = None
    ) -> Iterator[TrainingUpdate]:
        """A callback taking (done, total, loss per width) after each step or block;
        `tokens_per_unit` (tokens one step or block processes) gives the lines tokens/s."""
        if self.quiet or unit is None:
            yield lambda done, total, losses: None
            return
        rate = _Rate(tokens_per_unit)
        if sys.stderr.isatty():
            with _training_bar() as bar:
                task = bar.add_task(f"{label}: loading", total=None)

                def update(done: int, total: int, losses: dict[int, float]) -> None:
                    rate.update(done, total)
                    text = f"{label} {unit} {done}/{total}  {_losses(losses)}{rate.tokens()}"
                    bar.update(task, completed=done, total=total, description=text)

                yield update
        else:
            line = _PlainLine(label, self.interval_s)

            def update(done: int, total: int, losses: dict[int, float]) -> None:
                rate.update(done, total)
                text = f"{unit} {done}/{total}  {_losses(losses)}{rate.tokens()}{rate.eta()}"
                line.maybe(text, force=done == total)

            yield update


class _Rate:
    """Units per second since the first update (model loading is not training speed)."""

    def __init__(self, tokens_per_unit: int | None):
        self.tokens_per_unit = tokens_per_unit
        self.first: tuple[int, float] | None = None
        self.per_second = 0.0
        self.left = 0

    def update(self, done: int, total: int) -> None:
        now = time.monotonic()
        if self.first is None:
            self.first = (done, now)
        elif now > self.first[1]:
            self.per_second = (done - self.first[0]) / (now - self.first[1])
        self.left = total - done

    def tokens(self) -> str:
        if not self.per_second or not self.tokens_per_unit:
            return ""
        return f"  {self.per_second * self.tokens_per_unit:,.0f} tok/s"

    def eta(self) -> str:
        if not self.per_second or not self.left:
            return ""
        minutes, seconds = divmod(round(self.left / self.per_second), 60)
        hours, minutes = divmod(minutes, 60)
        return f"  ETA {hours}:{minutes:02d}:{seconds:02d}"


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
