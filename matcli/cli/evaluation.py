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
    if options.draft is not None:
        return _draft(options)
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
    from matcli.evaluate import check_model_folder, load_model, load_view, own_bits, perplexity

    check_model_folder(options.model)  # before transformers reads any file of it
    on = pick_device(options.device)
    tokenizer = AutoTokenizer.from_pretrained(options.model)
    windows = token_windows(
        tokenizer, read_texts(options.data), options.seq_len, options.max_tokens
    )
    model, batch = options.model, options.batch_size
    if options.ffn_config is not None:
        submodel = load_view(model, ffn_config=options.ffn_config, skip_layers=options.skip_layers)
        ppl = perplexity(submodel, windows, batch, on)
        row = {"bits": None, "ffn_config": options.ffn_config, "skip_layers": options.skip_layers}
        return [{**row, "perplexity": round(ppl, 4)}], windows.numel()
    results = []
    for r in options.bits or [None]:
        ppl = perplexity(load_model(model, r, options.extra_precision), windows, batch, on)
        results.append(
            {"bits": r if r is not None else own_bits(model), "perplexity": round(ppl, 4)}
        )
    return results, windows.numel()


def _draft(options: EvalOptions) -> None:
    """`eval --draft`: the draft's acceptance, speed-up and consistency against the target."""
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from matcli.evaluate import check_model_folder
    from matcli.speculative import measure_draft

    check_model_folder(options.model)  # before transformers reads any file of it
    report = measure_draft(options)
    if options.json_output:
        print(json.dumps(report, indent=2))
    elif not options.quiet:
        _draft_tables(report)


def _draft_tables(report: dict) -> None:
    rows = [
        [name, r["model"], r["bits"] or "dense", r["ffn_config"] or "full", f"{r['parameters']:,}"]
        + [f"{r['perplexity']:.3f}"]
        for name, r in zip(("target", "draft"), report["results"])
    ]
    agreement, spec, memory = report["consistency"], report["speculative"], report["memory"]
    title = (
        f"consistency {agreement['consistency']:.2%} over {agreement['positions']:,} positions; "
        f"draft adds {memory['draft_bytes'] - memory['shared_bytes']:,} bytes "
        f"({memory['shared_bytes']:,} shared with the target's {memory['target_bytes']:,})"
    )
    columns = ["role", "folder", "bits", "ffn", "parameters", "perplexity"]
    table(title, columns, rows, {"parameters", "perplexity"})
    keys = ["acceptance_rate", "accepted_per_step", "tokens_per_s_target"]
    keys += ["tokens_per_s_assisted", "speedup", "identical_outputs"]
    title = (
        f"assisted generation: {spec['prompts']} prompts x {spec['prompt_tokens']} tokens, "
        f"up to {spec['new_tokens']} new tokens each: {spec['accepted']}/{spec['proposed']} "
        f"draft tokens accepted, {spec['generated_tokens']} tokens in {spec['target_steps']} "
        "target steps"
    )
    table(title, [k.replace("_", " ") for k in keys], [[spec[k] for k in keys]])


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
