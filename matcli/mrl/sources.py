"""Embedding files read in row chunks, whatever their size: .npy, .safetensors, .parquet.

Nothing is memory-mapped: an mmap'd 8 GB file shows up to 8 GB of resident memory once its
pages have been touched, so rows are read with positioned reads into fresh buffers.
"""

from __future__ import annotations

import hashlib
import os
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from tokenize import TokenError

import numpy as np

from matcli.checkpoint.safetensors_file import (
    DTYPES,
    FLOAT_CODES,
    NUMPY_FLOATS,
    read_header,
    read_range,
)
from matcli.errors import MatcliError


@dataclass
class Passthrough:
    """Data that travels unchanged beside the embeddings (ids, labels, other columns)."""

    # safetensors: name -> (dtype, shape)
    tensors: dict[str, tuple[str, tuple[int, ...]]] = field(default_factory=dict)
    columns: list[str] = field(default_factory=list)  # parquet column names


class EmbeddingSource(ABC):
    """A [rows, dim] float array on disk, read in row chunks as float32 numpy arrays."""

    path: Path
    rows: int
    dim: int
    dtype: str  # "float16" | "bfloat16" | "float32" | "float64"
    passthrough: Passthrough
    BAD_ROWS = "hold NaN or inf"  # how bad rows are described in the refusal

    @abstractmethod
    def chunks(self, rows_per_chunk: int) -> Iterator[tuple[int, np.ndarray]]:
        """(first row, float32 array) for consecutive row chunks."""

    @abstractmethod
    def digest(self) -> str:
        """sha256 of the file's header and size: identifies the input without reading it all."""


def open_source(
    path: Path, key: str | None = None, text_field: str = "embedding"
) -> EmbeddingSource:
    if not path.exists():
        raise MatcliError(
            f"{path} does not exist; give a .npy, .safetensors or .parquet file of embeddings"
        )
    suffix = path.suffix.lower()
    if suffix == ".npy":
        return NpySource(path)
    if suffix == ".safetensors":
        return SafetensorsSource(path, key)
    if suffix == ".parquet":
        return ParquetSource(path, key or text_field)
    raise MatcliError(
        f"{path}: unknown file type {path.suffix!r}; matcli reads .npy, .safetensors and "
        ".parquet embeddings"
    )


def bad_rows_message(source: EmbeddingSource, rows: np.ndarray) -> str:
    """'PATH: rows 3, 250 hold NaN or inf' (the first five row numbers)."""
    shown = ", ".join(str(int(r)) for r in rows[:5]) + (" ..." if len(rows) > 5 else "")
    return f"{source.path}: rows {shown} {source.BAD_ROWS}"


def _check_2d(path: Path, shape: tuple[int, ...], what: str) -> None:
    if len(shape) != 2:
        raise MatcliError(
            f"{path}: {what} has shape {list(shape)}; embeddings must be a 2-D [rows, dim] array"
        )


class NpySource(EmbeddingSource):
    def __init__(self, path: Path):
        self.path = path
        with open(path, "rb") as f:
            try:
                version = np.lib.format.read_magic(f)
                read = (
                    np.lib.format.read_array_header_1_0
                    if version == (1, 0)
                    else np.lib.format.read_array_header_2_0
                )
                shape, fortran, dtype = read(f)
            except (ValueError, SyntaxError, TokenError) as e:  # numpy parses the header as Python
                raise MatcliError(
                    f"{path} is not a valid .npy file ({e}); re-create it with numpy.save"
                ) from e
            self.offset = f.tell()
        _check_2d(path, shape, "the array")
        if fortran:
            raise MatcliError(
                f"{path} is stored in Fortran order; save it C-contiguous "
                "(np.ascontiguousarray) first"
            )
        if dtype.kind != "f" or dtype.itemsize not in (2, 4, 8):
            raise MatcliError(
                f"{path} holds {dtype}; embeddings must be float16, float32 or float64"
            )
        self.np_dtype = dtype
        self.rows, self.dim = shape
        self.dtype = dtype.name
        expected = self.offset + self.rows * self.dim * dtype.itemsize
        size = path.stat().st_size
        if size < expected:
            raise MatcliError(
                f"{path} is truncated: its header describes {expected} bytes but the file has "
                f"{size}; re-create it"
            )
        self.passthrough = Passthrough()

    def chunks(self, rows_per_chunk: int):
        row_bytes = self.dim * self.np_dtype.itemsize
        fd = os.open(self.path, os.O_RDONLY)
        try:
            for start in range(0, self.rows, rows_per_chunk):
                stop = min(start + rows_per_chunk, self.rows)
                buf = read_range(
                    fd, self.offset + start * row_bytes, (stop - start) * row_bytes, self.path
                )
                yield (
                    start,
                    buf.view(self.np_dtype)
                    .reshape(stop - start, self.dim)
                    .astype(np.float32, copy=False),
                )
        finally:
            os.close(fd)

    def digest(self) -> str:
        with open(self.path, "rb") as f:
            header = f.read(self.offset)
        return hashlib.sha256(header + str(self.path.stat().st_size).encode()).hexdigest()


