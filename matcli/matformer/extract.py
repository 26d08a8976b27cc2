"""The old import path of `model_widths`, kept only for matcli/cli/evaluation.py's
`_submodel`, which unpacks it and passes the last item to `ffn_config.choose_widths`.
Once that function calls `matcli.matformer.inmemory.load_submodel`, delete this module."""

from __future__ import annotations

from matcli.arch import Architecture
from matcli.checkpoint.reader import ModelFolder
from matcli.matformer.source import Source, read_source


def model_widths(folder: ModelFolder) -> tuple[Architecture, dict, Source]:
    """(family, language-model config, the source itself), as `_submodel` unpacks it."""
    source = read_source(folder)
    return source.arch, source.text_config, source
