"""A submodel built in memory from the same extraction plan `extract` streams to disk, for
`eval --ffn-config` and `--budget --rank-by-loss`: nothing is written."""

from __future__ import annotations

from pathlib import Path

import torch

from matcli.checkpoint.reader import DEFAULT_CHUNK_BYTES, ModelFolder
from matcli.checkpoint.safetensors_file import DTYPES
from matcli.checkpoint.writer import OutputTensor, as_bytes
from matcli.matformer.ffn_config import FfnChoice


def materialize(tensors: list[OutputTensor]) -> dict[str, torch.Tensor]:
    state = {}
    for t in tensors:
        data = bytearray()
        for chunk in t.chunks():
            data += as_bytes(chunk, t)
        dtype = getattr(torch, DTYPES[t.dtype][0])
        state[t.name] = (
            torch.frombuffer(data, dtype=dtype).reshape(t.shape)
            if data
            else torch.empty(t.shape, dtype=dtype)
        )
    return state


def submodel(path: Path, choice: FfnChoice, neurons: dict[int, list[int]] | None = None):
    from matcli.evaluate import model_from_state
    from matcli.matformer.extract import Extraction

    with ModelFolder(path) as folder:
        extraction = Extraction(folder, choice, neurons)
        state = materialize(extraction.tensors(DEFAULT_CHUNK_BYTES))
        config = extraction.config(reordered=neurons is not None)
    config.pop("matcli")
    return model_from_state(config, state, f"{path} with --ffn-config")
