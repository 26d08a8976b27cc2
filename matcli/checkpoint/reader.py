"""Read a Hugging Face model folder: config, (sharded) safetensors headers, lazy tensor reads."""

from __future__ import annotations

import os
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from matcli.arch import language_config
from matcli.checkpoint.aux_files import aux_files
from matcli.checkpoint.defaults import DEFAULT_CHUNK_BYTES, INDEX_NAME
from matcli.checkpoint.links import resolve_inside
from matcli.checkpoint.safetensors_file import (
    DTYPES,
    FileRange,
    SafetensorsHeader,
    TensorInfo,
    read_header,
    read_range,
)
from matcli.errors import MatcliError
from matcli.inputs import read_json

if TYPE_CHECKING:  # torch is imported on the first tensor read: byte-level commands never need it
    import torch

UNSIGNED_OF_SIZE = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}
SINGLE_NAME = "model.safetensors"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


class ModelFolder:
    """A model folder opened for reading: config.json, headers of every shard, tensor index.

    Opening reads only headers. Tensor data is read on demand, whole or by rows, with
    positioned reads. With `cache_entries`, the most recent chunks are kept so that several
    outputs written in lockstep read each input chunk from disk once.
    """

    def __init__(self, path: Path | str, cache_entries: int = 0):
        self.path = Path(path)
        _check_folder(self.path)
        for name in ("config.json", INDEX_NAME):  # links: the policy of checkpoint/links.py
            resolve_inside(self.path, self.path / name)
        self.config = read_json(self.path / "config.json", "config.json")
        if not isinstance(self.config, dict):
            raise MatcliError(
                f"{self.path / 'config.json'} is not a JSON object; fix or re-create it"
            )
        self.shard_names = _shard_names(self.path)
        self.headers: dict[str, SafetensorsHeader] = {}
        self.tensors: dict[str, TensorInfo] = {}
        for name in self.shard_names:
            header = read_header(resolve_inside(self.path, self.path / name))
            self.headers[name] = header
            for tname, info in header.tensors.items():
                if tname in self.tensors:
                    raise MatcliError(
                        f"tensor {tname!r} appears in two shards of {self.path}; "
                        "the checkpoint is inconsistent"
                    )
                self.tensors[tname] = info
        self._check_index()
        # Tokenizer and other files an output copies: listed, and their links checked, now.
        self.aux = aux_files(self.path)
        self._fds: dict[Path, int] = {}
        self._cache: OrderedDict[tuple[str, int, int], np.ndarray] = OrderedDict()
        self.cache_entries = cache_entries
        self._scratch: np.ndarray | None = None

    # --- structure -------------------------------------------------------------------------

    def _check_index(self) -> None:
        index_path = self.path / INDEX_NAME
        if not index_path.exists():
            return
        weight_map = self._weight_map()
        missing = sorted(set(weight_map) - set(self.tensors))
        if missing:
            raise MatcliError(
                f"{index_path} lists {len(missing)} tensor(s) its shards do not hold "
                f"(first: {missing[0]!r}); the checkpoint is incomplete, re-download it"
            )

    def _weight_map(self) -> dict[str, str]:
        return _read_index(self.path)

    def text_config(self, key: str | None) -> dict:
        """The language-model part of the config (multimodal wrappers nest it under a key;
        a nested value that is not an object is refused)."""
        return language_config(self.config, key)

    # --- data ------------------------------------------------------------------------------

    def read(self, name: str) -> torch.Tensor:
        info = self.tensors[name]
        return self.read_rows(name, 0, info.rows)

    def read_rows(self, name: str, start: int, stop: int, scratch: bool = False) -> torch.Tensor:
        """Rows [start, stop) of a tensor (the whole tensor for a scalar); see read_bytes."""
        import torch

        info = self.tensors[name]
        buf = self.read_bytes(name, start * info.row_bytes, stop * info.row_bytes, scratch)
        dtype = getattr(torch, DTYPES[info.dtype][0])
        shape = (stop - start, *info.shape[1:]) if info.shape else ()
        return (
            torch.from_numpy(buf).view(dtype).reshape(shape)
            if len(buf)
            else torch.empty(shape, dtype=dtype)
        )

    def read_array(self, name: str) -> np.ndarray:
        """A whole tensor as a numpy array of its dtype, without torch: for the dtypes numpy
        has (every safetensors dtype but bfloat16 and the float8 types)."""
        info = self.tensors[name]
        torch_name = DTYPES[info.dtype][0]
        if torch_name.startswith(("bfloat", "float8")):
            raise ValueError(f"numpy has no {torch_name}: read {name} with read_rows")
        return self.read_bytes(name, 0, info.nbytes).view(np.dtype(torch_name)).reshape(info.shape)

    def read_elements(self, name: str, start: int, stop: int, scratch: bool = False) -> np.ndarray:
        """Rows [start, stop) as an array of unsigned integers of the element size: for
        selections, which move elements without reading their values (numpy has no bfloat16)."""
        info = self.tensors[name]
        buf = self.read_bytes(name, start * info.row_bytes, stop * info.row_bytes, scratch)
        return buf.view(UNSIGNED_OF_SIZE[DTYPES[info.dtype][1]]).reshape(
            stop - start, *info.shape[1:]
        )

    def read_bytes(self, name: str, start: int, stop: int, scratch: bool = False) -> np.ndarray:
        """Raw bytes [start, stop) of a tensor's data as uint8 (shared when cached: do not modify).

        With `scratch`, the bytes land in one buffer reused by the next scratch read, which
        saves a fresh allocation (and its page faults) per chunk: for callers that are done
        with a chunk before they read the next (byte copies, row selections).
        """
        key = (name, start, stop)
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        info = self.tensors[name]
        if scratch and not self.cache_entries:
            if self._scratch is None or len(self._scratch) < stop - start:
                self._scratch = np.empty(stop - start, dtype=np.uint8)
            return read_range(
                self._fd(info.path),
                info.start + start,
                stop - start,
                info.path,
                out=self._scratch[: stop - start],
            )
        buf = read_range(self._fd(info.path), info.start + start, stop - start, info.path)
        if self.cache_entries:
            self._cache[key] = buf
            while len(self._cache) > self.cache_entries:
                self._cache.popitem(last=False)
        return buf

    def byte_range(self, name: str, start: int, stop: int) -> FileRange:
        """Bytes [start, stop) of a tensor, to be copied file to file by the kernel."""
        info = self.tensors[name]
        return FileRange(self._fd(info.path), info.start + start, stop - start)

    def row_chunks(self, name: str, max_bytes: int = DEFAULT_CHUNK_BYTES) -> list[tuple[int, int]]:
        """Row ranges that cover the tensor, each at most max_bytes (at least one row)."""
        info = self.tensors[name]
        rows_per_chunk = max(1, max_bytes // max(1, info.row_bytes))
        return [
            (s, min(s + rows_per_chunk, info.rows)) for s in range(0, info.rows, rows_per_chunk)
        ] or [(0, 0)]

    def _fd(self, path: Path) -> int:
        if path not in self._fds:
            self._fds[path] = os.open(path, os.O_RDONLY)
        return self._fds[path]

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()
        self._cache.clear()

    def __enter__(self) -> ModelFolder:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _check_folder(path: Path) -> None:
    if not path.exists():
        raise MatcliError(f"{path} does not exist; give the path of a Hugging Face model folder")
    if not path.is_dir():
        raise MatcliError(
            f"{path} is a file; give the folder that holds config.json and the safetensors files"
        )
    if not (path / "config.json").is_file():
        raise MatcliError(
            f"{path} has no config.json; give the path of a Hugging Face model folder"
        )


def _shard_names(path: Path) -> list[str]:
    if (path / INDEX_NAME).is_file():
        names = sorted(set(_read_index(path).values()))
        for name in names:
            _check_inside(path, name)
        return names
    if (path / SINGLE_NAME).is_file():
        return [SINGLE_NAME]
    pickles = sorted(p.name for p in path.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise MatcliError(
            f"{path} holds only pickle checkpoints ({pickles[0]}); matcli reads safetensors only, "
            "because loading pickles can run arbitrary code. Convert it first: "
            "AutoModel.from_pretrained(path).save_pretrained(new_path) writes safetensors"
        )
    raise MatcliError(
        f"{path} has no {SINGLE_NAME} and no {INDEX_NAME}; it holds no safetensors weights"
    )


def _check_inside(folder: Path, name: object) -> None:
    """A shard name from an index must be a plain file name in the model folder.

    The name is checked as text first; a shard that is a link then goes through the policy of
    checkpoint/links.py (the Hugging Face cache's links into its blobs folder are allowed).
    """
    if not isinstance(name, str) or not name:
        raise MatcliError(f"{folder / INDEX_NAME} names an invalid shard {name!r}; fix the index")
    if name in (".", "..") or "/" in name or "\\" in name or os.path.isabs(name):
        raise MatcliError(
            f"{folder / INDEX_NAME} points to {name!r}, outside the model folder; "
            "refusing to read it (fix the index: shard names must be plain file names)"
        )
    resolve_inside(folder, folder / name)  # a link: the policy of checkpoint/links.py
    if not (folder / name).is_file():
        raise MatcliError(
            f"{folder / INDEX_NAME} names shard {name!r}, which is missing; "
            "re-download the checkpoint"
        )


def _read_index(folder: Path) -> dict[str, str]:
    """The index's weight_map, checked: a non-empty object of tensor name -> shard file name,
    next to an optional `metadata` object."""
    path = folder / INDEX_NAME
    index = read_json(path, INDEX_NAME)
    if not isinstance(index, dict):
        raise MatcliError(f"{path} is not a JSON object; fix or re-create the index")
    weight_map = index.get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise MatcliError(f"{path} has no weight_map; fix or re-create the index")
    for name, shard in weight_map.items():
        if not isinstance(shard, str):
            raise MatcliError(
                f"{path} maps tensor {name!r} to {shard!r}, not a shard file name; "
                "fix or re-create the index"
            )
    metadata = index.get("metadata")
    if metadata is not None and not isinstance(metadata, dict):
        raise MatcliError(
            f"{path} has a metadata that is a {type(metadata).__name__}, not an object; "
            "fix or re-create the index"
        )
    return weight_map
