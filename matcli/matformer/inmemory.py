"""A submodel built in memory from the same extraction plan `extract` streams to disk, for
`eval --ffn-config` and `--budget --rank-by-loss`: nothing is written."""

from __future__ import annotations

from pathlib import Path

import torch

from matcli.checkpoint.reader import DEFAULT_CHUNK_BYTES, ModelFolder
from matcli.checkpoint.safetensors_file import DTYPES
from matcli.checkpoint.writer import OutputTensor, as_bytes
from matcli.matformer.config_edit import edited_config
from matcli.matformer.extraction import Extraction
from matcli.matformer.ffn_config import FfnChoice, choose_widths
from matcli.matformer.source import read_source


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
    """The model `extract` would write for `choice` (checked against this folder), in memory."""
    from matcli.evaluate import model_from_state

    with ModelFolder(path) as folder:
        source = read_source(folder)
        extraction = Extraction(folder, source, choice, neurons)
        state = materialize(extraction.tensors(DEFAULT_CHUNK_BYTES))
        config = edited_config(source, folder.config, choice)
    return model_from_state(config, state, f"{path} with --ffn-config")


def load_submodel(path: Path, ffn_config: str, skip_layers: str | None):
    """`eval --ffn-config`: the submodel of `path` that --ffn-config and --skip-layers name."""
    with ModelFolder(path) as folder:
        choice = choose_widths(ffn_config, skip_layers, read_source(folder))
    return submodel(path, choice)
