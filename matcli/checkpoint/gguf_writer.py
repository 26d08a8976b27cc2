"""One GGUF file, streamed: header, metadata and tensor infos first, then each tensor's bytes
chunk by chunk, through gguf-py's `GGUFWriter` (llama.cpp's own writer).

GGUFWriter normally holds every tensor until it writes; here it is given only each tensor's
name, ggml type and byte size up front (`add_tensor_info`), which fixes every offset, and
the data are then appended in order with its own alignment padding, so at most one chunk
is in memory. The file is written where the runner stages it and renamed into place.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass
class GgufTensor:
    """One tensor of the file: its llama.cpp name, ggml type, shape in bytes (the checkpoint
    tensor's shape with the last dimension in bytes) and the function that yields its bytes
    in row order."""

    name: str
    ggml_type: str
    byte_shape: tuple[int, ...]
    chunks: Callable[[], Iterator[np.ndarray]]
    transform: str
    source: str  # the checkpoint tensor it comes from

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.byte_shape))


@dataclass(frozen=True)
class WrittenGguf:
    name: str
    size: int
    header_sha256: str


def write_gguf(
    path: Path,
    arch: str,
    metadata: Callable[[object], None],
    tensors: list[GgufTensor],
    on_bytes: Callable[[int], None],
) -> WrittenGguf:
    """Write `tensors` to `path`; `metadata(writer)` adds the key/value pairs."""
    import gguf

    writer = gguf.GGUFWriter(path, arch)
    metadata(writer)
    for t in tensors:
        qtype = gguf.GGMLQuantizationType[t.ggml_type]
        writer.add_tensor_info(t.name, t.byte_shape, np.dtype(np.uint8), t.nbytes, qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    fout = writer.fout[0]
    header_end = fout.tell()
    try:
        for t in tensors:
            writer.write_padding(fout, fout.tell())
            _write_tensor(fout, t, on_bytes)
            writer.write_padding(fout, t.nbytes)
        fout.flush()
        os.fsync(fout.fileno())
    finally:
        writer.close()
    return WrittenGguf(path.name, path.stat().st_size, _header_sha256(path, header_end))


def _write_tensor(fout, tensor: GgufTensor, on_bytes: Callable[[int], None]) -> None:
    written = 0
    for chunk in tensor.chunks():
        data = np.ascontiguousarray(chunk).view(np.uint8)
        fout.write(data.data)
        written += data.nbytes
        on_bytes(data.nbytes)
    if written != tensor.nbytes:
        raise RuntimeError(f"{tensor.name}: wrote {written} bytes, planned {tensor.nbytes}")


def _header_sha256(path: Path, length: int) -> str:
    """The hash of everything before the tensor data (metadata and tensor infos): what the
    manifest records, as it does for safetensors headers."""
    with path.open("rb") as f:
        return hashlib.sha256(f.read(length)).hexdigest()
