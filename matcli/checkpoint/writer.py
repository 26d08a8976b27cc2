"""Streaming sharded safetensors writer with a bounded memory footprint.

The plan knows every output tensor's dtype and shape before any data exists, so each
shard's header is written first and the tensor bytes are streamed after it, chunk by chunk.
Nothing larger than one chunk is ever held. Shard names follow transformers'
(`model.safetensors`, or `model-0000i-of-0000N.safetensors` plus
`model.safetensors.index.json`), and the shard count is known up front: no renames.
"""

from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

# The sizes are re-exported: options and plan still import them from here.
from matcli.checkpoint.safetensors_file import CODE_OF_TORCH_NAME, DTYPES, FileRange
from matcli.errors import MatcliError

if TYPE_CHECKING:  # torch is imported by the commands that make tensors, not by this module
    import torch

Chunk = "torch.Tensor | np.ndarray | bytes | bytearray | memoryview | FileRange"


@dataclass
class OutputTensor:
    """One tensor of an output checkpoint: what it is and how to produce its bytes.

    `chunks()` yields consecutive pieces (tensors of `dtype`, or raw bytes) whose
    concatenated bytes are the tensor's data in row-major order.
    """

    name: str
    dtype: str  # safetensors code
    shape: tuple[int, ...]
    chunks: Callable[[], Iterator[Chunk]]
    transform: str = "copy"  # a short label for plans and reports

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * DTYPES[self.dtype][1]


def dtype_code(dtype: torch.dtype) -> str:
    return CODE_OF_TORCH_NAME[str(dtype).removeprefix("torch.")]


@dataclass
class ShardLayout:
    """Which tensors go into which shard file, decided before writing."""

    shards: list[list[OutputTensor]]

    @classmethod
    def plan(cls, tensors: list[OutputTensor], max_shard_bytes: int) -> ShardLayout:
        shards: list[list[OutputTensor]] = [[]]
        size = 0
        for t in tensors:
            if shards[-1] and size + t.nbytes > max_shard_bytes:
                shards.append([])
                size = 0
            shards[-1].append(t)
            size += t.nbytes
        return cls(shards)

    def file_names(self) -> list[str]:
        n = len(self.shards)
        if n == 1:
            return ["model.safetensors"]
        return [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]

    def shard_bytes(self) -> list[int]:
        return [sum(t.nbytes for t in shard) for shard in self.shards]


def header_bytes(tensors: list[OutputTensor], metadata: dict[str, str]) -> bytes:
    header: dict[str, object] = {"__metadata__": dict(metadata)}
    offset = 0
    for t in tensors:
        header[t.name] = {
            "dtype": t.dtype,
            "shape": list(t.shape),
            "data_offsets": [offset, offset + t.nbytes],
        }
        offset += t.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the data section starts 8-byte aligned
    return len(raw).to_bytes(8, "little") + raw


@dataclass
class WrittenFile:
    name: str
    size: int
    header_sha256: str


