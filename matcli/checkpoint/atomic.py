"""Atomic output: build everything in a staging folder beside the destination, then rename.

A crash, Ctrl-C or a full disk leaves the destination absent (or, with --force, the old
one untouched): never half written. A staging folder left by a killed process is named
`.NAME.matcli-tmp-PID` and is removed by the next run that writes NAME.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from matcli.errors import MatcliError

STAGING_MARK = ".matcli-tmp-"


def check_destination(destination: Path, force: bool, inputs: list[Path]) -> None:
    """Refuse a folder destination that would lose data, before any work is done."""
    problem = destination_problem(destination, force, inputs)
    if problem:
        raise MatcliError(problem)


def destination_problem(
    destination: Path, force: bool, inputs: list[Path], is_file: bool = False
) -> str | None:
    """Why writing `destination` (a folder, or one file) would lose data; None if it is safe."""
    destination = destination.absolute()
    problem = _overlaps_input(destination, inputs)
    if problem is None:
        problem = (_file_problem if is_file else _folder_problem)(destination, force)
    return problem


def _overlaps_input(destination: Path, inputs: list[Path]) -> str | None:
    resolved = destination.resolve()
    for source in inputs:
        source = source.resolve()
        if resolved == source and source.is_file():
            return f"output {destination} is the input file; choose another -o"
        if resolved == source or resolved in source.parents:
            return f"output {destination} would replace the input {source}; choose another -o"
        if source in resolved.parents and source.is_dir():
            return (
                f"output {destination} is inside the input {source}, which must stay unchanged; "
                "choose an -o outside it"
            )
    return None


def _folder_problem(destination: Path, force: bool) -> str | None:
    existing = next(p for p in destination.parents if p.exists())
    checks = [
        (destination.is_file(), f"output {destination} is a file; give a folder path for -o"),
        (
            not existing.is_dir(),
            f"output {destination} would be inside {existing}, which is a file; "
            "give a folder path for -o",
        ),
        (
            destination.is_dir() and any(destination.iterdir()) and not force,
            f"output folder {destination} exists and is not empty; choose another -o, "
            "or pass --force to replace it",
        ),
    ]
    return next((message for failed, message in checks if failed), None)


def _file_problem(destination: Path, force: bool) -> str | None:
    if destination.is_dir():
        return f"output {destination} is a folder; give a file path for one dimension"
    if destination.exists() and not force:
        return f"output file {destination} exists; choose another -o, or pass --force to replace it"
    return None


@contextmanager
def staged_folder(destination: Path, force: bool) -> Iterator[Path]:
    """Yield an empty staging folder; on success it replaces `destination` in one rename."""
    destination = destination.absolute()
    staging = _new_staging(destination)
    try:
        yield staging
        _fsync_dir(staging)
        _replace(staging, destination, force)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _replace(staging: Path, destination: Path, force: bool) -> None:
    if destination.exists():
        if any(destination.iterdir()) and not force:  # appeared while we worked
            raise MatcliError(
                f"output folder {destination} was filled by someone else during the run; "
                "nothing was replaced"
            )
        old = destination.parent / f".{destination.name}.matcli-old-{os.getpid()}"
        os.rename(destination, old)
        os.rename(staging, destination)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(staging, destination)
    _fsync_dir(destination.parent)


def _remove_stale_staging(parent: Path, name: str) -> None:
    for entry in parent.glob(f".{name}{STAGING_MARK}*"):
        pid = entry.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not _process_alive(int(pid)):
            if entry.is_dir():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def staged_file(destination: Path, force: bool) -> Iterator[Path]:
    """Yield a temporary path beside `destination`; on success it is renamed into place."""
    destination = destination.absolute()
    if destination.is_dir():
        raise MatcliError(f"output {destination} is a folder; give a file path for one dimension")
    if destination.exists() and not force:
        raise MatcliError(
            f"output file {destination} exists; choose another -o, or pass --force to replace it"
        )
    destination.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_staging(destination.parent, destination.name)
    staging = destination.parent / f".{destination.name}{STAGING_MARK}{os.getpid()}"
    try:
        yield staging
        os.replace(staging, destination)
        _fsync_dir(destination.parent)
    except BaseException:
        staging.unlink(missing_ok=True)
        raise


@contextmanager
def staged_files(destination: Path, force: bool) -> Iterator[Path]:
    """Yield a staging folder for files that land beside `destination` (the file and its
    companions, e.g. a rotation); on success each is renamed into place."""
    staging = _new_staging(destination.absolute())
    try:
        yield staging
        for staged in sorted(staging.iterdir()):
            os.replace(staged, destination.absolute().parent / staged.name)
        _fsync_dir(destination.absolute().parent)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _new_staging(destination: Path) -> Path:
    """An empty folder beside `destination`, named so that a later run can remove it."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_staging(destination.parent, destination.name)
    staging = destination.parent / f".{destination.name}{STAGING_MARK}{os.getpid()}"
    staging.mkdir()
    return staging
