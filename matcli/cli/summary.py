"""`matcli inspect`: family, layers, quantized widths, sizes."""

from __future__ import annotations

import json

from rich.table import Table

from matcli.cli.generate import Command
from matcli.cli.render import human_bytes, out, table
from matcli.options import InspectOptions
from matcli.runner import Invocation


def run(options: InspectOptions, invocation: Invocation) -> None:
    from matcli.inspection import inspect_model

    report = inspect_model(options.path)
    if options.json_output:
        print(json.dumps(report, indent=2))
    elif not options.quiet:
        render(report, str(options.path))


def render(report: dict, title: str) -> None:
    facts = Table(show_header=False, title=title, title_justify="left")
    rows = [
        ("model type", report["model_type"]),
        ("family", report["family"] or "unknown to matcli"),
        ("layers", report["num_layers"]),
        ("role", report["role"]),
        ("trained widths", report["trained_bits"]),
        ("tensors", report["tensors"]),
        ("parameters", f"{report['parameters']:,}"),
        ("size on disk", human_bytes(report["size_on_disk"])),
        ("bits per quantized weight", report["effective_bits"]),
    ]
    for key, value in rows:
        facts.add_row(key, "-" if value is None else str(value))
    out.print(facts)
    if report["quantized"]:
        columns = ["bits", "scheme", "group size", "modules", "which", "weights"]
        groups = [
            [
                g["bits"],
                g["scheme"],
                g["group_size"] or "channel",
                g["modules"],
                "\n".join(g["which"]),
                f"{g['weights']:,}",
                g["effective_bits"],
            ]
            for g in report["quantized"]
        ]
        table("quantized Linears", [*columns, "bits/weight (with scales)"], groups)


COMMAND = Command(
    "inspect",
    "Summarize a checkpoint: family, layers, which tensors are quantized at what widths, "
    "trained widths, size, effective bits.",
    InspectOptions,
    run,
)
