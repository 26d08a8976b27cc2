"""`matcli truncate-embeddings`: semantics, formats, PCA, quantization, models, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file, save_file

from conftest import run_matcli
from matcli.mrl import transform


def embeddings(rows: int = 300, dim: int = 64, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((rows, dim)).astype(np.float32)


def truncate_reference(x: np.ndarray, d: int) -> np.ndarray:
    t = x[:, :d].astype(np.float64)
    n = np.linalg.norm(t, axis=1, keepdims=True)
    return np.where(n > 0, t / np.where(n > 0, n, 1), 0)


def ok(*args: str) -> str:
    code, out, err = run_matcli("truncate-embeddings", *args)
    assert code == 0, err
    return out


# --- semantics ------------------------------------------------------------------------------


def test_rows_are_unit_norm_and_zero_rows_stay_zero(tmp_path):
    x = embeddings()
    x[5] = 0
    x[6, :16] = 0  # zero in the kept part only
    np.save(tmp_path / "e.npy", x)
    ok(str(tmp_path / "e.npy"), "-o", str(tmp_path / "o.safetensors"), "--dims", "16", "-q")
    out = load_file(tmp_path / "o.safetensors")["embeddings"]
    norms = np.linalg.norm(out, axis=1)
    assert np.all(np.isfinite(out))
    assert norms[5] == 0 and norms[6] == 0
    keep = np.ones(len(x), bool)
    keep[[5, 6]] = False
    assert np.allclose(norms[keep], 1, atol=1e-6)
    assert np.allclose(out, truncate_reference(x, 16), atol=1e-6)


def test_no_renormalize_keeps_the_prefix(tmp_path):
    x = embeddings()
    np.save(tmp_path / "e.npy", x)
    ok(str(tmp_path / "e.npy"), "-o", str(tmp_path / "o.npy"), "--dims", "8", "--no-renormalize", "-q")
    assert np.array_equal(np.load(tmp_path / "o.npy"), x[:, :8])


def test_layer_norm_happens_on_the_full_vector_first(tmp_path):
    x = embeddings() * 3 + 1
    np.save(tmp_path / "e.npy", x)
    ok(str(tmp_path / "e.npy"), "-o", str(tmp_path / "o.npy"), "--dims", "16", "--pre-norm", "layer_norm", "-q")
    expected = torch.nn.functional.layer_norm(torch.from_numpy(x), (64,)).numpy()
    assert np.allclose(np.load(tmp_path / "o.npy"), truncate_reference(expected, 16), atol=1e-5)


def test_several_dims_in_one_pass_equal_separate_runs(tmp_path):
    x = embeddings()
    ids = np.arange(len(x), dtype=np.int64) * 7
    save_file({"emb": x, "ids": ids}, tmp_path / "e.safetensors")
    ok(str(tmp_path / "e.safetensors"), "--key", "emb", "-o", str(tmp_path / "all"), "--dims", "32,16,8", "--chunk-size", "3000", "-q")
    for d in (32, 16, 8):
        ok(str(tmp_path / "e.safetensors"), "--key", "emb", "-o", str(tmp_path / f"one{d}.safetensors"), "--dims", str(d), "-q")
        assert (tmp_path / "all" / f"d{d}.safetensors").read_bytes() == (tmp_path / f"one{d}.safetensors").read_bytes()
    out = load_file(tmp_path / "all" / "d8.safetensors")
    assert np.array_equal(out["ids"], ids)  # passed through unchanged
    code, _, err = run_matcli("truncate-embeddings", str(tmp_path / "e.safetensors"), "--key", "emb", "-o", str(tmp_path / "o.npy"), "--dims", "8")
    assert code == 0 and "ids cannot be carried into npy output" in err


def test_metadata_records_what_was_done(tmp_path):
    np.save(tmp_path / "e.npy", embeddings())
    ok(str(tmp_path / "e.npy"), "-o", str(tmp_path / "o.safetensors"), "--dims", "16", "-q")
    from safetensors import safe_open

    with safe_open(tmp_path / "o.safetensors", "np") as f:
        meta = f.metadata()
    assert meta["source_dim"] == "64" and meta["dim"] == "16" and meta["renormalized"] == "true"
    assert meta["pre_norm"] == "none" and len(meta["source_sha256"]) == 64


def test_bfloat16_and_float16_inputs_keep_their_dtype(tmp_path):
    x = torch.from_numpy(embeddings()).to(torch.bfloat16)
    from safetensors.torch import load_file as load_torch
    from safetensors.torch import save_file as save_torch

    save_torch({"e": x}, tmp_path / "bf16.safetensors")
    ok(str(tmp_path / "bf16.safetensors"), "-o", str(tmp_path / "o.safetensors"), "--dims", "16", "-q")
    out = load_torch(tmp_path / "o.safetensors")["e"]
    assert out.dtype == torch.bfloat16
    expected = torch.from_numpy(truncate_reference(x.float().numpy(), 16).astype(np.float32)).to(torch.bfloat16)
    assert torch.equal(out, expected)
    np.save(tmp_path / "f16.npy", embeddings().astype(np.float16))
    ok(str(tmp_path / "f16.npy"), "-o", str(tmp_path / "o16.npy"), "--dims", "16", "-q")
    assert np.load(tmp_path / "o16.npy").dtype == np.float16
    ok(str(tmp_path / "f16.npy"), "-o", str(tmp_path / "o32.npy"), "--dims", "16", "--dtype", "float32", "-q")
    assert np.load(tmp_path / "o32.npy").dtype == np.float32


def test_parquet_columns_pass_through(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    x = embeddings(rows=50)
    table = pa.table({"id": [f"doc{i}" for i in range(50)], "embedding": [row.tolist() for row in x]})
    pq.write_table(table, tmp_path / "e.parquet", row_group_size=16)
    ok(str(tmp_path / "e.parquet"), "-o", str(tmp_path / "o.parquet"), "--dims", "16", "--chunk-size", "1000", "-q")
    out = pq.read_table(tmp_path / "o.parquet")
    assert out.column("id").to_pylist() == [f"doc{i}" for i in range(50)]
    got = np.array(out.column("embedding").to_pylist(), dtype=np.float32)
    assert np.allclose(got, truncate_reference(x, 16), atol=1e-6)


# --- PCA, quantization ------------------------------------------------------------------------


def test_pca_recovers_a_known_variance_order(tmp_path):
    rng = np.random.default_rng(1)
    q, _ = np.linalg.qr(rng.standard_normal((16, 16)))
    scales = np.array([10, 8, 6, 5, 4, 3, 2.5, 2, 1.5, 1.2, 1, 0.8, 0.6, 0.4, 0.2, 0.1])
    x = (rng.standard_normal((4000, 16)) * scales) @ q.T  # variance along q[:, i] is scales[i]^2
    fit = transform.PcaFit(16)
    for chunk in np.array_split(x, 7):
        fit.add(chunk)
    rotation, variance = fit.finish(center=True)
    assert np.all(np.diff(variance) <= 0)
    cosines = np.abs(np.sum(rotation.rotation * q, axis=0))
    assert np.all(cosines[:8] > 0.99)


def test_pca_writes_a_rotation_that_queries_reuse(tmp_path):
    corpus, queries = embeddings(seed=1), embeddings(rows=20, seed=2)
    np.save(tmp_path / "corpus.npy", corpus)
    np.save(tmp_path / "queries.npy", queries)
    ok(str(tmp_path / "corpus.npy"), "-o", str(tmp_path / "c.safetensors"), "--dims", "16", "--pca", "-q")
    rotation_file = tmp_path / "c.rotation.safetensors"
    assert rotation_file.exists()
    ok(str(tmp_path / "queries.npy"), "-o", str(tmp_path / "q.safetensors"), "--dims", "16", "--rotation", str(rotation_file), "-q")
    saved = load_file(rotation_file)
    expected = truncate_reference((queries - saved["mean"]) @ saved["rotation"], 16)
    assert np.allclose(load_file(tmp_path / "q.safetensors")["embeddings"], expected, atol=1e-5)
    # At full dimension an orthogonal rotation keeps every dot product of centred vectors.
    assert np.allclose(saved["rotation"].T @ saved["rotation"], np.eye(64), atol=1e-5)


def test_int8_clips_with_ranges_from_the_truncated_vectors(tmp_path):
    x = embeddings()
    np.save(tmp_path / "e.npy", x)
    ok(str(tmp_path / "e.npy"), "-o", str(tmp_path / "o.safetensors"), "--dims", "16", "--quantize", "int8", "-q")
    out = load_file(tmp_path / "o.safetensors")
    ranges, codes = out["int8_ranges"], out["embeddings"]
    t = truncate_reference(x, 16)
    assert np.allclose(ranges[0], t.min(0), atol=1e-6) and np.allclose(ranges[1], t.max(0), atol=1e-6)
    assert codes.dtype == np.int8 and codes.min() == -128 and codes.max() == 127
    step = (ranges[1] - ranges[0]) / 255
    assert np.all(np.abs((codes.astype(np.float64) + 128) * step + ranges[0] - t) <= step * 0.5 + 1e-6)
    outside = transform.Int8Ranges(2)
    outside.add(np.array([[0.0, 0.0], [1.0, 1.0]], np.float32))
    assert outside.quantize(np.array([[5.0, -5.0]], np.float32)).tolist() == [[127, -128]]  # saturates


def test_binary_packs_signs(tmp_path):
    x = embeddings()
    np.save(tmp_path / "e.npy", x)
    ok(str(tmp_path / "e.npy"), "-o", str(tmp_path / "o.npy"), "--dims", "16", "--quantize", "binary", "-q")
    packed = np.load(tmp_path / "o.npy")
    assert packed.shape == (300, 2) and packed.dtype == np.uint8
    assert np.array_equal(np.unpackbits(packed, axis=1).astype(bool), x[:, :16] > 0)


# --- models -------------------------------------------------------------------------------------


def encode(model: Path, texts: list[str]) -> np.ndarray:
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(model), device="cpu").encode(texts, convert_to_numpy=True)


TEXTS = ["a man plays guitar", "someone plays an instrument", "the stock market fell", "cats sleep a lot"]


def test_truncated_model_equals_truncated_outputs(sentence_model, tmp_path):
    ok(str(sentence_model), "-o", str(tmp_path / "m"), "--dims", "16,8", "-q")
    full = encode(sentence_model, TEXTS)
    for d in (16, 8):
        assert np.allclose(encode(tmp_path / "m" / f"d{d}", TEXTS), truncate_reference(full, d), atol=1e-6)


def test_truncated_model_with_rotation_equals_rotated_outputs(sentence_model, tmp_path):
    corpus = encode(sentence_model, [f"document number {i} about {w}" for i, w in enumerate(["cats", "dogs", "stocks", "music"] * 20)])
    np.save(tmp_path / "corpus.npy", corpus)
    ok(str(tmp_path / "corpus.npy"), "-o", str(tmp_path / "c.safetensors"), "--dims", "8", "--pca", "-q")
    rotation = load_file(tmp_path / "c.rotation.safetensors")
    ok(str(sentence_model), "-o", str(tmp_path / "m"), "--dims", "8", "--rotation", str(tmp_path / "c.rotation.safetensors"), "-q")
    expected = truncate_reference((encode(sentence_model, TEXTS) - rotation["mean"]) @ rotation["rotation"], 8)
    assert np.allclose(encode(tmp_path / "m", TEXTS), expected, atol=1e-5)


def test_model_pre_norm(sentence_model, tmp_path):
    ok(str(sentence_model), "-o", str(tmp_path / "m"), "--dims", "16", "--pre-norm", "layer_norm", "-q")
    full = torch.nn.functional.layer_norm(torch.from_numpy(encode(sentence_model, TEXTS)), (48,)).numpy()
    assert np.allclose(encode(tmp_path / "m", TEXTS), truncate_reference(full, 16), atol=1e-5)
    manifest = json.loads((tmp_path / "m" / "matcli_manifest.json").read_text())
    assert manifest["dim"] == 16 and manifest["pre_norm"] == "layer_norm"


# --- bad input ---------------------------------------------------------------------------------


@pytest.fixture
def npy(tmp_path) -> Path:
    np.save(tmp_path / "e.npy", embeddings())
    return tmp_path / "e.npy"


def refused(args: list[str], message: str, out: Path) -> None:
    code, stdout, err = run_matcli("truncate-embeddings", *args)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and message in lines[0], err
    assert not out.exists() and not list(out.parent.glob(f".{out.name}.matcli-*"))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--dims", "0"], "must be at least 1"),
        (["--dims", "65"], "larger than the input's 64 dimensions"),
        (["--dims", "12", "--quantize", "binary"], "multiple of 8"),
    ],
)
def test_bad_dims(npy, tmp_path, args, message):
    refused([str(npy), "-o", str(tmp_path / "o.safetensors"), *args], message, tmp_path / "o.safetensors")


@pytest.mark.parametrize("shape", [(10,), (2, 3, 4)])
def test_not_two_dimensional(tmp_path, shape):
    np.save(tmp_path / "bad.npy", np.zeros(shape, np.float32))
    refused([str(tmp_path / "bad.npy"), "-o", str(tmp_path / "o.npy"), "--dims", "2"], "must be a 2-D", tmp_path / "o.npy")


def test_nan_rows_are_refused_with_their_numbers_or_skipped(tmp_path):
    x = embeddings()
    x[3, 2] = np.nan
    x[250, 0] = np.inf
    ids = np.arange(300)
    save_file({"e": x, "ids": ids}, tmp_path / "e.safetensors")
    refused([str(tmp_path / "e.safetensors"), "--key", "e", "-o", str(tmp_path / "o.safetensors"), "--dims", "8", "--chunk-size", "2000"], "rows 3", tmp_path / "o.safetensors")
    ok(str(tmp_path / "e.safetensors"), "--key", "e", "-o", str(tmp_path / "o.safetensors"), "--dims", "8", "--skip-bad-rows", "-q")
    out = load_file(tmp_path / "o.safetensors")
    keep = np.setdiff1d(ids, [3, 250])
    assert np.array_equal(out["ids"], keep)
    assert np.allclose(out["e"], truncate_reference(x[keep], 8), atol=1e-6)


def test_output_over_the_input_is_refused(npy):
    before = npy.read_bytes()
    code, _, err = run_matcli("truncate-embeddings", str(npy), "-o", str(npy), "--dims", "8", "--force")
    assert code == 2 and "is the input file" in err and npy.read_bytes() == before


def test_missing_key_unknown_type_and_truncated_npy(tmp_path, npy):
    save_file({"a": embeddings(), "b": embeddings()}, tmp_path / "two.safetensors")
    refused([str(tmp_path / "two.safetensors"), "-o", str(tmp_path / "o.safetensors"), "--dims", "8"], "--key", tmp_path / "o.safetensors")
    refused([str(tmp_path / "two.safetensors"), "--key", "c", "-o", str(tmp_path / "o.safetensors"), "--dims", "8"], "no tensor 'c'", tmp_path / "o.safetensors")
    (tmp_path / "e.csv").write_text("1,2\n")
    refused([str(tmp_path / "e.csv"), "-o", str(tmp_path / "o.npy"), "--dims", "1"], "unknown file type", tmp_path / "o.npy")
    cut = tmp_path / "cut.npy"
    cut.write_bytes(npy.read_bytes()[:-100])
    refused([str(cut), "-o", str(tmp_path / "o.npy"), "--dims", "8"], "truncated", tmp_path / "o.npy")
