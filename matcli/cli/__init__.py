"""The `matcli` command line: every command is an options model plus what it runs.

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
from matcli.cli import (
    demo,
    evaluation,
    extract,
    nest,
    quantize,
    retrieval,
    slicing,
    summary,
    truncate,
)
from matcli.cli.generate import register
from matcli.errors import RUNTIME, USAGE, MatcliError

COMMANDS = [
    quantize.COMMAND,
    slicing.COMMAND,
    extract.EXTRACT,
    extract.REORDER,
    nest.COMMAND,
    truncate.COMMAND,
    retrieval.COMMAND,
    summary.COMMAND,
    evaluation.COMMAND,
    demo.COMMAND,
]

app = typer.Typer(
    name="matcli",
    help="Turn one trained model into many: Matryoshka quantization (quantize, slice), MatFormer "
    "submodels (nest, extract), MRL embeddings (truncate-embeddings), inspect, eval, demo.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
for command in COMMANDS:
    register(app, command)


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


# The parser's usage errors (unknown option, missing value): the base class of BadParameter,
# whichever click Typer uses (recent versions carry their own copy).
UsageError = typer.BadParameter.__bases__[0]

# The disk, not the input: a full disk, a read-only or missing location, permissions.
DISK_ERRNOS = {
    errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM,
    errno.ENOENT, errno.EISDIR, errno.ENOTDIR, errno.EIO,
}  # fmt: skip


def _terminate(signum, frame):
    # SIGTERM unwinds like Ctrl-C, so staging folders are removed and nothing partial stays.
    raise KeyboardInterrupt


def _os_error_line(e: OSError) -> str:
    if e.errno in DISK_ERRNOS:
        where = f"{e.filename}: " if e.filename else ""
        return f"{where}{e.strerror}; check the path, its permissions and the free disk space"
    # Other OSErrors (transformers raises them for unloadable tokenizers): their first line.
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _fail(message: str, code: int, debug: bool) -> None:
    if debug:
        traceback.print_exc()
    # One line whatever the message holds (a parser's multi-line text, a path with a newline).
    print(f"error: {' '.join(message.split())}", file=sys.stderr)
    sys.exit(code)


def main() -> None:
    """Run the command line; every failure is one `error:` line on stderr (the traceback only
    with --debug): 2 for bad input or usage, 1 for runtime failures, 130 when interrupted."""
    debug = "--debug" in sys.argv[1:]
    signal.signal(signal.SIGTERM, _terminate)
    try:
        result = app(prog_name="matcli", standalone_mode=False)
    except UsageError as e:
        if type(e).__name__ == "NoArgsIsHelpError":
            sys.exit(USAGE)  # no arguments: the help was shown
        where = e.ctx.command_path if e.ctx else "matcli"
        _fail(f"{e.format_message().rstrip('.')}; see {where} --help", USAGE, debug)
    except MatcliError as e:
        _fail(str(e), e.exit_code, debug)
    except (KeyboardInterrupt, typer.Abort):
        _fail("interrupted; no output was written", 130, False)
    except OSError as e:
        _fail(_os_error_line(e), RUNTIME, debug)
    except MemoryError:
        _fail("out of memory; lower --chunk-size or free memory", RUNTIME, debug)
    except Exception as e:  # a bug: still one line, and how to see more
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        message = f"unexpected {type(e).__name__}{': ' + first if first else ''}"
        _fail(f"{message}; rerun with --debug for the traceback and report it", RUNTIME, debug)
    sys.exit(result if isinstance(result, int) else 0)
