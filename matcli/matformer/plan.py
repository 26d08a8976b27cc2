"""`matcli extract`: a MatFormer Mix'n'Match submodel, streamed without building the model.

Per kept layer, the FFN keeps a set of hidden neurons (the first m, or with `--reorder` the m
most important): gate/up rows and down columns are cut, fused gate_up is cut as two halves.
Skipped layers are dropped and the rest renumbered; tensors made of one block per layer
(Gemma 3n's per-layer embeddings) keep the kept layers' blocks, read in row chunks. Config
edits follow the family data (per-layer lists, KV sharing). Everything else is copied.
"""

from __future__ import annotations

import copy
import math
import sys
from typing import NamedTuple

import numpy as np

from matcli.arch import Architecture, resolve
from matcli.checkpoint.plan import OutputCheckpoint, Plan, copy_tensor
from matcli.checkpoint.reader import ModelFolder
from matcli.checkpoint.writer import OutputTensor
from matcli.errors import MatcliError
from matcli.matformer.ffn_config import FfnChoice, kept_layers, trained_widths
from matcli.quant.parent import CONFIG_KEY

MAX_COPIED_RUNS = 64
Runs = list[tuple[int, int]]  # disjoint [start, stop) index ranges, in output order


def runs_of(indices: list[int]) -> Runs:
    """Indices, in the order given -> maximal [start, stop) runs of consecutive ones."""
    runs: Runs = []
    for i in indices:
        if runs and runs[-1][1] == i:
            runs[-1] = (runs[-1][0], i + 1)
        else:
            runs.append((i, i + 1))
    return runs


def _length(runs: Runs) -> int:
    return sum(b - a for a, b in runs)


def select_rows(
    folder: ModelFolder, name: str, new_name: str, runs: Runs, label: str
) -> OutputTensor:
    """The rows of `runs` (dim 0), in order, read in chunks."""
    info = folder.tensors[name]

    def chunks():
        for a, b in runs:  # each run of rows is one contiguous byte range: a kernel copy
            yield folder.byte_range(name, a * info.row_bytes, b * info.row_bytes)

    return OutputTensor(new_name, info.dtype, (_length(runs), *info.shape[1:]), chunks, label)


def select_columns(
    folder: ModelFolder, name: str, new_name: str, runs: Runs, chunk_bytes: int, label: str
) -> OutputTensor:
    """The columns of `runs` (dim 1) of every row, read in row chunks."""
    info = folder.tensors[name]
    index = np.array([i for a, b in runs for i in range(a, b)], dtype=np.intp)

    def chunks():
        # One input and one output buffer serve every chunk: no allocation per chunk, so the
        # allocator never holds on to freed chunks (the writer is done with a chunk before
        # the next is made). Elements are moved as unsigned integers of their size: a
        # selection never needs their values.
        out = None
        for start, stop in folder.row_chunks(name, chunk_bytes):
            rows = folder.read_elements(name, start, stop, scratch=True)
            if out is None:
                out = np.empty((len(rows), len(index), *rows.shape[2:]), dtype=rows.dtype)
            dest = out[: len(rows)]
            if len(runs) <= MAX_COPIED_RUNS:  # a few contiguous copies beat a gather
                np.concatenate([rows[:, a:b] for a, b in runs], axis=1, out=dest)
            else:
                np.take(rows, index, axis=1, out=dest)
            yield dest

    return OutputTensor(
        new_name, info.dtype, (info.shape[0], len(index), *info.shape[2:]), chunks, label
    )


