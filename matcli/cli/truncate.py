"""`matcli truncate-embeddings`: MRL truncation of stored embeddings and of embedding models."""

from __future__ import annotations

from matcli.cli.render import table, writing_command
from matcli.options import TruncateOptions
from matcli.runner import Renderers


def plan(options: TruncateOptions):
    """A model folder's plan, or an embeddings file's."""
    if options.input.is_dir():
        from matcli.mrl.model import plan_model_truncation

        return plan_model_truncation(options)
    from matcli.mrl.truncate import plan_truncation

    return plan_truncation(options)


def render_outputs(report: dict, dry_run: bool) -> None:
    """One row per output: its dimension, path and format."""
    shape = f"{report.get('rows', '-')} rows x {report['source_dim']} dims"
    title = f"{'plan (dry run): ' if dry_run else ''}{report['input']}: {shape}"
    rows = [[o["dim"], o["path"], o["format"]] for o in report["outputs"]]
    table(title, ["dim", "output", "format"], rows)


TRUNCATION = Renderers(
    dry_run=lambda d: render_outputs(d, dry_run=True),
    written=lambda s: render_outputs(s, dry_run=False),
)


COMMAND = writing_command(
    "truncate-embeddings",
    "Truncate embeddings to their first d dimensions (MRL), renormalized; files of any size "
    "(.npy, .safetensors, .parquet) in bounded memory, or a sentence-transformers model folder.",
    TruncateOptions,
    plan,
    TRUNCATION,
)
