"""`matcli slice`: cut r-bit models out of a c-bit parent."""

from __future__ import annotations

from matcli.cli.render import CHECKPOINT, Renderers, render_written, table, writing_command
from matcli.options import SliceOptions


def _slicing(options: SliceOptions):
    from matcli.quant.slicing import plan_slice

    return plan_slice(options)


def _written(summary: dict) -> None:
    """The written outputs, and what --format gguf measured (e.g. the re-quantization error)."""
    render_written(summary)
    report = summary.get("report") or {}
    if report and summary["outputs"][0]["matcli"].get("format") == "gguf":
        table("gguf", ["", "value"], [[k, v] for k, v in report.items()])


COMMAND = writing_command(
    "slice",
    "Slice r-bit checkpoints out of a Matryoshka parent, S(q, c, r) of the MatQuant paper, "
    "streamed without a model. One output folder per width (OUT/int4, OUT/int2 when several), "
    "or one llama.cpp file with --format gguf.",
    SliceOptions,
    _slicing,
    Renderers(dry_run=CHECKPOINT.dry_run, written=_written),
)
