"""eval-retrieval: metrics against hand-computed values, the funnel, input checks."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import run_matcli

from matcli.errors import MatcliError
from matcli.mrl.retrieval import (
    evaluate,
    label_metrics,
    overlap_recall,
    parse_funnel,
    read_qrels,
    top_k,
)

CORPUS = np.array([[1, 0], [0.8, 0.6], [0, 1], [-1, 0]], dtype=np.float32)
QUERY = np.array([[1, 0.1]], dtype=np.float32)


def test_hand_computed_metrics():
    ranked = top_k(QUERY, CORPUS / np.linalg.norm(CORPUS, axis=1, keepdims=True), 4)
    assert ranked.tolist() == [[0, 1, 2, 3]]
    qrels = {"q0": {"1": 2.0, "2": 1.0}}
    m = label_metrics(ranked, ["q0"], ["0", "1", "2", "3"], qrels, k=2)
    # Linear gain (gain = label), as pytrec_eval, BEIR and MTEB: the exponential 2^g - 1 gives
    # 0.659.
    dcg = 2 / math.log2(3) + 1 / math.log2(4)
    idcg = 2 / math.log2(2) + 1 / math.log2(3)
    assert m["ndcg@10"] == pytest.approx(dcg / idcg)
    assert m["mrr@10"] == pytest.approx(0.5)
    assert m["recall@2"] == pytest.approx(0.5)
    assert overlap_recall(np.array([[0, 2]]), np.array([[0, 1]])) == 0.5


def test_top_k_in_blocks_equals_a_full_sort(monkeypatch):
    from matcli.mrl import retrieval

    rng = np.random.default_rng(0)
    corpus, queries = (
        rng.standard_normal((1000, 8)).astype(np.float32),
        rng.standard_normal((7, 8)).astype(np.float32),
    )
    monkeypatch.setattr(retrieval, "SCORE_BLOCK_ELEMENTS", 7 * 50)  # 20 blocks
    expected = np.argsort(-(queries @ corpus.T), axis=1, kind="stable")[:, :10]
    assert np.array_equal(top_k(queries, corpus, 10), expected)


def brute_force_top(
    queries: np.ndarray, corpus: np.ndarray, d: int, k: int, among=None
) -> np.ndarray:
    """Cosine top-k on the first d values by a full numpy sort (optionally among candidates)."""
    q = queries[:, :d] / np.linalg.norm(queries[:, :d], axis=1, keepdims=True)
    c = corpus[:, :d] / np.linalg.norm(corpus[:, :d], axis=1, keepdims=True)
    scores = q @ c.T
    if among is None:
        return np.argsort(-scores, axis=1, kind="stable")[:, :k]
    picked = np.take_along_axis(scores, among, axis=1)
    return np.take_along_axis(among, np.argsort(-picked, axis=1, kind="stable")[:, :k], axis=1)


def overlap(found: np.ndarray, exact: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(e)) / exact.shape[1] for f, e in zip(found, exact)]))


def test_recall_and_funnel_match_a_numpy_reference():
    rng = np.random.default_rng(1)
    corpus = (rng.standard_normal((2000, 32)) * np.linspace(2, 0.2, 32)).astype(np.float32)
    queries = corpus[:50] + 0.05 * rng.standard_normal((50, 32)).astype(np.float32)
    report = evaluate(corpus, queries, [32, 8], 10, funnels=[parse_funnel("8:500,32:10")])
    exact = brute_force_top(queries, corpus, 32, 10)
    low = overlap(brute_force_top(queries, corpus, 8, 10), exact)
    assert 0 < low < 1
    assert report["dims"][1]["recall@10_vs_full"] == pytest.approx(low)
    shortlist = brute_force_top(queries, corpus, 8, 500)
    funnel = report["funnels"][0]
    assert funnel["recall@10_vs_full"] == pytest.approx(
        overlap(brute_force_top(queries, corpus, 32, 10, among=shortlist), exact)
    )
    assert funnel["recall@10_vs_full"] > low  # reranking at full dim helps
    assert funnel["flops_per_query"] == 2000 * 8 + 500 * 32


def test_timed_searches_exclude_building_the_prefixes(monkeypatch):
    """Normalizing is the index build: neither the baseline's nor the funnel's time may
    include it."""
    from matcli.mrl import retrieval

    real = retrieval.normalized

    def slow_normalized(x, dim):
        time.sleep(0.1)
        return real(x, dim)

    monkeypatch.setattr(retrieval, "normalized", slow_normalized)
    rng = np.random.default_rng(3)
    corpus = rng.standard_normal((200, 8)).astype(np.float32)
    report = evaluate(corpus, corpus[:1], [8], 10, funnels=[parse_funnel("4:50,8:10")])
    funnel = report["funnels"][0]
    assert funnel["full_ms_per_query"] < 50 and funnel["ms_per_query"] < 50


def test_parse_funnel_and_qrels(tmp_path):
    assert [(s.dim, s.keep) for s in parse_funnel("16:200,64:50,384:10")] == [
        (16, 200),
        (64, 50),
        (384, 10),
    ]
    with pytest.raises(MatcliError):
        parse_funnel("16:10,64:50")
    with pytest.raises(MatcliError):
        parse_funnel("16-200")
    (tmp_path / "q.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\nq1\td2\t2\n")
    assert read_qrels(tmp_path / "q.tsv") == {"q1": {"d1": 1.0, "d2": 2.0}}
    (tmp_path / "q.json").write_text(json.dumps({"q1": {"d1": 1}}))
    assert read_qrels(tmp_path / "q.json") == {"q1": {"d1": 1.0}}


def save_corpus_and_queries(tmp_path: Path) -> None:
    """c.npy (300 x 16), q.npy (its first 20 rows, nudged) and qrels.tsv (query i -> doc i)."""
    rng = np.random.default_rng(2)
    corpus = rng.standard_normal((300, 16)).astype(np.float32)
    np.save(tmp_path / "c.npy", corpus)
    np.save(tmp_path / "q.npy", corpus[:20] + 0.01)
    (tmp_path / "qrels.tsv").write_text("\n".join(f"{i}\t{i}\t1" for i in range(20)))


def eval_retrieval(tmp_path: Path, *args: str) -> tuple[int, str, str]:
    """`matcli eval-retrieval` on the files of `save_corpus_and_queries`."""
    corpus, queries = str(tmp_path / "c.npy"), str(tmp_path / "q.npy")
    return run_matcli("eval-retrieval", "--corpus", corpus, "--queries", queries, *args)


def test_cli_json_report(tmp_path):
    save_corpus_and_queries(tmp_path)
    qrels = str(tmp_path / "qrels.tsv")
    code, out, err = eval_retrieval(
        tmp_path, "--qrels", qrels, "--dims", "16,8", "--funnel", "8:50,16:10", "--json"
    )
    assert code == 0, err
    report = json.loads(out)
    assert [r["dim"] for r in report["dims"]] == [16, 8]
    assert report["dims"][0]["mrr@10"] == 1.0 and report["dims"][0]["labelled_queries"] == 20
    funnel = report["funnels"][0]
    assert funnel["flops_per_query"] == 300 * 8 + 50 * 16  # N d_s + K d_r
    assert funnel["flops_vs_full"] == pytest.approx(300 * 16 / (300 * 8 + 50 * 16))


def test_cli_plot_and_dims_outside_the_input(tmp_path):
    save_corpus_and_queries(tmp_path)
    plot = tmp_path / "recall.png"
    code, _, err = eval_retrieval(tmp_path, "--dims", "16,8,4", "--plot", str(plot), "--json")
    assert code == 0 and plot.read_bytes()[:4] == b"\x89PNG"
    code, _, err = eval_retrieval(tmp_path, "--dims", "17")
    assert code == 2 and "outside 1..16" in err


def refused(args: list[str], message: str) -> None:
    code, _, err = run_matcli("eval-retrieval", *args)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and message in lines[0], err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--k", "0"], "--k 0 must be between 1 and the corpus's 300 documents"),
        (["--k", "-3"], "--k -3 must be between 1"),
        (["--k", "301"], "--k 301 must be between 1"),
        (["--funnel", "8:400,16:10"], "keep at most 300"),
        (["--funnel", "8:0,16:10"], "is not DIM:KEEP"),
        (["--funnel", "20:50,16:10"], "--funnel dimension 20 is outside 1..16"),
    ],
)
def test_k_and_funnel_bounds(tmp_path, args, message):
    corpus = np.random.default_rng(4).standard_normal((300, 16)).astype(np.float32)
    np.save(tmp_path / "c.npy", corpus)
    refused(
        [
            "--corpus",
            str(tmp_path / "c.npy"),
            "--queries",
            str(tmp_path / "c.npy"),
            "--dims",
            "16,8",
            *args,
        ],
        message,
    )


def test_plot_into_a_missing_folder_is_refused(tmp_path):
    np.save(
        tmp_path / "c.npy", np.random.default_rng(5).standard_normal((50, 8)).astype(np.float32)
    )
    corpus = ["--corpus", str(tmp_path / "c.npy"), "--queries", str(tmp_path / "c.npy")]
    refused([*corpus, "--plot", str(tmp_path / "nowhere" / "r.png")], "does not exist")
    refused([*corpus, "--plot", str(tmp_path / "r.txt")], "end the file name in .png")
    assert not (tmp_path / "nowhere").exists() and not (tmp_path / "r.txt").exists()
