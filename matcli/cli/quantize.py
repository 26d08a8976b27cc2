"""`matcli quantize`: make a c-bit parent from a dense model."""

from __future__ import annotations

from pathlib import Path

import typer

from matcli.cli import common

HELP = (
    "Quantize a dense model into a c-bit Matryoshka parent (compressed-tensors pack-quantized). "
    "--method rtn is round-to-nearest: streamed, no model forward, no data."
)


def quantize(
    ctx: typer.Context,
    model: Path = typer.Argument(..., help="Dense Hugging Face model folder."),
    output: Path = common.OUTPUT,
    method: str = typer.Option("rtn", "--method", help="rtn: round-to-nearest MinMax, no training."),
    bits: int = typer.Option(8, "--bits", help="Parent bit-width c (the paper uses 8)."),
    scheme: str = typer.Option("symmetric", "--scheme", help="symmetric (zero at 2^(c-1); slices load exactly as compressed-tensors) or asymmetric (paper Eq. 1)."),
    group_size: int | None = typer.Option(None, "--group-size", help="Input columns per scale; default: one scale per output channel."),
    layers: str = typer.Option("ffn", "--layers", help="Which Linears: ffn (paper default), attention, ffn,attention, all, or re:REGEX on module names."),
    max_shard_size: str = common.MAX_SHARD_SIZE,
    chunk_size: str = common.CHUNK_SIZE,
    force: bool = common.FORCE,
    dry_run: bool = common.DRY_RUN,
    json_output: bool = common.JSON_OUTPUT,
    quiet: bool = common.QUIET,
    recipe: Path | None = common.RECIPE,
) -> None:
    from matcli.quant.rtn import plan_rtn
    from matcli.recipe import QuantizeOptions, build_options, merge_recipe

    flags = dict(
        model=model,
        output=output,
        method=method,
        bits=bits,
        scheme=scheme,
        group_size=group_size,
        layers=layers,
        max_shard_size=max_shard_size,
        chunk_size=chunk_size,
        force=force,
        dry_run=dry_run,
    )
    options = build_options(QuantizeOptions, **merge_recipe(recipe, flags, common.given_flags(ctx)))
    plan = plan_rtn(options)
    common.run_plan(plan, options.output, options.force, options.dry_run, json_output, quiet)
    if not options.dry_run:
        common.report_written(plan, options.output, json_output, quiet)
