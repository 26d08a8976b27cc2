"""The submodel's config.json: the source's, edited as the family data says.

The family file names every key an extraction changes: the layer count, the FFN width (a
list when the config class takes one per layer, else one number), the lists with one entry
per layer (filtered to the kept layers: Gemma 3n's layer_types and
activation_sparsity_pattern) and the KV-sharing layer count. No edit depends on a family name.
"""

from __future__ import annotations

import copy

from matcli.matformer.ffn_config import FfnChoice
from matcli.matformer.source import Source
from matcli.quant.parent import CONFIG_KEY


def edited_config(source: Source, config: dict, choice: FfnChoice) -> dict:
    """A copy of `config` describing only the kept layers at the chosen widths."""
    new = copy.deepcopy(config)
    family = source.family
    nested = family.text_config and isinstance(new.get(family.text_config), dict)
    text = new[family.text_config] if nested else new
    keys = family.config
    text[keys.num_layers] = len(choice.kept)
    text[keys.intermediate_size] = (
        list(choice.widths) if family.takes_per_layer_intermediate(text) else choice.widths[0]
    )
    for list_key in family.per_layer_lists:
        if isinstance(text.get(list_key), list):  # one entry per layer (read_source checks)
            text[list_key] = [text[list_key][i] for i in choice.kept]
    kv = family.kv_sharing
    if kv and text.get(kv.shared_layers):
        text[kv.shared_layers] = sum(1 for i in choice.kept if i >= source.first_kv_shared)
    return new


def submodel_config(source: Source, config: dict, choice: FfnChoice, reordered: bool, role: str):
    """The edited config with matcli's record of how the submodel was cut."""
    new = edited_config(source, config, choice)
    new[CONFIG_KEY] = {
        "role": role,
        "source_layers": source.num_layers,
        "skipped_layers": choice.skip,
        "ffn_widths": choice.widths,
        "reordered": reordered,
    }
    return new
