"""The source checkpoint as MatFormer extraction sees it, read and checked once.

Its family, language-model config, each layer's full FFN width (from the weights, checked
against config.json) and the tensors each layer holds. A config whose per-layer values do not
describe the weights is refused here, before any choice of widths is looked at.
"""

from __future__ import annotations

from dataclasses import dataclass

from matcli.arch import Architecture, Family, check_layer_list, config_int, resolve
from matcli.arch.shapes import check_shapes
from matcli.checkpoint.reader import ModelFolder
from matcli.errors import MatcliError
from matcli.matformer.granularities import nested_widths


@dataclass(frozen=True)
class Source:
    """A dense checkpoint's facts that extraction needs, all checked against each other."""

    arch: Architecture
    text_config: dict  # the language-model part of config.json
    full_widths: list[int]  # each layer's FFN width
    layer_tensors: list[frozenset[str]]  # each layer's tensor names, relative to the layer
    # A nested model's (`matcli nest`) widths per layer, ascending; None: not nested.
    nested_widths: list[list[int]] | None = None

    @property
    def num_layers(self) -> int:
        return len(self.full_widths)

    @property
    def family(self) -> Family:
        return self.arch.family

    @property
    def first_kv_shared(self) -> int:
        """The first layer that reuses an earlier layer's KV cache (the layer count: none)."""
        kv = self.family.kv_sharing
        shared = config_int(self.text_config, kv.shared_layers, default=0) if kv else 0
        return self.num_layers - shared

    def kv_producers(self) -> set[int]:
        """Layers whose KV cache later layers reuse (Gemma 3n): the last layer of each
        attention type below the first KV-shared layer, computed from the config."""
        first_shared = self.first_kv_shared
        if first_shared == self.num_layers:
            return set()
        kv = self.family.kv_sharing
        types = self.text_config.get(kv.layer_types)
        if not isinstance(types, list):
            raise MatcliError(
                f"config.json sets {kv.shared_layers} but has no {kv.layer_types} list, which "
                "says which layers' KV cache later layers reuse (those cannot be skipped); add "
                f"{kv.layer_types} (one attention type per layer), or skip no layers"
            )
        return {
            max(i for i in range(first_shared) if types[i] == t)
            for t in set(types[first_shared:])
            if t in types[:first_shared]
        }


def read_source(folder: ModelFolder) -> Source:
    """The folder's family, language-model config, FFN widths and layer tensors, checked."""
    quantization = folder.config.get("quantization_config")
    if quantization:
        method = (
            quantization.get("quant_method") if isinstance(quantization, dict) else quantization
        )
        raise MatcliError(
            f"{folder.path} is quantized ({method}); extract from the dense model, then quantize "
            "the submodel"
        )
    arch = resolve(folder.config, list(folder.tensors))
    text_config = folder.text_config(arch.family.text_config)
    num_layers = arch.num_layers(text_config)
    full_widths = [_full_width(arch, folder, layer) for layer in range(num_layers)]
    source = Source(
        arch,
        text_config,
        full_widths,
        _layer_tensors(arch, folder, num_layers),
        nested_widths(folder.config, full_widths),
    )
    _check_list_lengths(source)
    _check_kv_shared_count(source)
    shapes = {name: info.shape for name, info in folder.tensors.items()}
    check_shapes(arch, text_config, num_layers, shapes)  # FFN, attention, embeddings
    return source


def _full_width(arch: Architecture, folder: ModelFolder, layer: int) -> int:
    """A layer's FFN width, from its up projection (checked against the down projection)."""
    ffn = arch.family.ffn
    up = arch.layer_name(layer, ffn.up + ".weight")
    fused = ffn.fused_gate_up and arch.layer_name(layer, ffn.fused_gate_up + ".weight")
    if up in folder.tensors:
        width = folder.tensors[up].shape[0]
    elif fused and fused in folder.tensors:
        width = folder.tensors[fused].shape[0] // 2
    else:
        raise MatcliError(
            f"{folder.path} has no FFN weights for layer {layer} ({up} is missing); the "
            "checkpoint is incomplete"
        )
    down = arch.layer_name(layer, ffn.down + ".weight")
    if down not in folder.tensors:
        raise MatcliError(f"{folder.path} has no {down}; the checkpoint is incomplete")
    if folder.tensors[down].shape[1] != width:
        raise MatcliError(
            f"{down} has {folder.tensors[down].shape[1]} columns but layer {layer}'s FFN width "
            f"is {width}; the checkpoint is inconsistent"
        )
    if width == 0:
        raise MatcliError(
            f"layer {layer}'s FFN in {folder.path} has width 0 (its weights are empty); there "
            "are no neurons to keep: the checkpoint is broken"
        )
    return width


def _layer_tensors(
    arch: Architecture, folder: ModelFolder, num_layers: int
) -> list[frozenset[str]]:
    """Each layer's tensor names relative to the layer, checking the layer indices."""
    names: list[set[str]] = [set() for _ in range(num_layers)]
    for name in folder.tensors:
        split = arch.split_layer(name)
        if split and split[0] >= num_layers:
            raise MatcliError(
                f"{name} belongs to layer {split[0]} but config.json says there are "
                f"{num_layers} layers; the checkpoint is inconsistent"
            )
        if split:
            names[split[0]].add(split[1])
    return [frozenset(n) for n in names]


def _check_list_lengths(source: Source) -> None:
    family = source.family
    for key in family.per_layer_lists:
        values = source.text_config.get(key)
        if isinstance(values, list):
            check_layer_list(key, values, source.num_layers)


def _check_kv_shared_count(source: Source) -> None:
    kv = source.family.kv_sharing
    shared = config_int(source.text_config, kv.shared_layers, default=None) if kv else None
    if shared is not None and shared >= source.num_layers:
        raise MatcliError(
            f"config.json {kv.shared_layers} is {shared!r}; it must be a layer count in "
            f"0..{source.num_layers - 1}"
        )
