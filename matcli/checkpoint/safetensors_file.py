"""safetensors headers and byte-range reads, without memory-mapping whole files.

A safetensors file is: 8 bytes (little-endian u64) header length N, N bytes of JSON
header ({name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {str: str}}),
then the tensor data; offsets are relative to the end of the header. We parse the header
ourselves to give one clear error for each way a file can be broken, and read tensor bytes
with positioned reads into fresh buffers, so peak memory is one chunk rather than every page
of an mmap that was ever touched.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from matcli.errors import MatcliError

# safetensors dtype code -> (torch dtype name, bytes per element)
DTYPES: dict[str, tuple[str, int]] = {
    "BOOL": ("bool", 1),
    "U8": ("uint8", 1),
    "I8": ("int8", 1),
    "I16": ("int16", 2),
    "U16": ("uint16", 2),
    "F16": ("float16", 2),
    "BF16": ("bfloat16", 2),
    "I32": ("int32", 4),
    "U32": ("uint32", 4),
    "F32": ("float32", 4),
    "I64": ("int64", 8),
    "U64": ("uint64", 8),
    "F64": ("float64", 8),
    "F8_E4M3": ("float8_e4m3fn", 1),
    "F8_E5M2": ("float8_e5m2", 1),
}
# The dtype names torch and numpy share ("float32", "int8", ...; numpy lacks bfloat16).
CODE_OF_TORCH_NAME = {name: code for code, (name, _) in DTYPES.items()}
# numpy's types for the float codes; bfloat16, which numpy lacks, is the top half of a float32.
NUMPY_FLOATS = {code: np.dtype(DTYPES[code][0]).type for code in ("F16", "F32", "F64")}
FLOAT_CODES = (*NUMPY_FLOATS, "BF16")


def torch_dtype(code: str):
    """The torch dtype of a safetensors dtype code (torch imported only when asked)."""
    import torch

    return getattr(torch, DTYPES[code][0])


# Real headers are a few MB at most (a 10k-tensor model is ~1 MB); anything far larger is
# a corrupt length field, and reading it would allocate that much memory.
MAX_HEADER_BYTES = 100 * 1024 * 1024


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor's bytes are: file, absolute offset, size; plus dtype and shape."""

    name: str
    dtype: str  # safetensors code, e.g. "BF16"
    shape: tuple[int, ...]
    path: Path
    start: int  # absolute byte offset of the data in the file
    nbytes: int

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def rows(self) -> int:
        """Length of the first dimension (1 for a scalar)."""
        return self.shape[0] if self.shape else 1

    @property
    def row_bytes(self) -> int:
        return self.nbytes // self.rows if self.rows else 0


@dataclass(frozen=True)
class SafetensorsHeader:
    path: Path
    tensors: dict[str, TensorInfo]
    metadata: dict[str, str]
    header_sha256: str
    file_size: int


def _corrupt(path: Path, what: str) -> MatcliError:
    return MatcliError(
        f"{path} is not a valid safetensors file: {what}; re-download it, "
        "or re-save the checkpoint with safetensors"
    )


def read_header(path: Path) -> SafetensorsHeader:
    """Parse and validate a safetensors header to the format's full rules; no tensor data is
    read. Everything after may trust the result: every tensor's bytes lie inside the file,
    the tensors tile the data section exactly, and the metadata is str -> str."""
    size, prefix, raw = _read_raw_header(path)
    header = _parse_header_json(path, raw)
    metadata = _metadata(path, header.pop("__metadata__", None))
    data_start = 8 + len(raw)
    tensors = {name: _tensor_info(path, name, entry, data_start) for name, entry in header.items()}
    _check_layout(path, tensors, data_start, size)
    return SafetensorsHeader(
        path=path,
        tensors=tensors,
        metadata=metadata,
        header_sha256=hashlib.sha256(prefix + raw).hexdigest(),
        file_size=size,
    )


