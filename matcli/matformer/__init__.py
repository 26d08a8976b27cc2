"""MatFormer: nested-FFN submodels (Mix'n'Match) cut out of one checkpoint."""

from __future__ import annotations

from matcli.checkpoint.plan import Plan
from matcli.checkpoint.reader import ModelFolder
from matcli.options import ExtractOptions, ReorderOptions


def plan_extract(options: ExtractOptions) -> Plan:
    from matcli.matformer.extract import Extraction, model_widths, plan_extraction
    from matcli.matformer.ffn_config import choose_widths

    folder = ModelFolder(options.model)
    source = model_widths(folder)
    neurons = None
    if options.reorder:
        from matcli.matformer.importance import neuron_ranking

        neurons = neuron_ranking(options.model, options.data, options.seq_len, options.max_tokens)
    if options.budget is not None:
        from matcli.matformer.budget import choose_under_budget

        choice = choose_under_budget(folder, source, options, neurons)
    else:
        choice = choose_widths(options.ffn_config, options.skip_layers, source.full)
    extraction = Extraction(folder, choice, neurons, source=source)
    return plan_extraction(
        folder,
        extraction,
        options.model_dump(mode="json"),
        options.chunk_size,
        options.max_shard_size,
        reordered=options.reorder,
    )


def plan_reorder(options: ReorderOptions) -> Plan:
    """The full model with each FFN's neurons sorted by importance: same function, and its
    prefixes are now the best submodels a plain `extract` can cut."""
    from matcli.matformer.extract import Extraction, model_widths, plan_extraction
    from matcli.matformer.ffn_config import FfnChoice
    from matcli.matformer.importance import neuron_ranking

    folder = ModelFolder(options.model)
    source = model_widths(folder)
    neurons = neuron_ranking(options.model, options.data, options.seq_len, options.max_tokens)
    extraction = Extraction(
        folder, FfnChoice(widths=source.full, skip=[]), neurons, keep_order=True, source=source
    )
    return plan_extraction(
        folder,
        extraction,
        options.model_dump(mode="json"),
        options.chunk_size,
        options.max_shard_size,
        reordered=True,
        command="reorder",
    )