def full_widths(arch: Architecture, folder: ModelFolder, num_layers: int) -> list[int]:
    """Each layer's FFN width, from its up projection (checked against the config)."""
    widths = []
    for layer in range(num_layers):
        up = arch.layer_name(layer, arch.family.ffn.up + ".weight")
        fused = arch.family.ffn.fused_gate_up and arch.layer_name(
            layer, arch.family.ffn.fused_gate_up + ".weight"
        )
        if up in folder.tensors:
            widths.append(folder.tensors[up].shape[0])
        elif fused and fused in folder.tensors:
            widths.append(folder.tensors[fused].shape[0] // 2)
        else:
            raise MatcliError(
                f"{folder.path} has no FFN weights for layer {layer} ({up} is missing); the checkpoint is incomplete"
            )
        down = arch.layer_name(layer, arch.family.ffn.down + ".weight")
        if down not in folder.tensors:
            raise MatcliError(f"{folder.path} has no {down}; the checkpoint is incomplete")
        if folder.tensors[down].shape[1] != widths[-1]:
            raise MatcliError(
                f"{down} has {folder.tensors[down].shape[1]} columns but layer {layer}'s FFN width is {widths[-1]}; the checkpoint is inconsistent"
            )
    return widths


class Source(NamedTuple):
    """A checkpoint as `extract` sees it: its family, language-model config and each layer's
    full FFN width (unpacks as `arch, text_config, full`)."""

    arch: Architecture
    text_config: dict
    full: list[int]

    @property
    def first_kv_shared(self) -> int:
        """The first layer that reuses an earlier layer's KV cache (the layer count: none)."""
        kv = self.arch.family.kv_sharing
        return len(self.full) - (int(self.text_config.get(kv.shared_layers) or 0) if kv else 0)


def model_widths(folder: ModelFolder) -> Source:
    """The family, the language-model config and each layer's full FFN width, checked."""
    quantization = folder.config.get("quantization_config")
    if quantization:
        method = (
            quantization.get("quant_method") if isinstance(quantization, dict) else quantization
        )
        raise MatcliError(
            f"{folder.path} is quantized ({method}); extract from the dense model, then quantize the submodel"
        )
    arch = resolve(folder.config, list(folder.tensors))
    text_config = folder.text_config(arch.family.text_config)
    source = Source(arch, text_config, full_widths(arch, folder, arch.num_layers(text_config)))
    check_config(source)
    return source


def check_config(source: Source) -> None:
    """Refuse a config whose per-layer values do not describe the checkpoint's layers."""
    _check_list_lengths(source)
    _check_declared_widths(source)
    _check_kv_shared_count(source)


def _check_list_lengths(source: Source) -> None:
    family, num_layers = source.arch.family, len(source.full)
    keys = [
        *family.per_layer_config,
        family.config.intermediate_size,
        *([family.kv_sharing.layer_types] if family.kv_sharing else []),
    ]
    for key in dict.fromkeys(keys):
        values = source.text_config.get(key)
        if isinstance(values, list) and len(values) != num_layers:
            raise MatcliError(
                f"config.json {key} has {len(values)} entries but the model has {num_layers} layers "
                f"({family.config.num_layers}); give one entry per layer"
            )


def _check_declared_widths(source: Source) -> None:
    key = source.arch.family.config.intermediate_size
    declared = source.text_config.get(key)
    declared = declared if isinstance(declared, list) else [declared] * len(source.full)
    for layer, (said, width) in enumerate(zip(declared, source.full)):
        if said is not None and said != width:
            raise MatcliError(
                f"config.json {key} says {said} for layer {layer} but its FFN weights are {width} wide; fix config.json"
            )


def _check_kv_shared_count(source: Source) -> None:
    kv = source.arch.family.kv_sharing
    shared = source.text_config.get(kv.shared_layers) if kv else None
    if shared is not None and (
        isinstance(shared, bool)
        or not isinstance(shared, int)
        or not 0 <= shared < len(source.full)
    ):
        raise MatcliError(
            f"config.json {kv.shared_layers} is {shared!r}; it must be a layer count in 0..{len(source.full) - 1}"
        )


def kv_producers(source: Source) -> set[int]:
    """Layers whose KV cache later layers reuse (Gemma 3n): the last layer of each attention
    type below the first KV-shared layer, computed from the config."""
    first_shared = source.first_kv_shared
    if first_shared == len(source.full):
        return set()
    kv = source.arch.family.kv_sharing
    types = source.text_config.get(kv.layer_types)
    if not isinstance(types, list):
        raise MatcliError(
            f"config.json sets {kv.shared_layers} but has no {kv.layer_types} list, which says which layers' KV cache "
            f"later layers reuse (those cannot be skipped); add {kv.layer_types} (one attention type per layer), or skip no layers"
        )
    return {
        max(i for i in range(first_shared) if types[i] == t)
        for t in set(types[first_shared:])
        if t in types[:first_shared]
    }


def check_choice(source: Source, choice: FfnChoice) -> list[str]:
    """Refuse impossible choices; return warnings for unusual ones."""
    kept = kept_layers(len(source.full), choice.skip)
    _check_widths(source, choice.widths, kept)
    _check_skips(source, choice.skip)
    if len(set(choice.widths)) > 1 and not source.arch.family.takes_per_layer_intermediate(
        source.text_config
    ):
        raise MatcliError(
            f"{source.arch.name} configs take one intermediate_size for all layers, so transformers cannot load "
            f"different widths per layer ({sorted(set(choice.widths))}); give a uniform width, or a Gemma 3n model for Mix'n'Match"
        )
    return width_warnings(source, choice.widths, kept)


def _check_widths(source: Source, widths: list[int], kept: list[int]) -> None:
    for width, layer in zip(widths, kept):
        if not isinstance(width, int) or isinstance(width, bool):
            raise MatcliError(f"--ffn-config width {width!r} for layer {layer} is not an integer")
        if not 0 < width <= source.full[layer]:
            raise MatcliError(
                f"--ffn-config width {width} for layer {layer} is outside 1..{source.full[layer]} (the layer's full width)"
            )


def _check_skips(source: Source, skip: list[int]) -> None:
    producers = kv_producers(source) & set(skip) if skip else set()
    if producers:
        shared = source.text_config[source.arch.family.kv_sharing.shared_layers]
        raise MatcliError(
            f"layer {min(producers)} cannot be skipped: it computes the KV cache that the last {shared} layers reuse "
            f"(num_kv_shared_layers); keep it"
        )


def width_warnings(source: Source, widths: list[int], kept: list[int]) -> list[str]:
    """Widths off the trained granularities (the family's trained widths, else 1/8..1), or
    not multiples of 128."""
    trained = source.arch.family.trained_ffn_widths
    allowed = {source.full[layer]: trained_widths(trained, source.full[layer]) for layer in kept}
    warnings = []
    odd = sorted({w for w, layer in zip(widths, kept) if w not in allowed[source.full[layer]]})
    if odd:
        basis = (
            f"{source.arch.name} was trained at"
            if trained and set(allowed) & set(trained)
            else "1/8, 1/4, 1/2 or all of a layer's width:"
        )
        shown = ", ".join(map(str, sorted(set().union(*allowed.values()))))
        warnings.append(
            f"widths {odd} are not trained MatFormer granularities ({basis} {shown}); quality is untested there"
        )
    unaligned = sorted({w for w in widths if w % 128})
    if unaligned:
        warnings.append(
            f"widths {unaligned} are not multiples of 128; some kernels and quantizers want 128 or 256"
        )
    return warnings


def edited_config(source: Source, config: dict, choice: FfnChoice, kept: list[int]) -> dict:
    new = copy.deepcopy(config)
    family = source.arch.family
    text = (
        new[family.text_config]
        if family.text_config and isinstance(new.get(family.text_config), dict)
        else new
    )
    keys = family.config
    text[keys.num_layers] = len(kept)
    text[keys.intermediate_size] = (
        list(choice.widths) if family.takes_per_layer_intermediate(text) else choice.widths[0]
    )
    for list_key in family.per_layer_config:
        if isinstance(text.get(list_key), list):  # one entry per layer (check_config)
            text[list_key] = [text[list_key][i] for i in kept]
    kv = family.kv_sharing
    if kv and text.get(kv.shared_layers):
        text[kv.shared_layers] = sum(1 for i in kept if i >= source.first_kv_shared)
    return new


def parameter_counts(arch: Architecture, shapes: dict[str, tuple[int, ...]]) -> dict[str, int]:
    counts = {name: math.prod(shape) for name, shape in shapes.items()}
    return {
        "total": sum(counts.values()),
        "effective": sum(n for name, n in counts.items() if arch.counts_as_effective(name)),
    }


class Extraction:
    """Everything `extract` decides before writing: layers, neurons, names, config."""

    def __init__(
        self,
        folder: ModelFolder,
        choice: FfnChoice,
        neurons: dict[int, list[int]] | None = None,
        keep_order: bool = False,
        source: Source | None = None,
    ):
        """`neurons`: each original layer's neurons, most important first (None: as stored).
        The first m are kept; in index order, or in importance order with `keep_order`
        (which is how `matcli reorder` writes a permuted full model). `source`: the folder's
        `model_widths`, when the caller already has it."""
        self.folder = folder
        self.source = source or model_widths(folder)
        self.arch, self.text_config, self.full = self.source
        self.warnings = check_choice(self.source, choice)
        self.choice = choice
        self.kept = kept_layers(len(self.full), choice.skip)
        self.new_index = {old: new for new, old in enumerate(self.kept)}
        # Neurons kept per original layer: the first m, or the chosen ones (--reorder).
        self.neurons = {
            old: runs_of(_chosen(neurons[old][:m], keep_order)) if neurons else [(0, m)]
            for old, m in zip(self.kept, choice.widths)
        }
        self._check_layer_tensors()

    def _layer_tensor_names(self) -> dict[int, set[str]]:
        """{layer: tensor names relative to the layer}, checking the layer indices."""
        names: dict[int, set[str]] = {i: set() for i in range(len(self.full))}
        for name in self.folder.tensors:
            split = self.arch.split_layer(name)
            if split and split[0] >= len(self.full):
                raise MatcliError(
                    f"{name} belongs to layer {split[0]} but config.json says there are {len(self.full)} layers; the checkpoint is inconsistent"
                )
            if split:
                names[split[0]].add(split[1])
        return names

    def _check_layer_tensors(self) -> None:
        """Every kept layer has the tensors the other kept layers have: transformers would
        silently initialise a missing one at random (KV-shared layers may lack their k/v)."""
        names = self._layer_tensor_names()
        expected = set().union(*(names[layer] for layer in self.kept))
        kv, first_shared = self.arch.family.kv_sharing, self.source.first_kv_shared
        optional = set(kv.optional_in_shared_layers) if kv else set()
        for layer in self.kept:
            missing = expected - names[layer] - (optional if layer >= first_shared else set())
            if missing:
                relative = min(missing)
                raise MatcliError(
                    f"{self.arch.layer_name(layer, relative)} is missing but other layers have {relative}; the checkpoint "
                    "is incomplete (transformers would initialise it at random): re-download or re-save it"
                )

    def tensors(self, chunk_bytes: int) -> list[OutputTensor]:
        out = []
        for name in sorted(self.folder.tensors):
            tensor = self._tensor(name, chunk_bytes)
            if tensor is not None:
                out.append(tensor)
        return sorted(out, key=lambda t: t.name)

    def _tensor(self, name: str, chunk_bytes: int) -> OutputTensor | None:
        split = self.arch.split_layer(name)
        if split is None:
            return self._outside_layers(name, chunk_bytes)
        layer, relative = split
        if layer not in self.new_index:
            return None
        new_name = self.arch.layer_name(self.new_index[layer], relative)
        ffn, runs, full = self.arch.family.ffn, self.neurons[layer], self.full[layer]
        label = "cut FFN"
        if relative in (
            f"{ffn.gate}.weight",
            f"{ffn.up}.weight",
            f"{ffn.gate}.bias",
            f"{ffn.up}.bias",
        ):
            return select_rows(self.folder, name, new_name, runs, label)
        if relative == f"{ffn.down}.weight":
            return select_columns(self.folder, name, new_name, runs, chunk_bytes, label)
        if ffn.fused_gate_up and relative in (
            f"{ffn.fused_gate_up}.weight",
            f"{ffn.fused_gate_up}.bias",
        ):
            halves = runs + [(a + full, b + full) for a, b in runs]  # gate rows, then up rows
            return select_rows(self.folder, name, new_name, halves, label)
        return copy_tensor(self.folder, name, new_name)

    def _outside_layers(self, name: str, chunk_bytes: int) -> OutputTensor:
        for suffix, block in self.arch.family.layer_blocked_tensors.items():
            if name.endswith(suffix):
                size = int(self.text_config[block.block])
                runs = runs_of(
                    [i for layer in self.kept for i in range(layer * size, (layer + 1) * size)]
                )
                if block.dim == 0:
                    return select_rows(self.folder, name, name, runs, "keep kept layers' blocks")
                return select_columns(
                    self.folder, name, name, runs, chunk_bytes, "keep kept layers' blocks"
                )
        return copy_tensor(self.folder, name)

    def config(self, reordered: bool, role: str = "extract") -> dict:
        config = edited_config(self.source, self.folder.config, self.choice, self.kept)
        config[CONFIG_KEY] = {
            "role": role,
            "source_layers": len(self.full),
            "skipped_layers": self.choice.skip,
            "ffn_widths": self.choice.widths,
            "reordered": reordered,
        }
        return config

    def report(self, tensors: list[OutputTensor]) -> dict:
        before = parameter_counts(self.arch, {n: t.shape for n, t in self.folder.tensors.items()})
        after = parameter_counts(self.arch, {t.name: t.shape for t in tensors})
        return {
            "parameters_before": before,
            "parameters_after": after,
            "layers_kept": len(self.kept),
            "layers_before": len(self.full),
        }


def _chosen(neurons: list[int], keep_order: bool) -> list[int]:
    # The FFN is a sum over neurons, so any order of the kept ones computes the same
    # function; index order keeps reads sequential.
    return list(neurons) if keep_order else sorted(neurons)


def plan_extraction(
    folder: ModelFolder,
    extraction: Extraction,
    options: dict,
    chunk_bytes: int,
    max_shard_bytes: int,
    reordered: bool,
    command: str = "extract",
) -> Plan:
    tensors = extraction.tensors(chunk_bytes)
    config = extraction.config(reordered, role=command)
    output = OutputCheckpoint(
        name="", config=config, tensors=tensors, metadata={"matcli.role": command}
    )
    return Plan(
        command=command,
        source=folder,
        outputs=[output],
        options=options,
        max_shard_bytes=max_shard_bytes,
        chunk_bytes=chunk_bytes,
        warnings=extraction.warnings,
        report=extraction.report(tensors),
        uses_torch="torch"
        in sys.modules,  # --reorder and --rank-by-loss ran a model in this process
    )
