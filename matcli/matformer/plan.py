"""`matcli extract` and `matcli reorder`: source -> checked FFN choice -> extraction -> plan.

The source is read and checked once (`source`), the choice is parsed and checked once
(`ffn_config`, or `budget`'s candidates), and the extraction and the config edits
(`config_edit`, from the family data) trust both. Only --reorder and --rank-by-loss run a
model (and import torch).
"""

from __future__ import annotations

import sys

from matcli.checkpoint.plan import OutputCheckpoint, Plan
from matcli.checkpoint.reader import ModelFolder
from matcli.matformer.budget import fitting_choices, lowest_loss
from matcli.matformer.config_edit import submodel_config
from matcli.matformer.extraction import Extraction
from matcli.matformer.ffn_config import choose_widths, full_model, width_warnings
from matcli.matformer.source import read_source
from matcli.options import ExtractOptions, ReorderOptions


def plan_extraction(
    extraction: Extraction,
    options: ExtractOptions | ReorderOptions,
    reordered: bool,
    command: str,
) -> Plan:
    """The plan that writes `extraction` as one checkpoint."""
    tensors = extraction.tensors(options.chunk_size)
    source, choice = extraction.source, extraction.choice
    config = submodel_config(source, extraction.folder.config, choice, reordered, command)
    output = OutputCheckpoint(
        name="", config=config, tensors=tensors, metadata={"matcli.role": command}
    )
    return Plan(
        command=command,
        source=extraction.folder,
        outputs=[output],
        max_shard_bytes=options.max_shard_size,
        chunk_bytes=options.chunk_size,
        warnings=width_warnings(source, choice),
        report=extraction.report(tensors),
        # --reorder and --rank-by-loss ran a model in this process
        uses_torch="torch" in sys.modules,
    )


def plan_extract(options: ExtractOptions) -> Plan:
    """A submodel of the widths --ffn-config names, or the best one within --budget."""
    folder = ModelFolder(options.model)
    source = read_source(folder)
    if options.budget is None:
        choices = [choose_widths(options.ffn_config, options.skip_layers, source)]
    else:
        choices = fitting_choices(folder, source, options)
    neurons = _ranking(options) if options.reorder else None
    choice = choices[0]
    if options.budget is not None and options.rank_by_loss:
        choice = lowest_loss(choices, options, neurons)
    extraction = Extraction(folder, source, choice, neurons)
    return plan_extraction(extraction, options, reordered=options.reorder, command="extract")


def plan_reorder(options: ReorderOptions) -> Plan:
    """The full model with each FFN's neurons sorted by importance: same function, and its
    prefixes are now the best submodels a plain `extract` can cut."""
    folder = ModelFolder(options.model)
    source = read_source(folder)
    choice = full_model(source)
    extraction = Extraction(folder, source, choice, _ranking(options), keep_order=True)
    return plan_extraction(extraction, options, reordered=True, command="reorder")


def _ranking(options: ExtractOptions | ReorderOptions) -> dict[int, list[int]]:
    from matcli.matformer.importance import neuron_ranking

    return neuron_ranking(options.model, options.data, options.seq_len, options.max_tokens)
