"""`matcli inspect`: family, layers, quantized widths, sizes."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.table import Table

from matcli.cli import common

HELP = "Summarize a checkpoint: family, layers, which tensors are quantized at what widths, trained widths, size, effective bits."


def inspect_command(
    path: Path = typer.Argument(..., help="Model folder."),
    json_output: bool = common.JSON_OUTPUT,
) -> None:
    from matcli.inspect import inspect_model

    report = inspect_model(path)
    if json_output:
        print(json.dumps(report, indent=2))
        return
    table = Table(show_header=False, title=str(path), title_justify="left")
    rows = [
        ("model type", report["model_type"]),
        ("family", report["family"] or "unknown to matcli"),
        ("layers", report["num_layers"]),
        ("role", report["role"]),
        ("trained widths", report["trained_bits"]),
        ("tensors", report["tensors"]),
        ("parameters", f"{report['parameters']:,}"),
        ("size on disk", common.human_bytes(report["size_on_disk"])),
        ("bits per quantized weight", report["effective_bits"]),
    ]
    for key, value in rows:
        table.add_row(key, "-" if value is None else str(value))
    common.out.print(table)
    if report["quantized"]:
        q = Table(title="quantized Linears", title_justify="left")
        for column in (
            "bits",
            "scheme",
            "group size",
            "modules",
            "which",
            "weights",
            "bits/weight (with scales)",
        ):
            q.add_column(column)
        for g in report["quantized"]:
            q.add_row(
                str(g["bits"]),
                g["scheme"],
                str(g["group_size"] or "channel"),
                str(g["modules"]),
                "\n".join(g["which"]),
                f"{g['weights']:,}",
                str(g["effective_bits"]),
            )
        common.out.print(q)
