"""`matcli demo`: quantize and slice a tiny Llama end to end, then load every artifact."""

from __future__ import annotations

import shlex

from rich.table import Table

from matcli.cli.generate import Command
from matcli.cli.render import human_bytes, out
from matcli.options import DemoOptions

HELP = (
    "Build a tiny Llama (fixed seed), run quantize --method rtn and slice --bits 4 / --bits 2 "
    "on it, load each result with stock transformers and print sizes and quality against the "
    "dense model."
)


def run(options: DemoOptions, invocation) -> None:
    workdir = options.output
    import os
    import shutil

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TQDM_DISABLE", "1")  # transformers' and compressed-tensors' load bars
    import torch
    from transformers import AutoModelForCausalLM

    from matcli.checkpoint.reader import ModelFolder
    from matcli.demo import build_tiny_llama, compare, ffn_error
    from matcli.quant.reference import dequantized_state_dict

    if workdir.exists() and not (workdir / "dense").is_dir() and any(workdir.iterdir()):
        from matcli.errors import MatcliError

        raise MatcliError(f"{workdir} exists and is not a previous demo folder; choose another -o")
    shutil.rmtree(workdir, ignore_errors=True)
    dense = workdir / "dense"
    out.print(f"building a tiny Llama (4 layers, 3.4M parameters, seed 0) in {dense}")
    build_tiny_llama(dense)

    steps = [
        ["quantize", str(dense), "-o", str(workdir / "parent-int8"), "--method", "rtn", "-q"],
        ["slice", str(workdir / "parent-int8"), "--bits", "4", "-o", str(workdir / "int4"), "-q"],
        ["slice", str(workdir / "parent-int8"), "--bits", "2", "-o", str(workdir / "int2"), "-q"],
    ]
    from matcli.cli import app

    for args in steps:
        out.print("$ matcli " + shlex.join(args))
        app(args, prog_name="matcli", standalone_mode=False)

    torch.manual_seed(1)
    tokens = torch.randint(0, 512, (4, 64))
    with ModelFolder(dense) as f:
        dense_weights = {n: f.read(n) for n in f.tensors}
    rows = []
    dense_logits = None
    for name in ("dense", "parent-int8", "int4", "int2"):
        folder = workdir / name
        with _quiet_stderr():
            model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
        with torch.no_grad():
            logits = model(tokens).logits
        with ModelFolder(folder) as f:
            reference = dequantized_state_dict(f)
            with _quiet_stderr():
                reference_model = AutoModelForCausalLM.from_pretrained(dense, dtype=torch.float32)
            reference_model.load_state_dict(reference, strict=True)
        with torch.no_grad():
            mismatch = (reference_model(tokens).logits - logits).abs().max().item()
        if dense_logits is None:
            dense_logits = logits
        agree, kl = compare(dense_logits, logits)
        rows.append(
            (
                name,
                sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()),
                ffn_error(dense_weights, reference),
                agree,
                kl,
                mismatch,
            )
        )

    table = Table(
        title="one int8 parent, sliced without a model, loaded by stock transformers",
        title_justify="left",
    )
    for column in ("model", "size", "FFN error", "top-1 agree", "KL vs dense", "logits diff*"):
        table.add_column(column, justify="left" if column == "model" else "right")
    for name, size, err, agree, kl, mismatch in rows:
        table.add_row(
            name,
            human_bytes(size),
            f"{err:.2%}",
            f"{agree:.1%}",
            f"{kl:.2e}",
            f"{mismatch:.1e}",
        )
    out.print(table)
    out.print(
        "* max |logits of the folder loaded by transformers - logits of matcli's own "
        "dequantized weights|.\nAn RTN parent is not Matryoshka-trained, so int2 degrades "
        "sharply; `matcli quantize --method qat|omniquant --data TEXT` trains the parent so "
        "that its int4 and int2 slices stay good (docs/results.md has real-model numbers)."
    )


def _quiet_stderr():
    """compressed-tensors draws progress bars with disable=False hard-coded; hide them."""
    import contextlib
    import io

    return contextlib.redirect_stderr(io.StringIO())


COMMAND = Command("demo", HELP, DemoOptions, run)
