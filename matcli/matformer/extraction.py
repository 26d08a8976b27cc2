"""The tensors of a MatFormer submodel, planned from a checked `FfnChoice`.

Per kept layer, the FFN keeps a set of hidden neurons (the first m, or with `--reorder` the m
most important): gate/up rows and down columns are cut, fused gate_up is cut as two halves.
Skipped layers are dropped and the rest renumbered; tensors made of one block per layer
(Gemma 3n's per-layer embeddings) keep the kept layers' blocks, read in row chunks.
Everything else is copied. Nothing is read until the writer pulls the chunks.
"""

from __future__ import annotations

import math

from matcli.arch import Architecture, config_int
from matcli.checkpoint.plan import copy_tensor
from matcli.checkpoint.reader import ModelFolder
from matcli.checkpoint.writer import OutputTensor
from matcli.matformer.ffn_config import FfnChoice
from matcli.matformer.selection import (
    block_runs,
    runs_of,
    select_along,
    select_columns,
    select_rows,
)
from matcli.matformer.source import Source

BLOCKS_LABEL, FFN_LABEL = "keep kept layers' blocks", "cut FFN"


class Extraction:
    """The tensors of a submodel of `source` cut by a checked `choice`."""

    def __init__(
        self,
        folder: ModelFolder,
        source: Source,
        choice: FfnChoice,
        neurons: dict[int, list[int]] | None = None,
        keep_order: bool = False,
    ):
        """`neurons`: each original layer's neurons, most important first (None: as stored).
        The first m are kept; in index order, or in importance order with `keep_order`
        (which is how `matcli reorder` writes a permuted full model)."""
        self.folder, self.source, self.choice = folder, source, choice
        self.arch = source.arch
        self.new_index = {old: new for new, old in enumerate(choice.kept)}
        # Neurons kept per original layer: the first m, or the chosen ones (--reorder).
        self.neurons = {
            old: runs_of(_chosen(neurons[old][:m], keep_order)) if neurons else [(0, m)]
            for old, m in zip(choice.kept, choice.widths)
        }

    def tensors(self, chunk_bytes: int) -> list[OutputTensor]:
        """Every output tensor, by name: cut, re-blocked or copied."""
        out = [self._tensor(name, chunk_bytes) for name in self.folder.tensors]
        return sorted((t for t in out if t is not None), key=lambda t: t.name)

    def _tensor(self, name: str, chunk_bytes: int) -> OutputTensor | None:
        split = self.arch.split_layer(name)
        if split is None:
            return self._outside_layers(name, chunk_bytes)
        layer, relative = split
        if layer not in self.new_index:
            return None
        new_name = self.arch.layer_name(self.new_index[layer], relative)
        ffn, runs = self.arch.family.ffn, self.neurons[layer]
        if relative in {f"{p}.{k}" for p in (ffn.gate, ffn.up) for k in ("weight", "bias")}:
            return select_rows(self.folder, name, new_name, runs, FFN_LABEL)
        if relative == f"{ffn.down}.weight":
            return select_columns(self.folder, name, new_name, runs, chunk_bytes, FFN_LABEL)
        if ffn.fused_gate_up and relative in (
            f"{ffn.fused_gate_up}.weight",
            f"{ffn.fused_gate_up}.bias",
        ):
            full = self.source.full_widths[layer]
            halves = runs + [(a + full, b + full) for a, b in runs]  # gate rows, then up rows
            return select_rows(self.folder, name, new_name, halves, FFN_LABEL)
        return copy_tensor(self.folder, name, new_name)

    def _outside_layers(self, name: str, chunk_bytes: int) -> OutputTensor:
        for suffix, block in self.arch.family.layer_blocked_tensors.items():
            if name.endswith(suffix):
                size = config_int(self.source.text_config, block.block, minimum=1)
                runs = block_runs(self.choice.kept, size)
                return select_along(
                    self.folder, name, name, block.dim, runs, chunk_bytes, BLOCKS_LABEL
                )
        return copy_tensor(self.folder, name)

    def report(self, tensors: list[OutputTensor]) -> dict:
        before = parameter_counts(self.arch, {n: t.shape for n, t in self.folder.tensors.items()})
        after = parameter_counts(self.arch, {t.name: t.shape for t in tensors})
        return {
            "parameters_before": before,
            "parameters_after": after,
            "layers_kept": len(self.choice.kept),
            "layers_before": self.source.num_layers,
        }


def _chosen(neurons: list[int], keep_order: bool) -> list[int]:
    # The FFN is a sum over neurons, so any order of the kept ones computes the same
    # function; index order keeps reads sequential.
    return list(neurons) if keep_order else sorted(neurons)


def parameter_counts(arch: Architecture, shapes: dict[str, tuple[int, ...]]) -> dict[str, int]:
    """All parameters, and those in the family's effective count."""
    counts = {name: math.prod(shape) for name, shape in shapes.items()}
    return {
        "total": sum(counts.values()),
        "effective": sum(n for name, n in counts.items() if arch.counts_as_effective(name)),
    }
