"""The `matcli` command line. Thin: options -> plan -> run -> render.

Command modules import torch and transformers inside their functions, so that
`matcli --help` starts instantly.
"""

from __future__ import annotations

import errno
import signal
import sys
import traceback

import typer

from matcli import __version__
from matcli.cli import demo, eval, extract, inspect, quantize, retrieval, slice, truncate
from matcli.errors import RUNTIME, MatcliError

app = typer.Typer(
    name="matcli",
    help="Turn one trained model into many: Matryoshka quantization (quantize, slice), MatFormer submodels (extract), MRL embeddings (truncate-embeddings), inspect, eval, demo.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.command("quantize", help=quantize.HELP)(quantize.quantize)
app.command("slice", help=slice.HELP)(slice.slice_command)
app.command("extract", help=extract.HELP)(extract.extract_command)
app.command("reorder", help=extract.REORDER_HELP)(extract.reorder_command)
app.command("truncate-embeddings", help=truncate.HELP)(truncate.truncate_command)
app.command("eval-retrieval", help=retrieval.HELP)(retrieval.eval_retrieval_command)
app.command("inspect", help=inspect.HELP)(inspect.inspect_command)
app.command("eval", help=eval.HELP)(eval.eval_command)
app.command("demo", help=demo.HELP)(demo.demo)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"matcli {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    debug: bool = typer.Option(False, "--debug", help="Show the full traceback of errors."),
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version."
    ),
) -> None:
    """Global options."""


# The disk, not the input: a full disk, a read-only or missing location, permissions.
DISK_ERRNOS = {
    errno.ENOSPC,
    errno.EDQUOT,
    errno.EROFS,
    errno.EACCES,
    errno.EPERM,
    errno.ENOENT,
    errno.EISDIR,
    errno.ENOTDIR,
    errno.EIO,
}


def _terminate(signum, frame):
    # SIGTERM unwinds like Ctrl-C, so staging folders are removed and nothing partial stays.
    raise KeyboardInterrupt


def main() -> None:
    debug = "--debug" in sys.argv[1:]
    signal.signal(signal.SIGTERM, _terminate)
    try:
        app(prog_name="matcli")
    except MatcliError as e:
        if debug:
            traceback.print_exc()
        print(f"error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        print("error: interrupted; no output was written", file=sys.stderr)
        sys.exit(130)
    except OSError as e:
        if debug:
            traceback.print_exc()
        if e.errno in DISK_ERRNOS:
            where = f"{e.filename}: " if e.filename else ""
            print(
                f"error: {where}{e.strerror}; check the path, its permissions and the free disk space",
                file=sys.stderr,
            )
        else:  # other OSErrors (transformers raises them for unloadable tokenizers): their first line
            print(
                f"error: {str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__}",
                file=sys.stderr,
            )
        sys.exit(RUNTIME)
    except MemoryError:
        if debug:
            traceback.print_exc()
        print("error: out of memory; lower --chunk-size or free memory", file=sys.stderr)
        sys.exit(RUNTIME)
