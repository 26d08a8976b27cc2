"""The FFN choice: which layers a submodel keeps and each kept layer's width, checked once.

`choose_widths` (--ffn-config) and `--budget`'s candidates both build their `FfnChoice`
through `kept_layers` and `checked_choice`, so every check runs before anything is planned,
and the plan, the config edits and the report trust the choice as given.
"""

from __future__ import annotations

from dataclasses import dataclass

from matcli.errors import MatcliError
from matcli.matformer.ffn_spec import GRANULARITIES, parse_layer_list, read_spec, width_of
from matcli.matformer.source import Source


@dataclass(frozen=True)
class FfnChoice:
    """A checked choice: each kept layer's FFN width, the skipped original layers, and the
    kept original layers (ascending), one width per kept layer."""

    widths: list[int]
    skip: list[int]
    kept: list[int]


def trained_widths(trained: tuple[int, ...] | None, full: int) -> list[int]:
    """The widths a layer of full width `full` was trained at, ascending: the family's trained
    widths up to `full` when `full` is one of them (Gemma 3n: 8192, 16384), else MatFormer's
    granularities 1/8, 1/4, 1/2 and all of the layer's width."""
    if trained and full in trained:
        return sorted(w for w in trained if w <= full)
    return sorted(full // g for g in GRANULARITIES.values())


def layer_granularities(source: Source, layer: int) -> list[int]:
    """The widths `layer` was trained at, ascending: a nested model's own record (`matcli
    nest`), else the family's (`trained_widths`)."""
    if source.nested_widths is not None:
        return source.nested_widths[layer]
    return trained_widths(source.family.trained_ffn_widths, source.full_widths[layer])


def kept_layers(source: Source, skip: list[int]) -> list[int]:
    """The original indices of the layers left after skipping `skip`: every skipped index is
    a layer, one layer is left, no skipped layer computes KV that later layers reuse, and
    each kept layer has the tensors the other kept layers have."""
    outside = [i for i in skip if i >= source.num_layers]
    if outside:
        raise MatcliError(
            f"--skip-layers {outside[0]} is not a layer: the model has layers "
            f"0..{source.num_layers - 1}"
        )
    kept = [i for i in range(source.num_layers) if i not in skip]
    if not kept:
        raise MatcliError("--skip-layers skips every layer; keep at least one")
    producers = source.kv_producers() & set(skip) if skip else set()
    if producers:
        key = source.family.kv_sharing.shared_layers
        raise MatcliError(
            f"layer {min(producers)} cannot be skipped: it computes the KV cache that the last "
            f"{source.text_config[key]} layers reuse ({key}); keep it"
        )
    _check_layer_tensors(source, kept)
    return kept


def _check_layer_tensors(source: Source, kept: list[int]) -> None:
    """Every kept layer has the tensors the other kept layers have: transformers would
    silently initialise a missing one at random (KV-shared layers may lack their k/v)."""
    names = source.layer_tensors
    expected = set().union(*(names[layer] for layer in kept))
    kv = source.family.kv_sharing
    optional = set(kv.optional_in_shared_layers) if kv else set()
    for layer in kept:
        missing = expected - names[layer] - (optional if layer >= source.first_kv_shared else set())
        if missing:
            relative = min(missing)
            raise MatcliError(
                f"{source.arch.layer_name(layer, relative)} is missing but other layers have "
                f"{relative}; the checkpoint is incomplete (transformers would initialise it at "
                "random): re-download or re-save it"
            )


def checked_choice(
    source: Source, widths: list[int], skip: list[int], kept: list[int]
) -> FfnChoice:
    """The choice of `widths` for the `kept` layers (from `kept_layers`), each width checked
    against its layer's full width and the config's ability to hold different widths."""
    for width, layer in zip(widths, kept):
        if not isinstance(width, int) or isinstance(width, bool):
            raise MatcliError(f"--ffn-config width {width!r} for layer {layer} is not an integer")
        if not 0 < width <= source.full_widths[layer]:
            raise MatcliError(
                f"--ffn-config width {width} for layer {layer} is outside "
                f"1..{source.full_widths[layer]} (the layer's full width)"
            )
    if len(set(widths)) > 1 and not source.family.takes_per_layer_intermediate(source.text_config):
        raise MatcliError(
            f"{source.arch.name} configs take one {source.family.config.intermediate_size} for "
            "all layers, so transformers cannot load different widths per layer "
            f"({sorted(set(widths))}); give a uniform width, or a Gemma 3n model for Mix'n'Match"
        )
    return FfnChoice(widths=list(widths), skip=list(skip), kept=list(kept))


def choose_widths(spec: str, skip_text: str | None, source: Source) -> FfnChoice:
    """`--ffn-config` and `--skip-layers`, parsed and checked against the source model."""
    skip = parse_layer_list(skip_text or "")
    parsed = read_spec(spec)
    if parsed.skip is not None:
        if skip_text and parsed.skip != skip:
            raise MatcliError(f"--skip-layers {skip_text} contradicts {parsed.skip_origin}")
        skip = parsed.skip
    kept = kept_layers(source, skip)
    items = parsed.items * len(kept) if len(parsed.items) == 1 else parsed.items
    if len(items) != len(kept):
        raise MatcliError(
            f"--ffn-config gives {len(items)} widths but {len(kept)} layers are kept "
            f"({source.num_layers} layers, {len(skip)} skipped); give one width per kept layer"
        )
    widths = [
        width_of(item, source.full_widths[o], f"--ffn-config width for layer {o}")
        for item, o in zip(items, kept)
    ]
    return checked_choice(source, widths, skip, kept)


def full_model(source: Source) -> FfnChoice:
    """Every layer at its full width (`matcli reorder`)."""
    return checked_choice(source, source.full_widths, [], kept_layers(source, []))


def width_warnings(source: Source, choice: FfnChoice) -> list[str]:
    """Widths off the trained granularities (the family's trained widths, else 1/8..1), or
    not multiples of 128."""
    trained, full = source.family.trained_ffn_widths, source.full_widths
    allowed = {layer: layer_granularities(source, layer) for layer in choice.kept}
    warnings = []
    odd = sorted({w for w, layer in zip(choice.widths, choice.kept) if w not in allowed[layer]})
    if odd:
        if source.nested_widths is not None:
            basis = "this model was nested (matcli nest) at"
        elif trained and {full[layer] for layer in choice.kept} & set(trained):
            basis = f"{source.arch.name} was trained at"
        else:
            basis = "1/8, 1/4, 1/2 or all of a layer's width:"
        shown = ", ".join(map(str, sorted(set().union(*allowed.values()))))
        warnings.append(
            f"widths {odd} are not trained MatFormer granularities ({basis} {shown}); quality "
            "is untested there"
        )
    unaligned = sorted({w for w in choice.widths if w % 128})
    if unaligned:
        warnings.append(
            f"widths {unaligned} are not multiples of 128; some kernels and quantizers want 128 "
            "or 256"
        )
    return warnings
