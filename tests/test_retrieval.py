"""eval-retrieval: metrics against hand-computed values, the funnel, input checks."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from conftest import run_matcli
from matcli.errors import MatcliError
from matcli.mrl.retrieval import evaluate, label_metrics, overlap_recall, parse_funnel, read_qrels, top_k

CORPUS = np.array([[1, 0], [0.8, 0.6], [0, 1], [-1, 0]], dtype=np.float32)
QUERY = np.array([[1, 0.1]], dtype=np.float32)


def test_hand_computed_metrics():
    ranked = top_k(QUERY, CORPUS / np.linalg.norm(CORPUS, axis=1, keepdims=True), 4)
    assert ranked.tolist() == [[0, 1, 2, 3]]
    qrels = {"q0": {"1": 2.0, "2": 1.0}}
    m = label_metrics(ranked, ["q0"], ["0", "1", "2", "3"], qrels, k=2)
    dcg = 3 / math.log2(3) + 1 / math.log2(4)
    idcg = 3 / math.log2(2) + 1 / math.log2(3)
    assert m["ndcg@10"] == pytest.approx(dcg / idcg)
    assert m["mrr@10"] == pytest.approx(0.5)
    assert m["recall@2"] == pytest.approx(0.5)
    assert overlap_recall(np.array([[0, 2]]), np.array([[0, 1]])) == 0.5


def test_top_k_in_blocks_equals_a_full_sort(monkeypatch):
    from matcli.mrl import retrieval

    rng = np.random.default_rng(0)
    corpus, queries = rng.standard_normal((1000, 8)).astype(np.float32), rng.standard_normal((7, 8)).astype(np.float32)
    monkeypatch.setattr(retrieval, "SCORE_BLOCK_ELEMENTS", 7 * 50)  # 20 blocks
    expected = np.argsort(-(queries @ corpus.T), axis=1, kind="stable")[:, :10]
    assert np.array_equal(top_k(queries, corpus, 10), expected)


def test_full_dimension_matches_itself_and_funnel_costs():
    rng = np.random.default_rng(1)
    corpus = (rng.standard_normal((2000, 32)) * np.linspace(2, 0.2, 32)).astype(np.float32)
    queries = corpus[:50] + 0.05 * rng.standard_normal((50, 32)).astype(np.float32)
    report = evaluate(corpus, queries, [32, 8], 10, funnels=[parse_funnel("8:500,32:10")])
    assert report["dims"][0]["recall@10_vs_full"] == 1.0
    assert 0 < report["dims"][1]["recall@10_vs_full"] < 1
    funnel = report["funnels"][0]
    assert funnel["flops_per_query"] == 2000 * 8 + 500 * 32
    assert funnel["recall@10_vs_full"] > report["dims"][1]["recall@10_vs_full"]  # reranking at full dim helps


def test_parse_funnel_and_qrels(tmp_path):
    assert [(s.dim, s.keep) for s in parse_funnel("16:200,64:50,384:10")] == [(16, 200), (64, 50), (384, 10)]
    with pytest.raises(MatcliError):
        parse_funnel("16:10,64:50")
    with pytest.raises(MatcliError):
        parse_funnel("16-200")
    (tmp_path / "q.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\nq1\td2\t2\n")
    assert read_qrels(tmp_path / "q.tsv") == {"q1": {"d1": 1.0, "d2": 2.0}}
    (tmp_path / "q.json").write_text(json.dumps({"q1": {"d1": 1}}))
    assert read_qrels(tmp_path / "q.json") == {"q1": {"d1": 1.0}}


def test_cli_json_report(tmp_path):
    rng = np.random.default_rng(2)
    corpus = rng.standard_normal((300, 16)).astype(np.float32)
    np.save(tmp_path / "c.npy", corpus)
    np.save(tmp_path / "q.npy", corpus[:20] + 0.01)
    (tmp_path / "qrels.tsv").write_text("\n".join(f"{i}\t{i}\t1" for i in range(20)))
    code, out, err = run_matcli("eval-retrieval", "--corpus", str(tmp_path / "c.npy"), "--queries", str(tmp_path / "q.npy"), "--qrels", str(tmp_path / "qrels.tsv"), "--dims", "16,8", "--funnel", "8:50,16:10", "--json")
    assert code == 0, err
    report = json.loads(out)
    assert [r["dim"] for r in report["dims"]] == [16, 8]
    assert report["dims"][0]["mrr@10"] == 1.0 and report["dims"][0]["labelled_queries"] == 20
    assert report["funnels"][0]["speedup_vs_full"] > 0
    plot = tmp_path / "recall.png"
    code, _, err = run_matcli("eval-retrieval", "--corpus", str(tmp_path / "c.npy"), "--queries", str(tmp_path / "q.npy"), "--dims", "16,8,4", "--plot", str(plot), "--json")
    assert code == 0 and plot.read_bytes()[:4] == b"\x89PNG"
    code, _, err = run_matcli("eval-retrieval", "--corpus", str(tmp_path / "c.npy"), "--queries", str(tmp_path / "q.npy"), "--dims", "17")
    assert code == 2 and "outside 1..16" in err
