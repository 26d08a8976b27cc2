"""`matcli demo`: quantize and slice a tiny Llama end to end, then load every artifact."""

from __future__ import annotations

import shlex
from pathlib import Path

from matcli.cli.generate import Command
from matcli.cli.render import human_bytes, out, table
from matcli.options import DemoOptions
from matcli.runner import Invocation

HELP = (
    "Build a tiny Llama (fixed seed), run quantize --method rtn and slice --bits 4 / --bits 2 "
    "on it, load each result with stock transformers and print sizes and quality against the "
    "dense model."
)
FOOTNOTE = (
    "* max |logits of the folder loaded by transformers - logits of matcli's own "
    "dequantized weights|.\nAn RTN parent is not Matryoshka-trained, so int2 degrades "
    "sharply; `matcli quantize --method qat|omniquant --data TEXT` trains the parent so "
    "that its int4 and int2 slices stay good (docs/results.md has real-model numbers)."
)


def run(options: DemoOptions, invocation: Invocation) -> None:
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TQDM_DISABLE", "1")  # transformers' and compressed-tensors' load bars
    from matcli.cli import app
    from matcli.demo import build_tiny_llama, commands, measure

    workdir = _fresh(options.output)
    out.print(f"building a tiny Llama (4 layers, 3.4M parameters, seed 0) in {workdir / 'dense'}")
    build_tiny_llama(workdir / "dense")
    for args in commands(workdir):
        out.print("$ matcli " + shlex.join(args))
        app(args, prog_name="matcli", standalone_mode=False)
    rows = [
        [r["model"], human_bytes(r["size"]), f"{r['ffn_error']:.2%}", f"{r['top1_agree']:.1%}",
         f"{r['kl']:.2e}", f"{r['mismatch']:.1e}"]
        for r in measure(workdir)
    ]  # fmt: skip
    columns = ["model", "size", "FFN error", "top-1 agree", "KL vs dense", "logits diff*"]
    title = "one int8 parent, sliced without a model, loaded by stock transformers"
    table(title, columns, rows, set(columns[1:]))
    out.print(FOOTNOTE)


def _fresh(workdir: Path) -> Path:
    """An empty demo folder: a previous demo's is replaced, any other folder refused."""
    import shutil

    if workdir.exists() and not (workdir / "dense").is_dir() and any(workdir.iterdir()):
        from matcli.errors import MatcliError

        raise MatcliError(f"{workdir} exists and is not a previous demo folder; choose another -o")
    shutil.rmtree(workdir, ignore_errors=True)
    return workdir


COMMAND = Command("demo", HELP, DemoOptions, run)
