"""`matcli truncate-embeddings`: MRL truncation of stored embeddings and of embedding models."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.table import Table

from matcli.cli import common

HELP = (
    "Truncate embeddings to their first d dimensions (MRL), renormalized; files of any size "
    "(.npy, .safetensors, .parquet) in bounded memory, or a sentence-transformers model folder."
)


def truncate_command(
    input: Path = typer.Argument(
        ...,
        help="Embeddings file (.npy, .safetensors, .parquet) or sentence-transformers model folder.",
    ),
    output: Path = typer.Option(
        ..., "-o", "--output", help="A file for one dimension, a folder for several."
    ),
    dims: str = typer.Option(..., "--dims", help="Dimension(s) to keep, e.g. 256 or 768,256,64."),
    key: str | None = typer.Option(
        None, "--key", help="The tensor (.safetensors) or column (.parquet) holding the embeddings."
    ),
    renormalize: bool = typer.Option(
        True,
        "--renormalize/--no-renormalize",
        help="L2-normalize each row after truncation (default: yes).",
    ),
    pre_norm: str | None = typer.Option(
        None,
        "--pre-norm",
        help="layer_norm: normalize the full vector first (nomic-embed-text-v1.5).",
    ),
    pca: bool = typer.Option(
        False,
        "--pca",
        help="Rotate by PCA first (fitted on the input), so non-MRL embeddings truncate gracefully.",
    ),
    pca_center: bool = typer.Option(
        False,
        "--pca-center",
        help="Centre before the PCA rotation (default: rotate only, which keeps full-dimension similarities unchanged).",
    ),
    rotation: Path | None = typer.Option(
        None, "--rotation", help="Apply a rotation saved by an earlier --pca run (e.g. to queries)."
    ),
    quantize: str | None = typer.Option(
        None,
        "--quantize",
        help="int8 (per-dimension ranges, .safetensors output) or binary (packed bits) after truncation.",
    ),
    ranges: Path | None = typer.Option(
        None,
        "--ranges",
        help="With --quantize int8: use the int8_ranges of an earlier run's .safetensors (e.g. the corpus's, for queries).",
    ),
    dtype: str | None = typer.Option(
        None,
        "--dtype",
        help="Output float dtype: float16, bfloat16 or float32 (default: the input's).",
    ),
    format: str | None = typer.Option(
        None,
        "--format",
        help="safetensors, npy or parquet (default: from the -o suffix, or the input's).",
    ),
    skip_bad_rows: bool = typer.Option(
        False, "--skip-bad-rows", help="Drop rows with NaN or inf instead of refusing the input."
    ),
    data: Path | None = typer.Option(
        None,
        "--data",
        help="Model folder with --pca: texts to fit the rotation on (.txt lines or .jsonl).",
    ),
    chunk_size: str = common.CHUNK_SIZE,
    force: bool = common.FORCE,
    dry_run: bool = common.DRY_RUN,
    json_output: bool = common.JSON_OUTPUT,
    quiet: bool = common.QUIET,
) -> None:
    from matcli.options import TruncateOptions, build_options

    common.return_freed_chunks()
    options = build_options(
        TruncateOptions,
        input=input,
        output=output,
        dims=common.parse_int_list(dims, "--dims"),
        key=key,
        renormalize=renormalize,
        pre_norm=pre_norm,
        pca=pca,
        pca_center=pca_center,
        rotation=rotation,
        quantize=quantize,
        ranges=ranges,
        dtype=dtype,
        format=format,
        skip_bad_rows=skip_bad_rows,
        data=data,
        chunk_size=chunk_size,
        force=force,
        dry_run=dry_run,
    )
    if input.is_dir():
        from matcli.mrl.model import truncate_model

        report = truncate_model(options)
    else:
        from matcli.mrl.truncate import truncate_embeddings

        report = truncate_embeddings(options)
    common.show_warnings(report["warnings"], quiet or json_output)
    if json_output:
        print(json.dumps(report, indent=2))
    elif not quiet:
        title = f"{'plan (dry run): ' if dry_run else ''}{report['input']}: {report.get('rows', '-')} rows x {report['source_dim']} dims"
        table = Table(title=title, title_justify="left")
        for column in ("dim", "output", "format"):
            table.add_column(column)
        for o in report["outputs"]:
            table.add_row(str(o["dim"]), o["path"], o["format"])
        common.out.print(table)
