"""`matcli slice`: cut r-bit models out of a c-bit parent."""

from __future__ import annotations

from pathlib import Path

import typer

from matcli.cli import common

HELP = (
    "Slice r-bit checkpoints out of a Matryoshka parent, S(q, c, r) of the MatQuant paper, "
    "streamed without a model. One output folder per width (OUT/int4, OUT/int2 when several)."
)


def slice_command(
    ctx: typer.Context,
    parent: Path = typer.Argument(..., help="Parent folder made by matcli quantize."),
    output: Path = common.OUTPUT,
    bits: str | None = typer.Option(None, "--bits", help="Width(s) to slice, e.g. 2 or 4,2."),
    bits_config: str | None = typer.Option(
        None,
        "--bits-config",
        help="Per-layer widths (Mix'n'Match): a YAML/JSON file, or pyramid, reverse-pyramid, increasing, decreasing.",
    ),
    target_bits: float | None = typer.Option(
        None,
        "--target-bits",
        help="Budget for a named --bits-config: average bits per quantized weight.",
    ),
    extra_precision: bool = typer.Option(
        False, "--extra-precision", help="No clamp: 2^r + 1 levels, stored with r + 1 bits."
    ),
    format: str = typer.Option(
        "compressed-tensors",
        "--format",
        help="compressed-tensors (pack-quantized at r bits) or dense (dequantized).",
    ),
    dtype: str | None = typer.Option(
        None,
        "--dtype",
        help="Dense weights dtype: bfloat16, float16 or float32 (default: the model's).",
    ),
    max_shard_size: str = common.MAX_SHARD_SIZE,
    chunk_size: str = common.CHUNK_SIZE,
    force: bool = common.FORCE,
    dry_run: bool = common.DRY_RUN,
    json_output: bool = common.JSON_OUTPUT,
    quiet: bool = common.QUIET,
    recipe: Path | None = common.RECIPE,
) -> None:
    from matcli.quant.slicing import plan_slice
    from matcli.options import SliceOptions, build_options, merge_recipe

    flags = common.option_values(
        ctx, bits=common.parse_int_list(bits, "--bits") if bits is not None else None
    )
    options = build_options(SliceOptions, **merge_recipe(recipe, flags, common.given_flags(ctx)))
    plan = plan_slice(options)
    common.run_plan(plan, options.output, options.force, options.dry_run, json_output, quiet)
    if not options.dry_run:
        common.report_written(plan, options.output, json_output, quiet)
