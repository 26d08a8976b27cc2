"""Streaming writers for truncated embeddings: .safetensors, .npy and .parquet.

Row counts and dimensions are known before the first row, so the .safetensors and .npy
headers are written first and rows are appended chunk by chunk: memory stays at one chunk.
"""

from __future__ import annotations

import io
from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np

from matcli.checkpoint.safetensors_file import CODE_OF_TORCH_NAME
from matcli.checkpoint.writer import OutputTensor, header_bytes
from matcli.errors import MatcliError


class EmbeddingWriter(ABC):
    @abstractmethod
    def write(self, rows: np.ndarray, columns=None) -> None:
        """Append rows (and, for parquet, the matching passthrough columns)."""

    @abstractmethod
    def close(self) -> None:
        """Finish the file, checking that every planned row was written."""


def storage_code(array_dtype: str) -> str:
    return CODE_OF_TORCH_NAME[array_dtype]


class _RowsAfterHeader(EmbeddingWriter):
    """A file that is a header, then every row's bytes, then (optionally) trailing bytes."""

    def __init__(self, path: Path, header: bytes, row_bytes_total: int, trailer: bytes = b""):
        self.path, self.trailer = path, trailer
        self.file = open(path, "wb")  # noqa: SIM115 - open across write() calls; close() closes
        self.file.write(header)
        self.remaining = row_bytes_total

    def write(self, rows: np.ndarray, columns=None) -> None:
        data = np.ascontiguousarray(rows).tobytes()
        self.remaining -= len(data)
        self.file.write(data)

    def close(self) -> None:
        if self.remaining:
            raise RuntimeError(f"{self.path}: {self.remaining} bytes of embeddings missing")
        self.file.write(self.trailer)
        self.file.close()


class SafetensorsWriter(_RowsAfterHeader):
    """One tensor written row by row, then passthrough tensors (name, dtype code, shape, bytes)."""

    def __init__(
        self,
        path: Path,
        key: str,
        shape: tuple[int, ...],
        dtype: str,
        metadata: dict[str, str],
        extras: list[tuple[str, str, tuple[int, ...], bytes]],
    ):
        specs = [OutputTensor(key, storage_code(dtype), shape, lambda: iter([]))]
        specs += [
            OutputTensor(name, code, shape, lambda: iter([])) for name, code, shape, _ in extras
        ]
        super().__init__(
            path,
            header_bytes(specs, metadata),
            specs[0].nbytes,
            b"".join(data for *_, data in extras),
        )


class NpyWriter(_RowsAfterHeader):
    def __init__(self, path: Path, rows: int, width: int, dtype: str):
        if dtype == "bfloat16":
            raise MatcliError(
                ".npy cannot store bfloat16; choose --dtype float16 or float32, or write "
                ".safetensors"
            )
        header = io.BytesIO()
        fields = {
            "descr": np.lib.format.dtype_to_descr(np.dtype(dtype)),
            "fortran_order": False,
            "shape": (rows, width),
        }
        np.lib.format.write_array_header_2_0(header, fields)
        super().__init__(path, header.getvalue(), rows * width * np.dtype(dtype).itemsize)


class ParquetWriter(EmbeddingWriter):
    """An embedding column of fixed-size lists, plus the passthrough columns, row group by chunk."""

    def __init__(
        self,
        path: Path,
        column: str,
        width: int,
        dtype: str,
        metadata: dict[str, str],
        passthrough_schema=None,
    ):
        import pyarrow as pa
        import pyarrow.parquet as pq

        if dtype == "bfloat16":
            raise MatcliError("parquet cannot store bfloat16; choose --dtype float16 or float32")
        self.pa = pa
        value_type = pa.from_numpy_dtype(np.dtype(dtype))
        fields = [pa.field(column, pa.list_(value_type, width))]
        if passthrough_schema is not None:
            fields += list(passthrough_schema)
        self.schema = pa.schema(
            fields, metadata={k.encode(): v.encode() for k, v in metadata.items()}
        )
        self.writer = pq.ParquetWriter(path, self.schema)
        self.column, self.width = column, width

    def write(self, rows: np.ndarray, columns=None) -> None:
        pa = self.pa
        flat = pa.array(np.ascontiguousarray(rows).reshape(-1))
        arrays = [pa.FixedSizeListArray.from_arrays(flat, self.width)]
        if columns is not None:
            arrays += list(columns.columns)
        self.writer.write_table(pa.Table.from_arrays(arrays, schema=self.schema))

    def close(self) -> None:
        self.writer.close()
