"""Architecture knowledge as data: one YAML file per model family in `families/`.

A family file names, relative to a decoder layer's prefix, where the FFN and attention
projections are, plus the embedding and config keys. Adding a family means adding a file;
no command branches on the family name.
"""

from __future__ import annotations

import re
from functools import cache
from importlib import resources
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict

from matcli.errors import MatcliError

LinearKind = Literal["ffn", "attention", "other"]


class FfnNames(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    gate: str | None
    up: str
    down: str
    fused_gate_up: str | None = None


class ConfigKeys(BaseModel):
    """Names of the config.json fields matcli reads (the shape checks: arch/shapes.py)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    num_layers: str
    intermediate_size: str
    hidden_size: str = "hidden_size"
    num_heads: str = "num_attention_heads"
    num_kv_heads: str = "num_key_value_heads"
    head_dim: str = "head_dim"
    vocab_size: str = "vocab_size"


class KvSharing(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    shared_layers: str  # config key: how many final layers reuse earlier layers' KV cache
    layer_types: str  # config key: attention type per layer
    # Tensors (relative to a layer) that KV-shared layers may lack: they reuse another layer's
    # keys and values, and some writers (transformers v5) leave them out.
    optional_in_shared_layers: tuple[str, ...]


class LayerBlock(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    dim: int
    block: str  # config key of the block size along `dim`


class Family(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str
    model_types: tuple[str, ...]
    text_config: str | None
    layers: tuple[str, ...]
    ffn: FfnNames
    attention: tuple[str, str, str, str]  # the q, k, v and output projections, in this order
    other_linear: tuple[str, ...]
    embeddings: tuple[str, ...]
    lm_head: str | None
    config: ConfigKeys
    per_layer_config: tuple[str, ...]
    per_layer_intermediate: bool
    trained_ffn_widths: tuple[int, ...] | None
    kv_sharing: KvSharing | None
    layer_blocked_tensors: dict[str, LayerBlock]
    effective_excludes: tuple[str, ...]
    ffn_input_norm: str | None
    norm_offset: float
    serving_layers: tuple[str, ...]
    fused_linears: tuple[tuple[str, ...], ...]
    # GGUF metadata (`slice --format gguf`), validated by matcli/quant/gguf_metadata.py.
    gguf: dict | None = None

    def takes_per_layer_intermediate(self, text_config: dict) -> bool:
        """Whether this config can hold one FFN width per layer: the family's config class
        accepts a list, or this checkpoint's config already holds one."""
        return self.per_layer_intermediate or isinstance(
            text_config.get(self.config.intermediate_size), list
        )

    @property
    def per_layer_lists(self) -> tuple[str, ...]:
        """Config keys that may hold one entry per layer, besides the FFN widths: the
        per-layer lists and the attention types KV sharing reads (extraction checks their
        lengths and keeps the kept layers' entries)."""
        kv_types = (self.kv_sharing.layer_types,) if self.kv_sharing else ()
        return tuple(dict.fromkeys((*self.per_layer_config, *kv_types)))


@cache
def families() -> dict[str, Family]:
    """Every family file, with `extends:` resolved (a file overrides its parent's keys)."""
    raw = {}
    for entry in resources.files("matcli.arch").joinpath("families").iterdir():
        if entry.name.endswith(".yaml"):
            raw[entry.name.removesuffix(".yaml")] = yaml.safe_load(entry.read_text())

    def resolved(name: str) -> dict:
        data = dict(raw[name])
        parent = data.pop("extends", None)
        return {**resolved(parent), **data} if parent else data

    return {name: Family(name=name, **resolved(name)) for name in sorted(raw)}


def family_for_model_type(model_type: str | None) -> Family:
    for family in families().values():
        if model_type in family.model_types:
            return family
    known = ", ".join(sorted(t for f in families().values() for t in f.model_types))
    raise MatcliError(
        f"unknown model family {model_type!r} (config.json model_type); matcli knows {known}. "
        f"Add matcli/arch/families/{model_type or 'NAME'}.yaml describing its tensor names "
        "(copy llama.yaml and edit it)"
    )


class Architecture:
    """A family bound to one checkpoint: the layer prefix its tensor names actually use."""

    def __init__(self, family: Family, tensor_names: list[str]):
        self.family = family
        self._layer_re = None
        for template in family.layers:
            prefix_re = re.escape(template).replace(re.escape("{layer}"), r"(\d+)")
            candidate = re.compile(f"^{prefix_re}(.+)$")
            if any(candidate.match(n) for n in tensor_names):
                self._layer_re = candidate
                self.layer_template = template
                break
        if self._layer_re is None:
            raise MatcliError(
                f"no tensor name matches the {family.name} layer prefixes {list(family.layers)}; "
                f"the checkpoint does not look like {family.name}: check config.json model_type, "
                f"or fix matcli/arch/families/{family.name}.yaml"
            )
        self._kinds: dict[str, LinearKind] = {}
        for name in (family.ffn.gate, family.ffn.up, family.ffn.down, family.ffn.fused_gate_up):
            if name:
                self._kinds[name] = "ffn"
        for name in family.attention:
            self._kinds[name] = "attention"
        for name in family.other_linear:
            self._kinds[name] = "other"

    @property
    def name(self) -> str:
        return self.family.name

    def split_layer(self, name: str) -> tuple[int, str] | None:
        """(layer index, name relative to the layer) for a module or tensor inside a decoder
        layer: `model.layers.3.mlp.up_proj` -> (3, "mlp.up_proj")."""
        m = self._layer_re.match(name)
        return (int(m.group(1)), m.group(2)) if m else None

    @property
    def layers_modules(self) -> list[str]:
        """Where a loaded model may hold its list of decoder layers: one module path per
        layout of the family (transformers renames old layouts on load, so the loaded model's
        path need not be this checkpoint's)."""
        return [template.split(".{layer}.")[0] for template in self.family.layers]

    def layer_name(self, layer: int, relative: str) -> str:
        """The full tensor name of `relative` in layer `layer`, in this checkpoint's layout."""
        return self.layer_template.format(layer=layer) + relative

    def linear_kind(self, module_name: str) -> LinearKind | None:
        """Whether a module (a tensor name without `.weight`) is an FFN, attention or other
        Linear."""
        split = self.split_layer(module_name)
        return self._kinds.get(split[1]) if split else None

    def counts_as_effective(self, tensor_name: str) -> bool:
        """Whether a tensor is in the family's "effective" parameter count (Gemma 3n: Google's
        E2B/E4B figure, without embeddings and the vision and audio towers)."""
        return not set(self.family.effective_excludes) & set(tensor_name.split("."))

    def num_layers(self, text_config: dict) -> int:
        return config_int(text_config, self.family.config.num_layers, minimum=1)

    def projection_regex(self, layers: list[int], names: list[str]) -> str:
        """A regex matching the modules `names` (relative to a layer) in the given layers."""
        return "^" + self.projection_pattern(layers, names) + "$"

    def projection_pattern(self, layers: list[int], names: list[str]) -> str:
        """projection_regex without its anchors, to be combined with others."""
        layer_part = "(?:" + "|".join(str(i) for i in sorted(layers)) + ")"
        # Every layout of the family, not only this checkpoint's: transformers renames old
        # layouts on load (Gemma 3's language_model.model. -> model.language_model.), and vLLM
        # matches regex targets against its own module names (serving_layers); the
        # compressed-tensors targets must match the names each of them ends up with.
        prefixes = [
            re.escape(t).replace(re.escape("{layer}"), layer_part)
            for t in dict.fromkeys((*self.family.layers, *self.family.serving_layers))
        ]
        return "(?:" + "|".join(prefixes) + ")(?:" + "|".join(re.escape(n) for n in names) + ")"


def resolve(config: dict, tensor_names: list[str]) -> Architecture:
    """The family of a checkpoint, bound to its tensor names; its layer count, when the
    config gives one, is checked here, so every command refuses a malformed one."""
    family = family_for_model_type(config_text(config, "model_type", default=None))
    text = language_config(config, family.text_config)
    if family.config.num_layers in text:
        config_int(text, family.config.num_layers, minimum=1)
    return Architecture(family, tensor_names)


def language_config(config: dict, key: str | None) -> dict:
    """The language-model part of config.json: nested under the family's key (`key`) in
    multimodal wrappers (a nested value that is not an object is refused), else the config."""
    nested = config_section(config, key) if key else None
    return config if nested is None else nested


# Typed accessors of config.json fields: each refuses a value of the wrong type in one line
# naming the field and the type it must have. `default` is returned for a missing (or null)
# field; without one, a missing field is refused.
_REQUIRED = object()


def _field(config: dict, key: str, default: object) -> tuple[bool, object]:
    """(whether the field was given, its value or the default)."""
    value = config.get(key)
    if value is not None:
        return True, value
    if default is _REQUIRED:
        raise MatcliError(f"config.json has no {key}; add it (the config is incomplete)")
    return False, default


def _refuse(key: str, expected: str, value: object) -> MatcliError:
    shown = repr(value)  # shortened: a hostile value may be megabytes long
    shown = shown if len(shown) <= 60 else shown[:57] + "..."
    return MatcliError(f"config.json: {key} must be {expected}, not {shown}; fix config.json")


def _whole(minimum: int) -> str:
    return {0: "a whole number >= 0", 1: "a positive whole number"}.get(
        minimum, f"a whole number >= {minimum}"
    )


def config_int(config: dict, key: str, minimum: int = 0, default: object = _REQUIRED) -> int:
    """A whole-number field (at least `minimum`)."""
    given, value = _field(config, key, default)
    if given and (isinstance(value, bool) or not isinstance(value, int) or value < minimum):
        raise _refuse(key, _whole(minimum), value)
    return value


def config_per_layer(config: dict, key: str, layers: int, default: object = _REQUIRED) -> list:
    """A field that is one whole number (>= 1) for every layer, or a list of one per layer."""
    given, value = _field(config, key, default)
    if not given:
        return [value] * layers
    values = value if isinstance(value, list) else [value] * layers
    if any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in values):
        raise _refuse(key, "a positive whole number or a list of them (one per layer)", value)
    check_layer_list(key, values, layers)
    return values


def check_layer_list(key: str, values: list, layers: int) -> None:
    """A per-layer list of config.json must have one entry per layer."""
    if len(values) != layers:
        raise MatcliError(
            f"config.json {key} has {len(values)} entries but the model has {layers} layers; "
            "give one entry per layer"
        )


def config_text(config: dict, key: str, default: object = _REQUIRED) -> str:
    given, value = _field(config, key, default)
    if given and not isinstance(value, str):
        raise _refuse(key, "a string", value)
    return value


def config_section(config: dict, key: str, default: object = None) -> dict | None:
    """A nested object (a multimodal wrapper's text_config, matcli's own block)."""
    given, value = _field(config, key, default)
    if given and not isinstance(value, dict):
        raise _refuse(key, "an object", value)
    return value
