"""`--budget`: the largest Mix'n'Match submodel that fits, by the MatFormer paper's rule.

The paper (§3.3, App. D.1) finds the best Mix'n'Match models have widths non-decreasing with
depth and change as little as possible between layers. Candidates are therefore: every layer
at one trained granularity (a nested model's own, from `matcli nest`; else the family's
trained widths, Gemma 3n's 8192 and 16384; else 1/8, 1/4, 1/2, all of its width), or the
first k kept layers at one granularity and the rest at the next larger one (the latter only
for families whose config accepts a width per layer, such as Gemma 3n). The largest candidate
within the budget wins; with --rank-by-loss, the few largest are measured on the calibration
text instead. The budget counts every tensor, or with --budget-of effective only the family's
effective parameters (Google's "E2B" count).
"""

from __future__ import annotations

import math
import re

from matcli.arch import Architecture
from matcli.checkpoint.reader import ModelFolder
from matcli.checkpoint.writer import OutputTensor
from matcli.errors import MatcliError
from matcli.matformer.extraction import Extraction
from matcli.matformer.ffn_config import (
    FfnChoice,
    checked_choice,
    kept_layers,
    layer_granularities,
)
from matcli.matformer.ffn_spec import parse_layer_list
from matcli.matformer.source import Source
from matcli.options import ExtractOptions, parse_size

CANDIDATES_RANKED_BY_LOSS = 4
_PARAM_SUFFIX = {"": 1, "K": 10**3, "M": 10**6, "B": 10**9, "T": 10**12}


def parse_budget(text: str) -> tuple[str, int]:
    """('parameters', n) for 2.5e9 / 900M / 2B, ('bytes', n) for 4GB / 3GiB."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?(?:e\d+)?)\s*([KMBT]?)\s*", text, re.IGNORECASE)
    if m:
        return "parameters", int(float(m.group(1)) * _PARAM_SUFFIX[m.group(2).upper()])
    try:
        return "bytes", parse_size(text)
    except MatcliError:
        raise MatcliError(
            f"--budget {text!r} is neither parameters (2.5e9, 900M, 2B) nor bytes (4GB, 3GiB)"
        ) from None


def candidates(levels: list[list[int]], uniform_only: bool = False) -> list[list[int]]:
    """Width lists over the kept layers, from each kept layer's granularities (ascending):
    every layer at one level, or the first k layers at one level and the rest one level up
    (uniform only for families whose config takes one intermediate_size). A layer with
    fewer levels than the others repeats its smallest."""
    depth = max(map(len, levels))
    padded = [[level[0]] * (depth - len(level)) + level for level in levels]
    steps = [[layer[j] for layer in padded] for j in range(depth)]
    out = list(steps)
    for low, high in zip(steps, steps[1:]):
        for k in [] if uniform_only else range(1, len(levels)):
            out.append(low[:k] + high[k:])
    return [list(c) for c in dict.fromkeys(tuple(c) for c in out)]


def submodel_size(
    tensors: list[OutputTensor], unit: str, effective: bool, arch: Architecture
) -> int:
    """Parameters or bytes of the tensors; with `effective`, only those in the family's
    effective count (Gemma 3n: without embeddings, per-layer embeddings and towers)."""
    return sum(
        t.nbytes if unit == "bytes" else math.prod(t.shape)
        for t in tensors
        if not effective or arch.counts_as_effective(t.name)
    )


def fitting_choices(
    folder: ModelFolder, source: Source, options: ExtractOptions
) -> list[FfnChoice]:
    """The candidates within --budget, largest first (ties: fewer distinct widths first);
    only the first few with --rank-by-loss."""
    unit, budget = parse_budget(options.budget)
    effective = options.budget_of == "effective"
    skip = parse_layer_list(options.skip_layers or "")
    kept = kept_layers(source, skip)
    family = source.family
    levels = [layer_granularities(source, i) for i in kept]
    uniform_only = not family.takes_per_layer_intermediate(source.text_config)
    sized = []
    for widths in candidates(levels, uniform_only=uniform_only):
        choice = checked_choice(source, widths, skip, kept)
        tensors = Extraction(folder, source, choice).tensors(1 << 20)
        size = submodel_size(tensors, unit, effective, source.arch)
        if size <= budget:
            sized.append((size, -len(set(widths)), choice))
    if not sized:
        what = "effective " if effective else ""
        raise MatcliError(
            f"no submodel fits --budget {options.budget} ({what}{unit}): even every layer at its "
            f"smallest granularity ({min(level[0] for level in levels)}) is larger; raise the "
            "budget or skip layers"
        )
    sized.sort(key=lambda s: (s[0], s[1]), reverse=True)
    shown = CANDIDATES_RANKED_BY_LOSS if options.rank_by_loss else 1
    return [choice for _, _, choice in sized[:shown]]


def lowest_loss(
    choices: list[FfnChoice], options: ExtractOptions, neurons: dict[int, list[int]] | None
) -> FfnChoice:
    """The choice whose submodel has the lowest loss on the calibration text."""
    from transformers import AutoTokenizer

    from matcli.data import read_texts, token_windows
    from matcli.evaluate import perplexity
    from matcli.matformer.inmemory import submodel

    windows = token_windows(
        AutoTokenizer.from_pretrained(options.model),
        read_texts(options.data),
        options.seq_len,
        options.max_tokens,
    )
    scored = [
        (math.log(perplexity(submodel(options.model, c, neurons), windows)), i)
        for i, c in enumerate(choices)
    ]
    return choices[min(scored)[1]]
