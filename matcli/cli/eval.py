"""`matcli eval`: perplexity of models, parents at several widths, or sliced folders."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.table import Table

from matcli.cli import common

HELP = "Held-out perplexity of a dense model, a sliced folder, or a parent sliced in memory at each --bits (nothing written)."


def eval_command(
    model: Path = typer.Argument(..., help="Model folder: dense, parent or slice."),
    data: Path = typer.Option(
        ..., "--data", help="Evaluation text: .txt, or .jsonl with a text field."
    ),
    bits: str | None = typer.Option(
        None, "--bits", help="Parent only: widths to slice in memory, e.g. 8,6,4,3,2."
    ),
    extra_precision: bool = typer.Option(
        False, "--extra-precision", help="Slice without the clamp."
    ),
    ffn_config: str | None = typer.Option(
        None,
        "--ffn-config",
        help="Evaluate a MatFormer submodel cut in memory (same forms as extract).",
    ),
    skip_layers: str | None = typer.Option(
        None, "--skip-layers", help="With --ffn-config: original layers to drop."
    ),
    seq_len: int = typer.Option(512, "--seq-len", help="Tokens per window."),
    max_tokens: int = typer.Option(
        32768, "--max-tokens", help="Evaluate at most this many tokens."
    ),
    batch_size: int = typer.Option(4, "--batch-size"),
    device: str = typer.Option(
        "auto", "--device", help="auto | cpu | cuda | cuda:N (auto: the first GPU if there is one)."
    ),
    plot: Path | None = typer.Option(
        None, "--plot", help="Write a PNG of perplexity against bits (needs matplotlib)."
    ),
    json_output: bool = common.JSON_OUTPUT,
) -> None:
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoTokenizer

    from matcli.data import read_texts, token_windows
    from matcli.errors import MatcliError
    from matcli.evaluate import load_model, perplexity
    from matcli.quant.training import pick_device

    on = pick_device(device)
    widths = common.parse_int_list(bits, "--bits") if bits else [None]
    windows = token_windows(
        AutoTokenizer.from_pretrained(model), read_texts(data), seq_len, max_tokens
    )
    results = []
    if ffn_config is not None:
        if bits:
            raise MatcliError(
                "--ffn-config and --bits cannot be combined: extract first, then quantize and slice"
            )
        ppl = perplexity(_submodel(model, ffn_config, skip_layers), windows, batch_size, on)
        results.append(
            {
                "bits": None,
                "ffn_config": ffn_config,
                "skip_layers": skip_layers,
                "perplexity": round(ppl, 4),
            }
        )
    for r in widths if ffn_config is None else []:
        ppl = perplexity(load_model(model, r, extra_precision), windows, batch_size, on)
        results.append(
            {"bits": r if r is not None else _own_bits(model), "perplexity": round(ppl, 4)}
        )
    if plot is not None:
        _plot(results, plot, str(model))
    if json_output:
        print(
            json.dumps(
                {
                    "model": str(model),
                    "data": str(data),
                    "tokens": windows.numel(),
                    "results": results,
                },
                indent=2,
            )
        )
        return
    table = Table(
        title=f"{model} on {data.name} ({windows.numel():,} tokens)", title_justify="left"
    )
    table.add_column("model", justify="right")
    table.add_column("perplexity", justify="right")
    for row in results:
        what = f"ffn {row['ffn_config']}" if row.get("ffn_config") else str(row["bits"] or "dense")
        table.add_row(what, f"{row['perplexity']:.3f}")
    common.out.print(table)


def _own_bits(model: Path) -> int | None:
    config = json.loads((model / "config.json").read_text())
    info = config.get("matcli") or {}
    return info.get("bits") or info.get("parent_bits")


def _submodel(model: Path, ffn_config: str, skip_layers: str | None):
    from matcli.checkpoint.reader import ModelFolder
    from matcli.matformer.extract import model_widths
    from matcli.matformer.ffn_config import choose_widths
    from matcli.matformer.inmemory import submodel

    with ModelFolder(model) as folder:
        _, _, full = model_widths(folder)
    return submodel(model, choose_widths(ffn_config, skip_layers, full))


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
            "--plot draws perplexity against bits: evaluate a parent with --bits, or a sliced folder"
        )
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([b for b, _ in points], [p for _, p in points], marker="o")
    ax.set_yscale("log")
    ax.set_xlabel("bits")
    ax.set_ylabel("perplexity")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
