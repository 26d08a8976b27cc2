"""`matcli eval-retrieval`: quality and cost of truncated embeddings, and the MRL funnel."""

from __future__ import annotations

import json
from pathlib import Path

from rich.table import Table

from matcli.cli.generate import Command
from matcli.cli.render import out
from matcli.errors import MatcliError
from matcli.options import EvalRetrievalOptions
from matcli.runner import Invocation

HELP = (
    "Retrieval quality of truncated embeddings at each --dims (recall@k against exact "
    "full-dimension search; nDCG@10, MRR@10 and recall@k with --qrels) and the MRL funnel's cost "
    "and speed-up."
)


def run(options: EvalRetrievalOptions, invocation: Invocation) -> None:
    from matcli.mrl.ann import IndexSpec, require_faiss
    from matcli.mrl.retrieval import evaluate, load_matrix, parse_funnel, read_qrels

    if options.plot:
        _check_plot(options.plot)  # before the searches, which can take long
    if options.index:
        require_faiss()  # before the embeddings are read
    corpus_matrix, doc_ids = load_matrix(options.corpus, options.key)
    query_matrix, query_ids = load_matrix(options.queries, options.key)
    report = evaluate(
        corpus_matrix,
        query_matrix,
        options.dims or _halvings(corpus_matrix.shape[1]),
        options.k,
        read_qrels(options.qrels) if options.qrels else None,
        (query_ids, doc_ids),
        [parse_funnel(f) for f in options.funnel],
        IndexSpec.from_options(options) if options.index else None,
    )
    if options.plot:
        _plot(report, options.plot)
    if options.json_output:
        print(json.dumps(report, indent=2))
    elif not options.quiet:
        render(report)


def _halvings(full: int) -> list[int]:
    dims = [full]
    while dims[-1] // 2 >= 16:
        dims.append(dims[-1] // 2)
    return dims


def render(report: dict) -> None:
    rows = report["dims"]
    title = (
        f"{report['queries']} queries, {report['corpus']:,} documents, {report['full_dim']} dims"
    )
    table = Table(title=title, title_justify="left")
    columns = [c for c in rows[0] if c != "labelled_queries"]
    for c in columns:
        table.add_column(c, justify="right")
    for row in rows:
        table.add_row(*(str(row[c]) if c == "dim" else f"{row[c]:.4f}" for c in columns))
    out.print(table)
    for f in report["funnels"]:
        out.print(_funnel_line(f))


def _funnel_line(f: dict) -> str:
    recall = next(
        v for key, v in f.items() if key.startswith("recall@") and key.endswith("_vs_full")
    )
    if "index" in f:
        params = ", ".join(f"{k}={v}" for k, v in f["index_params"].items())
        cost = f"{f['index']} index ({params}) built in {f['build_seconds']:.1f} s"
    else:
        cost = f"{f['flops_vs_full']:.1f}x fewer FLOPs"
    return (
        f"funnel {f['funnel']}: recall vs full {recall:.4f}, {cost}, "
        f"{f['ms_per_query']:.3f} ms/query vs {f['full_ms_per_query']:.3f} ms full "
        f"({f['speedup_vs_full']:.1f}x faster)"
    )


PLOT_SUFFIXES = (".png", ".svg", ".pdf")


def _check_plot(path: Path) -> None:
    if path.suffix.lower() not in PLOT_SUFFIXES:
        raise MatcliError(
            f"--plot {path}: end the file name in {', '.join(PLOT_SUFFIXES)} so the image format "
            "is known"
        )
    if not path.absolute().parent.is_dir():
        raise MatcliError(
            f"--plot {path}: folder {path.absolute().parent} does not exist; create it or choose "
            "another path"
        )
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise MatcliError("--plot needs matplotlib: pip install 'matcli[plot]'") from None


def _plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["dims"]
    fig, ax = plt.subplots(figsize=(6, 4))
    for metric in [c for c in rows[0] if c not in ("dim", "labelled_queries")]:
        ax.plot([r["dim"] for r in rows], [r[metric] for r in rows], marker="o", label=metric)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("dimensions")
    ax.legend()
    fig.tight_layout()
    from matcli.checkpoint.atomic import staged_file

    with staged_file(
        path, force=True
    ) as staging:  # an existing plot is replaced, never half-written
        fig.savefig(staging, dpi=120, format=path.suffix[1:].lower())


COMMAND = Command("eval-retrieval", HELP, EvalRetrievalOptions, run)
