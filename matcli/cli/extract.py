"""`matcli extract` and `matcli reorder`: MatFormer Mix'n'Match submodels."""

from __future__ import annotations

from matcli.cli.render import render_plan, render_written, table, writing_command
from matcli.options import ExtractOptions, ReorderOptions
from matcli.runner import Renderers


def render_parameters(report: dict) -> None:
    before, after = report["parameters_before"], report["parameters_after"]
    rows = [
        [key, f"{before[key]:,}", f"{after[key]:,}", f"{after[key] / before[key]:.3f}"]
        for key in ("total", "effective")
    ]
    title = f"parameters ({report['layers_before']} -> {report['layers_kept']} layers)"
    table(title, ["", "before", "after", "ratio"], rows, {"before", "after", "ratio"})


# An extraction shows what it keeps of the parameters before the plan or the written folders.
EXTRACTION = Renderers(
    dry_run=lambda d: (render_parameters(d["report"]), render_plan(d)),
    written=lambda s: (render_parameters(s["report"]), render_written(s)),
)


def _extraction(options: ExtractOptions):
    from matcli.matformer import plan_extract

    return plan_extract(options)


def _reordering(options: ReorderOptions):
    from matcli.matformer import plan_reorder

    return plan_reorder(options)


EXTRACT = writing_command(
    "extract",
    "Cut a MatFormer submodel: per-layer FFN widths (--ffn-config) and skipped layers, streamed "
    "without a model. Gemma 3n (text and multimodal) and Llama-family checkpoints.",
    ExtractOptions,
    _extraction,
    EXTRACTION,
)
REORDER = writing_command(
    "reorder",
    "Sort every FFN's hidden neurons by importance measured on --data (a model forward), so "
    "that prefix extraction keeps the most important ones. The model's outputs do not change.",
    ReorderOptions,
    _reordering,
)