def _read_raw_header(path: Path) -> tuple[int, bytes, bytes]:
    """(file size, the 8-byte length prefix, the header's JSON bytes)."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            prefix = f.read(8)
            if len(prefix) < 8:
                raise _corrupt(path, f"the file has only {size} bytes")
            header_len = int.from_bytes(prefix, "little")
            if header_len > min(size - 8, MAX_HEADER_BYTES):
                raise _corrupt(
                    path, f"its header length field says {header_len} bytes but the file has {size}"
                )
            raw = f.read(header_len)
    except OSError as e:
        raise MatcliError(f"cannot read {path}: {e.strerror}") from e
    if len(raw) != header_len:
        raise _corrupt(path, "the file changed while its header was read")
    return size, prefix, raw


def _parse_header_json(path: Path, raw: bytes) -> dict:
    """The header as a dict; duplicate keys (a tensor named twice) are refused."""

    def no_duplicates(pairs: list[tuple[str, object]]) -> dict:
        result = dict(pairs)
        if len(result) != len(pairs):
            seen: set[str] = set()
            dup = next(k for k, _ in pairs if k in seen or seen.add(k))
            raise _corrupt(path, f"its header names {dup!r} twice")
        return result

    try:
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=no_duplicates)
    except (UnicodeDecodeError, ValueError) as e:  # JSONDecodeError is a ValueError
        raise _corrupt(path, f"its header is not JSON ({e})") from e
    except RecursionError as e:
        raise _corrupt(path, "its header is JSON nested too deeply") from e
    if not isinstance(header, dict):
        raise _corrupt(path, "its header is not a JSON object")
    return header


def _metadata(path: Path, metadata: object) -> dict[str, str]:
    if metadata is None:
        return {}
    if not isinstance(metadata, dict):
        raise _corrupt(
            path, f"its __metadata__ is a {type(metadata).__name__}, not an object of strings"
        )
    for key, value in metadata.items():
        if not isinstance(value, str):
            raise _corrupt(path, f"its __metadata__ value for {key!r} is {value!r}, not a string")
    return metadata


def _tensor_info(path: Path, name: str, entry: object, data_start: int) -> TensorInfo:
    if not isinstance(entry, dict) or not {"dtype", "shape", "data_offsets"} <= entry.keys():
        raise _corrupt(path, f"entry {name!r} lacks dtype, shape or data_offsets")
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if not isinstance(dtype, str) or dtype not in DTYPES:
        raise _corrupt(path, f"tensor {name!r} has unknown dtype {dtype!r}")
    if not isinstance(shape, list) or not all(_is_count(d) for d in shape):
        raise _corrupt(path, f"tensor {name!r} has an invalid shape {shape!r}")
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(_is_count(o) for o in offsets)
        or offsets[1] < offsets[0]
    ):
        raise _corrupt(path, f"tensor {name!r} has invalid data_offsets {offsets!r}")
    nbytes = offsets[1] - offsets[0]
    if nbytes != math.prod(shape) * DTYPES[dtype][1]:
        raise _corrupt(path, f"tensor {name!r} has {nbytes} bytes for shape {shape} of {dtype}")
    return TensorInfo(name, dtype, tuple(shape), path, data_start + offsets[0], nbytes)


def _is_count(value: object) -> bool:
    """A non-negative JSON integer (true and false are not integers here)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _check_layout(path: Path, tensors: dict[str, TensorInfo], data_start: int, size: int) -> None:
    """The tensors, sorted by offset, must tile the data section: from 0, without overlaps or
    holes, ending exactly at the end of the file (as the reference implementation requires)."""
    end = data_start
    for info in sorted(tensors.values(), key=lambda t: (t.start, t.nbytes)):
        if info.start + info.nbytes > size:
            raise _corrupt(
                path,
                f"tensor {info.name!r} ends at byte {info.start + info.nbytes} beyond the end of "
                f"the file ({size} bytes): the file is truncated",
            )
        if info.start < end:
            raise _corrupt(
                path, f"tensor {info.name!r} overlaps the tensor before it (data_offsets)"
            )
        if info.start > end:
            raise _corrupt(
                path,
                f"there is a hole of {info.start - end} bytes before tensor {info.name!r} "
                "(data_offsets)",
            )
        end = info.start + info.nbytes
    if end != size:
        raise _corrupt(
            path,
            f"its header describes {end - data_start} bytes of tensor data "
            f"but the file holds {size - data_start}",
        )


def read_range(
    fd: int, start: int, nbytes: int, path: Path, out: np.ndarray | None = None
) -> np.ndarray:
    """Read exactly nbytes at an absolute offset into `out`, or a new uint8 array.

    A new array is allocated uninitialised (a bytearray would be zero-filled first: one more
    pass over memory for every byte read).
    """
    buf = np.empty(nbytes, dtype=np.uint8) if out is None else out
    view = memoryview(buf)
    done = 0
    while done < nbytes:
        n = os.preadv(fd, [view[done:]], start + done)
        if n == 0:
            raise MatcliError(
                f"{path} ended early while reading: "
                "the file was truncated or changed during the run"
            )
        done += n
    return buf


@dataclass(frozen=True)
class FileRange:
    """Bytes of another file, as a chunk the writer copies file to file in the kernel
    (copy_file_range) without passing them through this process."""

    fd: int
    offset: int
    nbytes: int

    def read(self) -> np.ndarray:
        return read_range(self.fd, self.offset, self.nbytes, Path(f"/proc/self/fd/{self.fd}"))
