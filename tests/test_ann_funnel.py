"""eval-retrieval --funnel ... --index hnsw|ivf: the first stage searches an approximate faiss
index on the shortlist prefix; its results against the exact funnel, and bad input."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import assert_refused, run_matcli

from matcli.mrl.ann import IndexSpec, default_nlist
from matcli.mrl.retrieval import evaluate, parse_funnel, rerank

FUNNEL = "16:100,64:10"
HNSW = IndexSpec("hnsw", 16, 64, 128, None, 8)
IVF = IndexSpec("ivf", 16, 64, 128, None, 8)


def mrl_like(rows: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Topic clusters whose leading dimensions carry the most variance (std 1/sqrt(i+1)), and
    queries that are noisy copies of corpus rows."""
    rng = np.random.default_rng(seed)
    scale = (1 + np.arange(64)) ** -0.5
    topics = rng.standard_normal((rows // 50, 64)) * scale
    corpus = (
        topics[rng.integers(0, len(topics), rows)] + 0.5 * rng.standard_normal((rows, 64)) * scale
    )
    queries = corpus[rng.choice(rows, 40, replace=False)]
    queries = queries + 0.3 * rng.standard_normal(queries.shape) * scale
    return corpus.astype(np.float32), queries.astype(np.float32)


def funnels(spec: IndexSpec | None) -> dict:
    corpus, queries = mrl_like(3000)
    return evaluate(corpus, queries, [64], 10, funnels=[parse_funnel(FUNNEL)], ann=spec)


@pytest.mark.parametrize("spec", [HNSW, IVF], ids=["hnsw", "ivf"])
def test_the_indexed_funnel_finds_what_the_exact_funnel_finds(spec):
    pytest.importorskip("faiss")
    exact, indexed = funnels(None)["funnels"][0], funnels(spec)["funnels"][0]
    assert exact["recall@10_vs_full"] > 0.95
    assert indexed["recall@10_vs_full"] >= exact["recall@10_vs_full"] - 0.02
    assert indexed["index"] == spec.kind and indexed["build_seconds"] > 0
    assert indexed["speedup_vs_full"] > 0 and "flops_per_query" not in indexed


def test_an_exhaustive_ivf_index_gives_the_exact_funnel_itself():
    """Probing every list is exact search: the result is the exact funnel's, query by query."""
    pytest.importorskip("faiss")
    from matcli.mrl import retrieval

    corpus, queries = mrl_like(3000)
    index = {
        d: (retrieval.normalized(queries, d), retrieval.normalized(corpus, d)) for d in (16, 64)
    }
    stages = parse_funnel(FUNNEL)
    from matcli.mrl.ann import build_shortlist

    nlist = default_nlist(len(corpus))
    shortlist, built = build_shortlist(IndexSpec("ivf", 16, 64, 128, nlist, nlist), index[16][1])
    assert built["index_params"] == {"nlist": nlist, "nprobe": nlist}
    assert np.array_equal(
        retrieval.run_funnel(index, stages, shortlist), retrieval.run_funnel(index, stages)
    )


def test_rerank_keeps_missing_candidates_last():
    """An index that finds fewer than asked pads with -1: those score -inf and stay -1."""
    corpus = np.eye(4, dtype=np.float32)
    queries = np.array([[0.1, 0.9, 0.2, 0]], dtype=np.float32)
    found = rerank(queries, corpus, np.array([[0, -1, 1, 2]]), 4)
    assert found.tolist() == [[1, 2, 0, -1]]


def save_set(tmp_path: Path) -> list[str]:
    corpus, queries = mrl_like(600, seed=1)
    np.save(tmp_path / "c.npy", corpus)
    np.save(tmp_path / "q.npy", queries)
    return [
        "eval-retrieval",
        "--corpus",
        str(tmp_path / "c.npy"),
        "--queries",
        str(tmp_path / "q.npy"),
    ]


@pytest.mark.parametrize(
    ("flags", "params"),
    [
        (["--index", "hnsw", "--hnsw-m", "8"], {"M": 8, "efConstruction": 64, "efSearch": 256}),
        (["--index", "ivf"], {"nlist": default_nlist(600), "nprobe": default_nlist(600)}),
        (["--index", "ivf", "--ivf-nlist", "40", "--ivf-nprobe", "4"], {"nlist": 40, "nprobe": 4}),
    ],
)
def test_cli_reports_the_index_and_its_parameters(tmp_path, flags, params):
    """Defaults come from the options; IVF's nprobe (32) is capped at nlist on a small corpus."""
    pytest.importorskip("faiss")
    code, out, err = run_matcli(*save_set(tmp_path), "--funnel", "16:100,64:10", *flags, "--json")
    assert code == 0, err
    funnel = json.loads(out)["funnels"][0]
    assert funnel["index_params"] == params and funnel["recall@10_vs_full"] > 0.8
    code, out, err = run_matcli(*save_set(tmp_path), "--funnel", "16:100,64:10", *flags)
    assert code == 0 and f"{flags[1]} index (" in out, err


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--index", "hnsw"], "--index builds the first stage of a funnel: add --funnel"),
        (["--funnel", FUNNEL, "--index", "annoy"], "Input should be 'hnsw' or 'ivf'"),
        (["--funnel", FUNNEL, "--index", "ivf", "--hnsw-m", "8"], "--hnsw-m apply to --index hnsw"),
        (["--funnel", FUNNEL, "--ivf-nprobe", "8"], "--ivf-nprobe apply to --index ivf"),
        (["--funnel", FUNNEL, "--index", "ivf", "--ivf-nlist", "601"], "--ivf-nlist 601 is more"),
        (["--funnel", FUNNEL, "--index", "hnsw", "--hnsw-m", "1"], "hnsw"),
    ],
)
def test_bad_index_options_are_refused(tmp_path, flags, message):
    pytest.importorskip("faiss")
    args = save_set(tmp_path)
    plot = tmp_path / "plots" / "r.png"
    plot.parent.mkdir()
    inputs = [tmp_path / "c.npy", tmp_path / "q.npy"]
    assert_refused([*args, *flags, "--plot", str(plot)], plot.parent, message, inputs=inputs)


def test_a_missing_index_library_is_one_line_saying_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "faiss", None)  # `import faiss` raises ImportError
    args = save_set(tmp_path)
    plot = tmp_path / "plots" / "r.png"
    plot.parent.mkdir()
    assert_refused(
        [*args, "--funnel", FUNNEL, "--index", "hnsw", "--plot", str(plot)],
        plot.parent,
        "pip install 'matcli[ann]'",
        inputs=[tmp_path / "c.npy", tmp_path / "q.npy"],
    )
