"""`matcli extract`: MatFormer Mix'n'Match submodels."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from matcli.cli import common

HELP = (
    "Cut a MatFormer submodel: per-layer FFN widths (--ffn-config) and skipped layers, streamed "
    "without a model. Gemma 3n (text and multimodal) and Llama-family checkpoints."
)


def extract_command(
    ctx: typer.Context,
    model: Path = typer.Argument(..., help="Dense Hugging Face model folder."),
    output: Path = common.OUTPUT,
    ffn_config: str | None = typer.Option(
        None,
        "--ffn-config",
        help='Widths of the kept layers: 8192 | 0.5 | s,m,l,xl | a list 8192,16384,... | FILE.yaml/json | configs.csv:"ROW NAME".',
    ),
    skip_layers: str | None = typer.Option(
        None, "--skip-layers", help="Original layer indices to drop, e.g. 20-24."
    ),
    budget: str | None = typer.Option(
        None,
        "--budget",
        help="Largest submodel: parameters (2.5e9, 900M, 2B) or bytes (4GB, 3GiB).",
    ),
    budget_of: str | None = typer.Option(
        None,
        "--budget-of",
        help="What --budget counts: total (every tensor, the default) or effective (the parameter report's effective count; Gemma 3n: Google's E2B/E4B figure, without embeddings and vision/audio towers).",
    ),
    reorder: bool = typer.Option(
        False,
        "--reorder",
        help="Keep each layer's most important neurons (measured on --data), not the first ones.",
    ),
    data: Path | None = typer.Option(
        None, "--data", help="Calibration text for --reorder and --rank-by-loss (.txt or .jsonl)."
    ),
    rank_by_loss: bool = typer.Option(
        False,
        "--rank-by-loss",
        help="With --budget: pick the candidate with the lowest loss on --data.",
    ),
    seq_len: int = typer.Option(256, "--seq-len", help="Tokens per calibration window."),
    max_tokens: int = typer.Option(
        16384, "--max-tokens", help="Calibration tokens to use at most."
    ),
    max_shard_size: str = common.MAX_SHARD_SIZE,
    chunk_size: str = common.CHUNK_SIZE,
    force: bool = common.FORCE,
    dry_run: bool = common.DRY_RUN,
    json_output: bool = common.JSON_OUTPUT,
    quiet: bool = common.QUIET,
    recipe: Path | None = common.RECIPE,
) -> None:
    from matcli.matformer import plan_extract
    from matcli.options import ExtractOptions, build_options, merge_recipe

    flags = common.option_values(ctx)
    options = build_options(ExtractOptions, **merge_recipe(recipe, flags, common.given_flags(ctx)))
    plan = plan_extract(options)
    if not (quiet or json_output):
        render_parameters(plan.report)
    common.run_plan(plan, options.output, options.force, options.dry_run, json_output, quiet)
    if not options.dry_run:
        common.report_written(plan, options.output, json_output, quiet)


def render_parameters(report: dict) -> None:
    before, after = report["parameters_before"], report["parameters_after"]
    table = Table(
        title=f"parameters ({report['layers_before']} -> {report['layers_kept']} layers)",
        title_justify="left",
    )
    for column in ("", "before", "after", "ratio"):
        table.add_column(column, justify="right" if column else "left")
    for key in ("total", "effective"):
        table.add_row(key, f"{before[key]:,}", f"{after[key]:,}", f"{after[key] / before[key]:.3f}")
    common.out.print(table)


REORDER_HELP = (
    "Sort every FFN's hidden neurons by importance measured on --data (a model forward), so that "
    "prefix extraction keeps the most important ones. The model's outputs do not change."
)


def reorder_command(
    ctx: typer.Context,
    model: Path = typer.Argument(..., help="Dense Hugging Face model folder."),
    output: Path = common.OUTPUT,
    data: Path = typer.Option(..., "--data", help="Calibration text (.txt or .jsonl)."),
    seq_len: int = typer.Option(256, "--seq-len", help="Tokens per calibration window."),
    max_tokens: int = typer.Option(
        16384, "--max-tokens", help="Calibration tokens to use at most."
    ),
    max_shard_size: str = common.MAX_SHARD_SIZE,
    chunk_size: str = common.CHUNK_SIZE,
    force: bool = common.FORCE,
    dry_run: bool = common.DRY_RUN,
    json_output: bool = common.JSON_OUTPUT,
    quiet: bool = common.QUIET,
) -> None:
    from matcli.matformer import plan_reorder
    from matcli.options import ReorderOptions, build_options

    options = build_options(
        ReorderOptions,
        model=model,
        output=output,
        data=data,
        seq_len=seq_len,
        max_tokens=max_tokens,
        max_shard_size=max_shard_size,
        chunk_size=chunk_size,
        force=force,
        dry_run=dry_run,
    )
    plan = plan_reorder(options)
    common.run_plan(plan, options.output, options.force, options.dry_run, json_output, quiet)
    if not options.dry_run:
        common.report_written(plan, options.output, json_output, quiet)