class SafetensorsSource(EmbeddingSource):
    def __init__(self, path: Path, key: str | None):
        self.path = path
        self.header = read_header(path)
        float_2d = [
            n
            for n, t in self.header.tensors.items()
            if len(t.shape) == 2 and t.dtype in FLOAT_CODES
        ]
        if key is None:
            if len(float_2d) != 1:
                found = ", ".join(sorted(self.header.tensors)) or "none"
                raise MatcliError(
                    f"{path} holds several tensors ({found}); choose the embeddings with --key NAME"
                )
            key = float_2d[0]
        if key not in self.header.tensors:
            raise MatcliError(
                f"{path} has no tensor {key!r}; its tensors are "
                f"{', '.join(sorted(self.header.tensors))}"
            )
        self.info = self.header.tensors[key]
        _check_2d(path, self.info.shape, f"tensor {key!r}")
        if self.info.dtype not in FLOAT_CODES:
            raise MatcliError(
                f"{path}: tensor {key!r} is {self.info.dtype}; embeddings must be float16, "
                "bfloat16, float32 or float64"
            )
        self.key = key
        self.rows, self.dim = self.info.shape
        self.dtype = DTYPES[self.info.dtype][0]
        self.passthrough = Passthrough(
            tensors={n: (t.dtype, t.shape) for n, t in self.header.tensors.items() if n != key}
        )

    def chunks(self, rows_per_chunk: int):
        fd = os.open(self.path, os.O_RDONLY)
        row_bytes = self.info.row_bytes
        try:
            for start in range(0, self.rows, rows_per_chunk):
                stop = min(start + rows_per_chunk, self.rows)
                buf = read_range(
                    fd, self.info.start + start * row_bytes, (stop - start) * row_bytes, self.path
                )
                yield start, _decode(buf, self.info.dtype).reshape(stop - start, self.dim)
        finally:
            os.close(fd)

    def read_tensor_bytes(self, name: str) -> np.ndarray:
        info = self.header.tensors[name]
        fd = os.open(self.path, os.O_RDONLY)
        try:
            return read_range(fd, info.start, info.nbytes, self.path)
        finally:
            os.close(fd)

    def digest(self) -> str:
        return hashlib.sha256(
            (self.header.header_sha256 + str(self.header.file_size)).encode()
        ).hexdigest()


