"""`matcli eval`: perplexity of models, parents at several widths, or sliced folders."""

from __future__ import annotations

import json
from pathlib import Path

from matcli.cli.generate import Command
from matcli.cli.render import table
from matcli.options import EvalOptions
from matcli.runner import Invocation

HELP = (
    "Held-out perplexity of a dense model, a sliced folder, or a parent sliced in memory at each "
    "--bits (nothing written)."
)


def run(options: EvalOptions, invocation: Invocation) -> None:
    results, tokens = _perplexities(options)
    if options.plot is not None:
        _plot(results, options.plot, str(options.model))
    if options.json_output:
        report = {"model": str(options.model), "data": str(options.data), "tokens": tokens}
        print(json.dumps({**report, "results": results}, indent=2))
    elif not options.quiet:
        rows = [[_row_name(r), f"{r['perplexity']:.3f}"] for r in results]
        title = f"{options.model} on {options.data.name} ({tokens:,} tokens)"
        table(title, ["model", "perplexity"], rows, {"model", "perplexity"})


def _row_name(row: dict) -> str:
    return f"ffn {row['ffn_config']}" if row.get("ffn_config") else str(row["bits"] or "dense")


def _perplexities(options: EvalOptions) -> tuple[list[dict], int]:
    """One row per model evaluated: the submodel, or the parent at each width, or the model."""
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoTokenizer

    from matcli.data import read_texts, token_windows
    from matcli.devices import pick_device
    from matcli.evaluate import check_model_folder, load_model, perplexity

    check_model_folder(options.model)  # before transformers reads any file of it
    on = pick_device(options.device)
    tokenizer = AutoTokenizer.from_pretrained(options.model)
    windows = token_windows(
        tokenizer, read_texts(options.data), options.seq_len, options.max_tokens
    )
    model, batch = options.model, options.batch_size
    if options.ffn_config is not None:
        submodel = _submodel(model, options.ffn_config, options.skip_layers)
        ppl = perplexity(submodel, windows, batch, on)
        row = {"bits": None, "ffn_config": options.ffn_config, "skip_layers": options.skip_layers}
        return [{**row, "perplexity": round(ppl, 4)}], windows.numel()
    results = []
    for r in options.bits or [None]:
        ppl = perplexity(load_model(model, r, options.extra_precision), windows, batch, on)
        results.append(
            {"bits": r if r is not None else _own_bits(model), "perplexity": round(ppl, 4)}
        )
    return results, windows.numel()


def _own_bits(model: Path) -> int | None:
    config = json.loads((model / "config.json").read_text())
    info = config.get("matcli") or {}
    return info.get("bits") or info.get("parent_bits")


def _submodel(model: Path, ffn_config: str, skip_layers: str | None):
    from matcli.matformer.inmemory import load_submodel

    return load_submodel(model, ffn_config, skip_layers)


def _plot(results: list[dict], path: Path, title: str) -> None:
    from matcli.errors import MatcliError

    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise MatcliError("--plot needs matplotlib: pip install 'matcli[plot]'") from None
    points = sorted((r["bits"], r["perplexity"]) for r in results if r.get("bits"))
    if not points:
        raise MatcliError(
            "--plot draws perplexity against bits: evaluate a parent with --bits, or a sliced "
            "folder"
        )
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([b for b, _ in points], [p for _, p in points], marker="o")
    ax.set_yscale("log")
    ax.set_xlabel("bits")
    ax.set_ylabel("perplexity")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


COMMAND = Command("eval", HELP, EvalOptions, run)
