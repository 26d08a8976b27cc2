"""`--budget`: the largest Mix'n'Match submodel that fits, by the MatFormer paper's rule.

The paper (§3.3, App. D.1) finds the best Mix'n'Match models have widths non-decreasing with
depth and change as little as possible between layers. Candidates are therefore: every layer
at one granularity (1/8, 1/4, 1/2, all of its width), or the first k kept layers at one
granularity and the rest at the next larger one (the latter only for families whose config
accepts a width per layer, such as Gemma 3n). The largest candidate within the budget
wins; with --rank-by-loss, the few largest are measured on the calibration text instead.
"""

from __future__ import annotations

import math
import re

from matcli.arch import Architecture
from matcli.checkpoint.reader import ModelFolder
from matcli.errors import MatcliError
from matcli.matformer.ffn_config import GRANULARITIES, FfnChoice, parse_layer_list
from matcli.recipe import ExtractOptions, parse_size

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
        raise MatcliError(f"--budget {text!r} is neither parameters (2.5e9, 900M, 2B) nor bytes (4GB, 3GiB)") from None


def candidates(full: list[int], kept: list[int], uniform_only: bool = False) -> list[list[int]]:
    """Width lists over the kept layers: uniform, or one step up to the next granularity
    (uniform only for families whose config takes one intermediate_size)."""
    levels = [sorted({full[layer] // g for layer in kept}) for g in sorted(GRANULARITIES.values(), reverse=True)]
    if any(len(level) > 1 for level in levels):
        # Layers of different full widths: step in granularity, each layer at its own width.
        steps = [[full[layer] // g for layer in kept] for g in sorted(GRANULARITIES.values(), reverse=True)]
    else:
        steps = [[level[0]] * len(kept) for level in levels]
    out = []
    for low, high in zip(steps, steps[1:]):
        for k in ([0, len(kept)] if uniform_only else range(len(kept) + 1)):
            out.append(low[:k] + high[k:])
    return [list(c) for c in dict.fromkeys(tuple(c) for c in out)]


def choose_under_budget(
    folder: ModelFolder,
    arch: Architecture,
    text_config: dict,
    full: list[int],
    options: ExtractOptions,
    neurons: dict[int, list[int]] | None,
) -> FfnChoice:
    from matcli.matformer.extract import Extraction

    unit, budget = parse_budget(options.budget)
    skip = parse_layer_list(options.skip_layers) if options.skip_layers else []
    kept = [i for i in range(len(full)) if i not in skip]
    sized = []
    uniform_only = not arch.family.per_layer_intermediate and not isinstance(text_config.get(arch.family.config.intermediate_size), list)
    for widths in candidates(full, kept, uniform_only):
        choice = FfnChoice(widths=widths, skip=skip)
        tensors = Extraction(folder, choice).tensors(1 << 20)
        size = sum(t.nbytes if unit == "bytes" else math.prod(t.shape) for t in tensors)
        if size <= budget:
            sized.append((size, -len(set(widths)), choice))
    if not sized:
        raise MatcliError(f"no submodel fits --budget {options.budget}: even every layer at 1/8 width is larger; raise the budget or skip layers")
    sized.sort(key=lambda s: (s[0], s[1]), reverse=True)
    if not options.rank_by_loss:
        return sized[0][2]
    return _lowest_loss([c for _, _, c in sized[:CANDIDATES_RANKED_BY_LOSS]], options, neurons)


def _lowest_loss(choices: list[FfnChoice], options: ExtractOptions, neurons) -> FfnChoice:
    from transformers import AutoTokenizer

    from matcli.data import read_texts, token_windows
    from matcli.evaluate import perplexity
    from matcli.matformer.inmemory import submodel

    windows = token_windows(AutoTokenizer.from_pretrained(options.model), read_texts(options.data), options.seq_len, options.max_tokens)
    scored = [(math.log(perplexity(submodel(options.model, c, neurons if options.reorder else None), windows)), i) for i, c in enumerate(choices)]
    return choices[min(scored)[1]]