def _decode(buf: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "BF16":  # numpy has no bfloat16: its bits are the top half of a float32
        raw = buf.view(np.uint16).astype(np.uint32) << 16
        return raw.view(np.float32)
    return buf.view(NUMPY_FLOATS[dtype]).astype(np.float32, copy=False)


class ParquetSource(EmbeddingSource):
    """A list or fixed-size-list column of a parquet file (pyarrow, an optional extra).

    Null and empty rows come out as NaN rows, so they are refused with their row numbers or
    dropped by --skip-bad-rows exactly like rows holding NaN (and their other columns with them).
    """

    BAD_ROWS = "are null or empty, or hold NaN or inf"

    def __init__(self, path: Path, column: str):
        try:
            import pyarrow.parquet as pq
        except ImportError as e:
            raise MatcliError(
                "reading .parquet needs pyarrow: pip install 'matcli[parquet]'"
            ) from e
        self.path = path
        try:
            self.file = pq.ParquetFile(path)
        except Exception as e:  # pyarrow raises several types for corrupt files
            raise MatcliError(f"{path} is not a valid parquet file: {e}") from e
        schema = self.file.schema_arrow
        if column not in schema.names:
            raise MatcliError(
                f"{path} has no column {column!r} (columns: {', '.join(schema.names)}); "
                "choose it with --key NAME"
            )
        self.column = column
        self.rows = self.file.metadata.num_rows
        if self.rows == 0:
            raise MatcliError(f"{path} has no rows")
        self.dtype = _list_value_dtype(path, column, schema.field(column).type)
        self.dim = _list_size(schema.field(column).type) or self._first_length()
        self.passthrough = Passthrough(columns=[n for n in schema.names if n != column])

    def _first_length(self) -> int:
        """The length of the first non-empty row (leading null or empty rows are bad rows)."""
        import pyarrow.compute as pc

        # Small batches: the first row is usually the one.
        for batch in self.file.iter_batches(batch_size=1024, columns=[self.column]):
            lengths = pc.fill_null(pc.list_value_length(batch.column(0)), 0).to_numpy()
            if lengths.any():
                return int(lengths[np.argmax(lengths > 0)])
        raise MatcliError(
            f"{self.path}: every row of column {self.column!r} is null or empty; there are no "
            "embeddings to read"
        )

    def chunks(self, rows_per_chunk: int):
        start = 0
        for batch in self.file.iter_batches(batch_size=rows_per_chunk, columns=[self.column]):
            yield start, self._rows(batch.column(0), start)
            start += len(batch)

    def _rows(self, col, start: int) -> np.ndarray:
        """[rows, dim] float32; null or empty rows are NaN (null values inside a row too)."""
        import pyarrow as pa
        import pyarrow.compute as pc

        lengths = pc.fill_null(pc.list_value_length(col), 0).to_numpy()
        wrong = np.flatnonzero((lengths != self.dim) & (lengths != 0))
        if len(wrong):
            row = int(wrong[0])
            raise MatcliError(
                f"{self.path}: row {row + start} has {int(lengths[row])} values, not "
                f"{self.dim}; every row needs the same dimension"
            )
        out = np.full((len(col), self.dim), np.nan, dtype=np.float32)
        full = lengths == self.dim
        values = pc.list_flatten(col.filter(pa.array(full))).to_numpy(zero_copy_only=False)
        out[full] = values.reshape(-1, self.dim)
        return out

    def batches(self, rows_per_chunk: int, columns: list[str]):
        return self.file.iter_batches(batch_size=rows_per_chunk, columns=columns)

    def digest(self) -> str:
        meta = self.file.metadata
        size = self.path.stat().st_size
        identity = f"{meta.num_rows}:{meta.num_row_groups}:{size}:{self.file.schema_arrow}"
        return hashlib.sha256(identity.encode()).hexdigest()


def _list_value_dtype(path: Path, column: str, arrow_type) -> str:
    """The numpy name of a list column's float value type; anything else is refused."""
    import pyarrow as pa

    if not (
        pa.types.is_list(arrow_type)
        or pa.types.is_large_list(arrow_type)
        or pa.types.is_fixed_size_list(arrow_type)
    ):
        raise MatcliError(
            f"{path}: column {column!r} is {arrow_type}, not a list of numbers per row; "
            "embeddings must be 2-D"
        )
    value_type = arrow_type.value_type
    if not pa.types.is_floating(value_type):
        raise MatcliError(
            f"{path}: column {column!r} holds lists of {value_type}; embeddings must be "
            "float16, float32 or float64 (cast the column to float32)"
        )
    return np.dtype(value_type.to_pandas_dtype()).name


def _list_size(arrow_type) -> int | None:
    import pyarrow as pa

    return arrow_type.list_size if pa.types.is_fixed_size_list(arrow_type) else None


def rows_per_chunk(dim: int, chunk_bytes: int) -> int:
    """Rows per chunk so that one float32 chunk is about chunk_bytes."""
    return max(1, chunk_bytes // (4 * max(1, dim)))
