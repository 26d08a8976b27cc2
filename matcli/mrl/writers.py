"""Streaming writers for truncated embeddings: .safetensors, .npy and .parquet.

Row counts and dimensions are known before the first row, so the .safetensors and .npy
headers are written first and rows are appended chunk by chunk: memory stays at one chunk.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np

from matcli.checkpoint.writer import OutputTensor, header_bytes
from matcli.errors import MatcliError

NUMPY_CODES = {"float16": "F16", "float32": "F32", "float64": "F64", "int8": "I8", "uint8": "U8", "int64": "I64", "int32": "I32"}


class EmbeddingWriter(ABC):
    @abstractmethod
    def write(self, rows: np.ndarray, columns=None) -> None:
        """Append rows (and, for parquet, the matching passthrough columns)."""

    @abstractmethod
    def close(self) -> None:
        """Finish the file, checking that every planned row was written."""


def storage_code(array_dtype: str) -> str:
    return "BF16" if array_dtype == "bfloat16" else NUMPY_CODES[array_dtype]


class SafetensorsWriter(EmbeddingWriter):
    """One embedding tensor, then passthrough tensors given as (name, dtype code, shape, bytes)."""

    def __init__(self, path: Path, key: str, shape: tuple[int, ...], dtype: str, metadata: dict[str, str], extras: list[tuple[str, str, tuple[int, ...], bytes]]):
        self.file = open(path, "wb")
        specs = [OutputTensor(key, storage_code(dtype), shape, lambda: iter([]))]
        specs += [OutputTensor(name, code, shape, lambda: iter([])) for name, code, shape, _ in extras]
        self.file.write(header_bytes(specs, metadata))
        self.extras = extras
        self.remaining = specs[0].nbytes
        self.path = path

    def write(self, rows: np.ndarray, columns=None) -> None:
        data = np.ascontiguousarray(rows).tobytes()
        self.remaining -= len(data)
        self.file.write(data)

    def close(self) -> None:
        if self.remaining:
            raise RuntimeError(f"{self.path}: {self.remaining} bytes of embeddings missing")
        for _, _, _, data in self.extras:
            self.file.write(data)
        self.file.close()


class NpyWriter(EmbeddingWriter):
    def __init__(self, path: Path, rows: int, width: int, dtype: str):
        if dtype == "bfloat16":
            raise MatcliError(".npy cannot store bfloat16; choose --dtype float16 or float32, or write .safetensors")
        self.file = open(path, "wb")
        header = {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False, "shape": (rows, width)}
        np.lib.format.write_array_header_2_0(self.file, header) if rows * width > 2**31 else np.lib.format.write_array_header_1_0(self.file, header)
        self.remaining = rows * width * np.dtype(dtype).itemsize
        self.path = path

    def write(self, rows: np.ndarray, columns=None) -> None:
        data = np.ascontiguousarray(rows).tobytes()
        self.remaining -= len(data)
        self.file.write(data)

    def close(self) -> None:
        if self.remaining:
            raise RuntimeError(f"{self.path}: {self.remaining} bytes of embeddings missing")
        self.file.close()


class ParquetWriter(EmbeddingWriter):
    """An embedding column of fixed-size lists, plus the passthrough columns, row group by chunk."""

    def __init__(self, path: Path, column: str, width: int, dtype: str, metadata: dict[str, str], passthrough_schema=None):
        import pyarrow as pa
        import pyarrow.parquet as pq

        if dtype == "bfloat16":
            raise MatcliError("parquet cannot store bfloat16; choose --dtype float16 or float32")
        self.pa = pa
        value_type = pa.from_numpy_dtype(np.dtype(dtype))
        fields = [pa.field(column, pa.list_(value_type, width))]
        if passthrough_schema is not None:
            fields += list(passthrough_schema)
        self.schema = pa.schema(fields, metadata={k.encode(): v.encode() for k, v in metadata.items()})
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
