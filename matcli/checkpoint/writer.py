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

from matcli.checkpoint.safetensors_file import CODE_OF_TORCH_NAME, DTYPES
from matcli.errors import MatcliError

DEFAULT_MAX_SHARD_BYTES = 5_000_000_000  # transformers' default "5GB"
# Default size of one read: large enough for full disk throughput, small enough that a few
# chunks and their transforms stay well under the memory targets.
DEFAULT_CHUNK_BYTES = 32 * 1024 * 1024


@dataclass(frozen=True)
class FileRange:
    """A chunk that is bytes of another file, copied by the kernel (copy_file_range) without
    passing through this process: byte-for-byte tensor copies cost no memory or CPU copies."""

    fd: int
    offset: int
    nbytes: int

    def read(self) -> np.ndarray:
        from matcli.checkpoint.safetensors_file import read_range

        return read_range(self.fd, self.offset, self.nbytes, Path(f"/proc/self/fd/{self.fd}"))


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
        self._file = open(self.folder / self._names[shard], "wb", buffering=0)
        self._size = 0
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
        if count:
            self.on_bytes(len(data))

    def _copy_range(self, chunk: FileRange) -> None:
        done = 0
        try:
            while done < chunk.nbytes:
                n = os.copy_file_range(
                    chunk.fd, self._file.fileno(), chunk.nbytes - done, chunk.offset + done
                )
                if n == 0:
                    raise OSError(errno.EIO, "source ended early")
                done += n
        except OSError as e:
            if e.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP) or done:
                raise _write_error(self.folder, e) from e
            self._write(
                FileRange(chunk.fd, chunk.offset, chunk.nbytes).read(), count=False
            )  # no kernel copy here
        self._size += chunk.nbytes
        self.on_bytes(chunk.nbytes)


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
