"""Selection primitives: a tensor's chosen rows or columns, streamed from the source folder.

A selection is a list of runs, disjoint [start, stop) index ranges in output order, so that
each run of rows is one contiguous byte range and a few runs of columns are a few copies.
"""

from __future__ import annotations

import numpy as np

from matcli.checkpoint.reader import ModelFolder
from matcli.checkpoint.writer import OutputTensor

MAX_COPIED_RUNS = 64  # above this many runs of columns, one gather beats many copies
Runs = list[tuple[int, int]]  # disjoint [start, stop) index ranges, in output order


def runs_of(indices: list[int]) -> Runs:
    """Indices, in the order given -> maximal [start, stop) runs of consecutive ones."""
    runs: Runs = []
    for i in indices:
        if runs and runs[-1][1] == i:
            runs[-1] = (runs[-1][0], i + 1)
        else:
            runs.append((i, i + 1))
    return runs


def block_runs(blocks: list[int], size: int) -> Runs:
    """The runs covering blocks `blocks` (in order) of `size` indices each."""
    return runs_of([i for block in blocks for i in range(block * size, (block + 1) * size)])


def _length(runs: Runs) -> int:
    return sum(b - a for a, b in runs)


def select_rows(
    folder: ModelFolder, name: str, new_name: str, runs: Runs, label: str
) -> OutputTensor:
    """The rows of `runs` (dim 0), in order, read in chunks."""
    info = folder.tensors[name]

    def chunks():
        for a, b in runs:  # each run of rows is one contiguous byte range: a kernel copy
            yield folder.byte_range(name, a * info.row_bytes, b * info.row_bytes)

    return OutputTensor(new_name, info.dtype, (_length(runs), *info.shape[1:]), chunks, label)


def select_columns(
    folder: ModelFolder, name: str, new_name: str, runs: Runs, chunk_bytes: int, label: str
) -> OutputTensor:
    """The columns of `runs` (dim 1) of every row, read in row chunks."""
    info = folder.tensors[name]
    index = np.array([i for a, b in runs for i in range(a, b)], dtype=np.intp)

    def chunks():
        # One input and one output buffer serve every chunk: no allocation per chunk, so the
        # allocator never holds on to freed chunks (the writer is done with a chunk before
        # the next is made). Elements are moved as unsigned integers of their size: a
        # selection never needs their values.
        out = None
        for start, stop in folder.row_chunks(name, chunk_bytes):
            rows = folder.read_elements(name, start, stop, scratch=True)
            if out is None:
                out = np.empty((len(rows), len(index), *rows.shape[2:]), dtype=rows.dtype)
            dest = out[: len(rows)]
            if len(runs) <= MAX_COPIED_RUNS:  # a few contiguous copies beat a gather
                np.concatenate([rows[:, a:b] for a, b in runs], axis=1, out=dest)
            else:
                np.take(rows, index, axis=1, out=dest)
            yield dest

    return OutputTensor(
        new_name, info.dtype, (info.shape[0], len(index), *info.shape[2:]), chunks, label
    )


def select_along(
    folder: ModelFolder,
    name: str,
    new_name: str,
    dim: int,
    runs: Runs,
    chunk_bytes: int,
    label: str,
) -> OutputTensor:
    """The indices of `runs` along `dim` (0: rows, 1: columns)."""
    if dim == 0:
        return select_rows(folder, name, new_name, runs, label)
    return select_columns(folder, name, new_name, runs, chunk_bytes, label)