@dataclass
class CheckpointWriter:
    """Writes one output checkpoint's shards in tensor order, one tensor at a time.

    Use: for each tensor in layout order, `begin(t)`, `write(chunk)` any number of times,
    `end()`; then `finish()` writes the index. Like the inputs in the manifest, each file is
    identified by its size and the sha256 of its header (hashing every byte would cost a
    second pass over gigabytes).
    """

    folder: Path
    layout: ShardLayout
    metadata: dict[str, str]
    on_bytes: Callable[[int], None] = lambda n: None
    written: list[WrittenFile] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._names = self.layout.file_names()
        self._order = iter([(i, t) for i, shard in enumerate(self.layout.shards) for t in shard])
        self._file = None
        self._shard = -1
        self._current: OutputTensor | None = None
        self._remaining = 0

    def begin(self, tensor: OutputTensor) -> None:
        shard, expected = next(self._order)
        if expected is not tensor:
            raise RuntimeError(f"tensor {tensor.name} written out of the planned order")
        if shard != self._shard:
            self._close_file()
            self._open_file(shard)
        self._current, self._remaining = tensor, tensor.nbytes

    def write(self, chunk: Chunk) -> None:
        size = chunk.nbytes if isinstance(chunk, FileRange) else None
        data = None if size is not None else as_bytes(chunk, self._current)
        size = len(data) if data is not None else size
        if size > self._remaining:
            raise RuntimeError(f"{self._current.name}: more bytes produced than its shape holds")
        if data is None:
            self._copy_range(chunk)
        else:
            self._write(data)
        self._remaining -= size

    def end(self) -> None:
        if self._remaining:
            raise RuntimeError(
                f"{self._current.name}: {self._remaining} bytes missing at the end of the tensor"
            )
        self._current = None

    def finish(self) -> None:
        self._close_file()
        if len(self._names) > 1:
            weight_map = {
                t.name: self._names[i] for i, shard in enumerate(self.layout.shards) for t in shard
            }
            index = {
                "metadata": {"total_size": sum(self.layout.shard_bytes())},
                "weight_map": dict(sorted(weight_map.items())),
            }
            path = self.folder / "model.safetensors.index.json"
            path.write_text(json.dumps(index, indent=2) + "\n")

    def write_tensor(self, tensor: OutputTensor) -> None:
        self.begin(tensor)
        for chunk in tensor.chunks():
            self.write(chunk)
        self.end()

    def _open_file(self, shard: int) -> None:
        self._shard = shard
        self._file = open(self.folder / self._names[shard], "wb", buffering=0)  # noqa: SIM115
        self._size = 0
        self._flushed = 0
        header = header_bytes(self.layout.shards[shard], self.metadata)
        self._header_sha256 = hashlib.sha256(header).hexdigest()
        self._write(header, count=False)

    def _close_file(self) -> None:
        if self._file is None:
            return
        os.fsync(self._file.fileno())
        self._file.close()
        self._file = None
        self.written.append(WrittenFile(self._names[self._shard], self._size, self._header_sha256))

    def _write(self, data: memoryview | bytes, count: bool = True) -> None:
        view = memoryview(data)
        try:
            while view:  # a raw write may be short
                view = view[self._file.write(view) :]
        except OSError as e:
            raise _write_error(self.folder, e) from e
        self._size += len(data)
        self._start_writeback()
        if count:
            self.on_bytes(len(data))

    def _start_writeback(self) -> None:
        """Hand every WRITEBACK_BYTES written to the disk at once, without waiting: the disk
        then writes while the next chunks are made, and the fsync at the end of the shard
        waits only for the last ones."""
        if self._size - self._flushed >= WRITEBACK_BYTES:
            start_writeback(self._file.fileno(), self._flushed, self._size - self._flushed)
            self._flushed = self._size

    def _copy_range(self, chunk: FileRange) -> None:
        """Copy file to file in pieces of WRITEBACK_BYTES, by the kernel where it can."""
        end = chunk.offset + chunk.nbytes
        for offset in range(chunk.offset, end, WRITEBACK_BYTES):
            piece = FileRange(chunk.fd, offset, min(WRITEBACK_BYTES, end - offset))
            if self._kernel_copy(piece):
                self._size += piece.nbytes
                self._start_writeback()
                self.on_bytes(piece.nbytes)
            else:
                self._write(piece.read())

    def _kernel_copy(self, piece: FileRange) -> bool:
        """copy_file_range; False when the kernel cannot copy between these files (across
        some filesystems) and nothing was copied."""
        done = 0
        try:
            while done < piece.nbytes:
                n = os.copy_file_range(
                    piece.fd, self._file.fileno(), piece.nbytes - done, piece.offset + done
                )
                if n == 0:
                    raise OSError(errno.EIO, "source ended early")
                done += n
        except OSError as e:
            if e.errno in _NO_KERNEL_COPY and not done:
                return False
            raise _write_error(self.folder, e) from e
        return True


_NO_KERNEL_COPY = (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP)
# Bytes written between two hand-overs to the disk (see CheckpointWriter._start_writeback).
WRITEBACK_BYTES = 64 * 1024 * 1024
# sync_file_range's flag: start writing the range's dirty pages, do not wait for them.
_SYNC_FILE_RANGE_WRITE = 2


def start_writeback(fd: int, offset: int, nbytes: int) -> None:
    """Start writing a file's byte range to disk without waiting (Linux's sync_file_range);
    elsewhere a no-op, and the fsync that closes the file writes everything."""
    if _sync_file_range is not None:
        _sync_file_range(fd, offset, nbytes, _SYNC_FILE_RANGE_WRITE)


def _load_sync_file_range():
    import ctypes

    try:
        function = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (AttributeError, OSError):  # not Linux with glibc or musl
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong, ctypes.c_uint]
    function.restype = ctypes.c_int
    return function


_sync_file_range = _load_sync_file_range() if sys.platform.startswith("linux") else None


def _write_error(folder: Path, e: OSError) -> MatcliError:
    return MatcliError(f"writing {folder} failed: {e.strerror}; nothing was kept", exit_code=1)


def as_bytes(chunk: Chunk, tensor: OutputTensor) -> memoryview:
    """A produced chunk as bytes, checking that a tensor chunk has the planned dtype."""
    torch = sys.modules.get("torch")  # a tensor chunk means torch is already imported
    if torch is not None and isinstance(chunk, torch.Tensor):
        if dtype_code(chunk.dtype) != tensor.dtype:
            raise RuntimeError(f"{tensor.name}: produced {chunk.dtype}, planned {tensor.dtype}")
        flat = chunk.contiguous().reshape(-1)
        return memoryview(flat.view(torch.uint8).numpy()) if flat.numel() else memoryview(b"")
    if isinstance(chunk, FileRange):
        chunk = chunk.read()
    if isinstance(chunk, np.ndarray):
        return memoryview(np.ascontiguousarray(chunk).reshape(-1).view(np.uint8))
    return memoryview(chunk)


def write_in_lockstep(
    writers: list[CheckpointWriter], tensor_lists: list[list[OutputTensor]]
) -> None:
    """Write several checkpoints whose tensor lists correspond, one chunk of each in turn.

    When the outputs derive tensor i from the same input rows (several bit-widths of one
    parent), interleaving lets the reader's small chunk cache serve every output from one
    read of the input.
    """
    for group in zip(*tensor_lists):
        for writer, tensor in zip(writers, group):
            writer.begin(tensor)
        iterators = [iter(t.chunks()) for t in group]
        live = list(range(len(group)))
        while live:
            for i in list(live):
                chunk = next(iterators[i], None)
                if chunk is None:
                    live.remove(i)
                else:
                    writers[i].write(chunk)
        for writer in writers:
            writer.end()
