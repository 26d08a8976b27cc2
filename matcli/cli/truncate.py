"""`matcli truncate-embeddings`: MRL truncation of stored embeddings and of embedding models."""

from __future__ import annotations

import json

from matcli.cli.generate import Command
from matcli.cli.render import table
from matcli.options import TruncateOptions
from matcli.progress import Reporter


def run(options: TruncateOptions, invocation) -> None:
    from matcli.runner import return_freed_chunks

    return_freed_chunks()
    if options.input.is_dir():
        from matcli.mrl.model import truncate_model

        report = truncate_model(options)
    else:
        from matcli.mrl.truncate import truncate_embeddings

        report = truncate_embeddings(options)
    Reporter(options.quiet or options.json_output).warn(report["warnings"])
    if options.json_output:
        print(json.dumps(report, indent=2))
    elif not options.quiet:
        shape = f"{report.get('rows', '-')} rows x {report['source_dim']} dims"
        title = f"{'plan (dry run): ' if options.dry_run else ''}{report['input']}: {shape}"
        rows = [[o["dim"], o["path"], o["format"]] for o in report["outputs"]]
        table(title, ["dim", "output", "format"], rows)


COMMAND = Command(
    "truncate-embeddings",
    "Truncate embeddings to their first d dimensions (MRL), renormalized; files of any size "
    "(.npy, .safetensors, .parquet) in bounded memory, or a sentence-transformers model folder.",
    TruncateOptions,
    run,
)
