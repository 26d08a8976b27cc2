"""`matcli truncate-embeddings`: semantics, formats, PCA, quantization, models, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_matcli
from safetensors.numpy import load_file, save_file

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
    ok(
        str(tmp_path / "e.npy"),
        "-o",
        str(tmp_path / "o.npy"),
        "--dims",
        "8",
        "--no-renormalize",
        "-q",
    )
    assert np.array_equal(np.load(tmp_path / "o.npy"), x[:, :8])


def test_layer_norm_happens_on_the_full_vector_first(tmp_path):
    x = embeddings() * 3 + 1
    np.save(tmp_path / "e.npy", x)
    ok(
        str(tmp_path / "e.npy"),
        "-o",
        str(tmp_path / "o.npy"),
        "--dims",
        "16",
        "--pre-norm",
        "layer_norm",
        "-q",
    )
    expected = torch.nn.functional.layer_norm(torch.from_numpy(x), (64,)).numpy()
    assert np.allclose(np.load(tmp_path / "o.npy"), truncate_reference(expected, 16), atol=1e-5)


def test_several_dims_in_one_pass_equal_separate_runs(tmp_path):
    x = embeddings()
    ids = np.arange(len(x), dtype=np.int64) * 7
    save_file({"emb": x, "ids": ids}, tmp_path / "e.safetensors")
    ok(
        str(tmp_path / "e.safetensors"),
        "--key",
        "emb",
        "-o",
        str(tmp_path / "all"),
        "--dims",
        "32,16,8",
        "--chunk-size",
        "3000",
        "-q",
    )
    for d in (32, 16, 8):
        ok(
            str(tmp_path / "e.safetensors"),
            "--key",
            "emb",
            "-o",
            str(tmp_path / f"one{d}.safetensors"),
            "--dims",
            str(d),
            "-q",
        )
        assert (tmp_path / "all" / f"d{d}.safetensors").read_bytes() == (
            tmp_path / f"one{d}.safetensors"
        ).read_bytes()
    out = load_file(tmp_path / "all" / "d8.safetensors")
    assert np.array_equal(out["ids"], ids)  # passed through unchanged
    code, _, err = run_matcli(
        "truncate-embeddings",
        str(tmp_path / "e.safetensors"),
        "--key",
        "emb",
        "-o",
        str(tmp_path / "o.npy"),
        "--dims",
        "8",
    )
    assert code == 0 and "ids cannot be carried into npy output" in err


def test_metadata_records_what_was_done(tmp_path):
    np.save(tmp_path / "e.npy", embeddings())
    ok(str(tmp_path / "e.npy"), "-o", str(tmp_path / "o.safetensors"), "--dims", "16", "-q")
    from safetensors import safe_open

    with safe_open(tmp_path / "o.safetensors", "np") as f:
        meta = f.metadata()
    assert meta["source_dim"] == "64" and meta["dim"] == "16" and meta["renormalized"] == "true"
    # The hash covers the header and size only, and its name says so.
    assert (
        meta["pre_norm"] == "none"
        and len(meta["source_header_sha256"]) == 64
        and "source_sha256" not in meta
    )


def test_bfloat16_and_float16_inputs_keep_their_dtype(tmp_path):
    x = torch.from_numpy(embeddings()).to(torch.bfloat16)
    from safetensors.torch import load_file as load_torch
    from safetensors.torch import save_file as save_torch

    save_torch({"e": x}, tmp_path / "bf16.safetensors")
    ok(
        str(tmp_path / "bf16.safetensors"),
        "-o",
        str(tmp_path / "o.safetensors"),
        "--dims",
        "16",
        "-q",
    )
    out = load_torch(tmp_path / "o.safetensors")["e"]
    assert out.dtype == torch.bfloat16
    expected = torch.from_numpy(truncate_reference(x.float().numpy(), 16).astype(np.float32)).to(
        torch.bfloat16
    )
    assert torch.equal(out, expected)
    np.save(tmp_path / "f16.npy", embeddings().astype(np.float16))
    ok(str(tmp_path / "f16.npy"), "-o", str(tmp_path / "o16.npy"), "--dims", "16", "-q")
    assert np.load(tmp_path / "o16.npy").dtype == np.float16
    ok(
        str(tmp_path / "f16.npy"),
        "-o",
        str(tmp_path / "o32.npy"),
        "--dims",
        "16",
        "--dtype",
        "float32",
        "-q",
    )
    assert np.load(tmp_path / "o32.npy").dtype == np.float32


def test_parquet_columns_pass_through(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    x = embeddings(rows=50)
    table = pa.table(
        {"id": [f"doc{i}" for i in range(50)], "embedding": [row.tolist() for row in x]}
    )
    pq.write_table(table, tmp_path / "e.parquet", row_group_size=16)
    out = truncate_parquet(tmp_path)
    assert out.column("id").to_pylist() == [f"doc{i}" for i in range(50)]
    got = np.array(out.column("embedding").to_pylist(), dtype=np.float32)
    assert np.allclose(got, truncate_reference(x, 16), atol=1e-6)


def truncate_parquet(tmp_path: Path):
    """e.parquet truncated to 16 dims in small chunks; the written table."""
    import pyarrow.parquet as pq

    args = ["-o", str(tmp_path / "o.parquet"), "--dims", "16", "--chunk-size", "1000", "-q"]
    ok(str(tmp_path / "e.parquet"), *args)
    return pq.read_table(tmp_path / "o.parquet")


def parquet_rows(path: Path, rows: list, value_type=None, fixed: int | None = None) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    value_type = value_type or pa.float32()
    list_type = pa.list_(value_type, fixed) if fixed else pa.list_(value_type)
    table = pa.table(
        {"id": [f"doc{i}" for i in range(len(rows))], "embedding": pa.array(rows, type=list_type)}
    )
    pq.write_table(table, path, row_group_size=16)


def test_parquet_fixed_size_lists_keep_their_value_type(tmp_path):
    import pyarrow as pa

    x = embeddings(rows=40).astype(np.float16)
    parquet_rows(tmp_path / "e.parquet", [row.tolist() for row in x], pa.float16(), fixed=64)
    out = truncate_parquet(tmp_path)
    assert out.schema.field("embedding").type == pa.list_(pa.float16(), 16)
    expected = truncate_reference(x.astype(np.float32), 16).astype(np.float16)
    assert np.array_equal(np.array(out.column("embedding").to_pylist(), dtype=np.float16), expected)
    ok(str(tmp_path / "e.parquet"), "-o", str(tmp_path / "o.safetensors"), "--dims", "16", "-q")
    assert load_file(tmp_path / "o.safetensors")["embeddings"].dtype == np.float16
    parquet_rows(
        tmp_path / "e64.parquet", [row.tolist() for row in embeddings(rows=40)], pa.float64()
    )
    ok(str(tmp_path / "e64.parquet"), "-o", str(tmp_path / "o64.npy"), "--dims", "16", "-q")
    assert np.load(tmp_path / "o64.npy").dtype == np.float64


def test_parquet_null_and_empty_rows_are_bad_rows(tmp_path):
    import pyarrow.parquet as pq

    x = embeddings(rows=40)
    rows = [row.tolist() for row in x]
    rows[0] = None  # a null first row: the dimension comes from the first non-empty row
    rows[5] = []
    rows[21] = [*rows[21][:-1], None]  # a null value inside a row
    parquet_rows(tmp_path / "e.parquet", rows)
    refused(
        [str(tmp_path / "e.parquet"), "-o", str(tmp_path / "o.parquet"), "--dims", "8"],
        "rows 0, 5, 21 are null or empty, or hold NaN",
        tmp_path / "o.parquet",
    )
    ok(
        str(tmp_path / "e.parquet"),
        "-o",
        str(tmp_path / "o.parquet"),
        "--dims",
        "8",
        "--skip-bad-rows",
        "--chunk-size",
        "600",
        "-q",
    )
    out = pq.read_table(tmp_path / "o.parquet")
    keep = np.setdiff1d(np.arange(40), [0, 5, 21])
    assert out.column("id").to_pylist() == [f"doc{i}" for i in keep]
    assert np.allclose(
        np.array(out.column("embedding").to_pylist()), truncate_reference(x[keep], 8), atol=1e-6
    )


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
    ok(
        str(tmp_path / "corpus.npy"),
        "-o",
        str(tmp_path / "c.safetensors"),
        "--dims",
        "16",
        "--pca",
        "-q",
    )
    rotation_file = tmp_path / "c.rotation.safetensors"
    assert rotation_file.exists()
    ok(
        str(tmp_path / "queries.npy"),
        "-o",
        str(tmp_path / "q.safetensors"),
        "--dims",
        "16",
        "--rotation",
        str(rotation_file),
        "-q",
    )
    saved = load_file(rotation_file)
    expected = truncate_reference((queries - saved["mean"]) @ saved["rotation"], 16)
    assert np.allclose(load_file(tmp_path / "q.safetensors")["embeddings"], expected, atol=1e-5)
    # At full dimension an orthogonal rotation keeps every dot product of centred vectors.
    assert np.allclose(saved["rotation"].T @ saved["rotation"], np.eye(64), atol=1e-5)


def test_int8_clips_with_ranges_from_the_truncated_vectors(tmp_path):
    x = embeddings()
    np.save(tmp_path / "e.npy", x)
    ok(
        str(tmp_path / "e.npy"),
        "-o",
        str(tmp_path / "o.safetensors"),
        "--dims",
        "16",
        "--quantize",
        "int8",
        "-q",
    )
    out = load_file(tmp_path / "o.safetensors")
    ranges, codes = out["int8_ranges"], out["embeddings"]
    t = truncate_reference(x, 16)
    assert np.allclose(ranges[0], t.min(0), atol=1e-6) and np.allclose(
        ranges[1], t.max(0), atol=1e-6
    )
    assert codes.dtype == np.int8 and codes.min() == -128 and codes.max() == 127
    step = (ranges[1] - ranges[0]) / 255
    assert np.all(
        np.abs((codes.astype(np.float64) + 128) * step + ranges[0] - t) <= step * 0.5 + 1e-6
    )
    outside = transform.Int8Ranges(2)
    outside.add(np.array([[0.0, 0.0], [1.0, 1.0]], np.float32))
    assert outside.quantize(np.array([[5.0, -5.0]], np.float32)).tolist() == [
        [127, -128]
    ]  # saturates


def test_queries_quantized_with_the_corpus_ranges_clip(tmp_path):
    corpus = embeddings()
    corpus[:, 0] += 10  # after renormalization: dimension 0 near 1, the others within about +-0.3
    queries = embeddings(rows=30, seed=5)
    queries[:2] = 0
    queries[0, 1], queries[1, 2] = 1, -1  # unit vectors far above / below the corpus's ranges
    np.save(tmp_path / "corpus.npy", corpus)
    np.save(tmp_path / "queries.npy", queries)
    ok(
        str(tmp_path / "corpus.npy"),
        "-o",
        str(tmp_path / "c.safetensors"),
        "--dims",
        "8",
        "--quantize",
        "int8",
        "-q",
    )
    ranges = load_file(tmp_path / "c.safetensors")["int8_ranges"]
    ok(
        str(tmp_path / "queries.npy"),
        "-o",
        str(tmp_path / "q.safetensors"),
        "--dims",
        "8",
        "--quantize",
        "int8",
        "--ranges",
        str(tmp_path / "c.safetensors"),
        "-q",
    )
    out = load_file(tmp_path / "q.safetensors")
    assert np.array_equal(
        out["int8_ranges"], ranges
    )  # the codes travel with the ranges that decode them
    t = truncate_reference(queries, 8)
    above, below = t > ranges[1], t < ranges[0]
    assert above.any() and below.any()
    assert np.all(out["embeddings"][above] == 127) and np.all(
        out["embeddings"][below] == -128
    )  # clipped, never wrapped
    step = (ranges[1] - ranges[0]) / 255
    inside = ~(above | below)
    decoded = (out["embeddings"].astype(np.float64) + 128) * step + ranges[0]
    assert np.all(
        np.abs(decoded - t)[inside] <= np.broadcast_to(step, t.shape)[inside] * 0.5 + 1e-6
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--dims", "16", "--quantize", "int8"], "not [2, 16]: it was written for --dims 8"),
        (["--dims", "8", "--quantize", "binary"], "--ranges gives the ranges of --quantize int8"),
        (["--dims", "8"], "add --quantize int8 or drop --ranges"),
    ],
)
def test_ranges_that_do_not_fit_are_refused(npy, tmp_path, args, message):
    ok(str(npy), "-o", str(tmp_path / "c.safetensors"), "--dims", "8", "--quantize", "int8", "-q")
    refused(
        [
            str(npy),
            "-o",
            str(tmp_path / "q.safetensors"),
            "--ranges",
            str(tmp_path / "c.safetensors"),
            *args,
        ],
        message,
        tmp_path / "q.safetensors",
    )


def test_ranges_file_without_int8_ranges_is_refused(npy, tmp_path):
    ok(str(npy), "-o", str(tmp_path / "plain.safetensors"), "--dims", "8", "-q")
    out = tmp_path / "q.safetensors"
    refused(
        [
            str(npy),
            "-o",
            str(out),
            "--dims",
            "8",
            "--quantize",
            "int8",
            "--ranges",
            str(tmp_path / "plain.safetensors"),
        ],
        "no tensor 'int8_ranges'",
        out,
    )


@pytest.mark.parametrize("output", ["o.npy", "o.parquet"])
def test_int8_needs_safetensors_output(npy, tmp_path, output):
    refused(
        [str(npy), "-o", str(tmp_path / output), "--dims", "8", "--quantize", "int8"],
        "only .safetensors holds them",
        tmp_path / output,
    )
    out = tmp_path / "folder"
    refused(
        [str(npy), "-o", str(out), "--dims", "16,8", "--quantize", "int8", "--format", "npy"],
        "add --format safetensors",
        out,
    )


def test_binary_packs_signs(tmp_path):
    x = embeddings()
    np.save(tmp_path / "e.npy", x)
    ok(
        str(tmp_path / "e.npy"),
        "-o",
        str(tmp_path / "o.npy"),
        "--dims",
        "16",
        "--quantize",
        "binary",
        "-q",
    )
    packed = np.load(tmp_path / "o.npy")
    assert packed.shape == (300, 2) and packed.dtype == np.uint8
    assert np.array_equal(np.unpackbits(packed, axis=1).astype(bool), x[:, :16] > 0)


# --- models -------------------------------------------------------------------------------------


def encode(model: Path, texts: list[str]) -> np.ndarray:
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(model), device="cpu").encode(texts, convert_to_numpy=True)


TEXTS = [
    "a man plays guitar",
    "someone plays an instrument",
    "the stock market fell",
    "cats sleep a lot",
]


def test_truncated_model_equals_truncated_outputs(sentence_model, tmp_path):
    ok(str(sentence_model), "-o", str(tmp_path / "m"), "--dims", "16,8", "-q")
    full = encode(sentence_model, TEXTS)
    for d in (16, 8):
        assert np.allclose(
            encode(tmp_path / "m" / f"d{d}", TEXTS), truncate_reference(full, d), atol=1e-6
        )


def test_truncated_model_with_rotation_equals_rotated_outputs(sentence_model, tmp_path):
    corpus = encode(
        sentence_model,
        [
            f"document number {i} about {w}"
            for i, w in enumerate(["cats", "dogs", "stocks", "music"] * 20)
        ],
    )
    np.save(tmp_path / "corpus.npy", corpus)
    ok(
        str(tmp_path / "corpus.npy"),
        "-o",
        str(tmp_path / "c.safetensors"),
        "--dims",
        "8",
        "--pca",
        "-q",
    )
    rotation = load_file(tmp_path / "c.rotation.safetensors")
    ok(
        str(sentence_model),
        "-o",
        str(tmp_path / "m"),
        "--dims",
        "8",
        "--rotation",
        str(tmp_path / "c.rotation.safetensors"),
        "-q",
    )
    expected = truncate_reference(
        (encode(sentence_model, TEXTS) - rotation["mean"]) @ rotation["rotation"], 8
    )
    assert np.allclose(encode(tmp_path / "m", TEXTS), expected, atol=1e-5)


def test_model_pca_fits_on_data_and_writes_its_rotation(sentence_model, tmp_path):
    lines = [
        f"note {i}: {w} {w2}"
        for i, (w, w2) in enumerate(
            zip(
                ["cats", "dogs", "stocks", "music", "rain"] * 12,
                ["sleep", "run", "fall", "plays", "pours", "sing"] * 10,
            )
        )
    ]
    (tmp_path / "texts.txt").write_text("\n".join(lines) + "\n")
    ok(
        str(sentence_model),
        "-o",
        str(tmp_path / "m"),
        "--dims",
        "16,8",
        "--pca",
        "--data",
        str(tmp_path / "texts.txt"),
        "-q",
    )
    rotation = load_file(tmp_path / "m" / "rotation.safetensors")
    fit = transform.PcaFit(48)
    fit.add(encode(sentence_model, lines))
    assert np.allclose(
        np.abs(rotation["rotation"][:, :8]),
        np.abs(fit.finish(center=False)[0].rotation[:, :8]),
        atol=1e-4,
    )
    full = encode(sentence_model, TEXTS)
    for d in (16, 8):
        assert np.allclose(
            encode(tmp_path / "m" / f"d{d}", TEXTS),
            truncate_reference(full @ rotation["rotation"], d),
            atol=1e-5,
        )
    # Stored embeddings of the original model get the same transform from the written rotation.
    np.save(tmp_path / "stored.npy", full)
    ok(
        str(tmp_path / "stored.npy"),
        "-o",
        str(tmp_path / "s.npy"),
        "--dims",
        "8",
        "--rotation",
        str(tmp_path / "m" / "rotation.safetensors"),
        "-q",
    )
    assert np.allclose(np.load(tmp_path / "s.npy"), encode(tmp_path / "m" / "d8", TEXTS), atol=1e-5)


def test_model_pre_norm(sentence_model, tmp_path):
    ok(
        str(sentence_model),
        "-o",
        str(tmp_path / "m"),
        "--dims",
        "16",
        "--pre-norm",
        "layer_norm",
        "-q",
    )
    full = torch.nn.functional.layer_norm(
        torch.from_numpy(encode(sentence_model, TEXTS)), (48,)
    ).numpy()
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
    refused(
        [str(npy), "-o", str(tmp_path / "o.safetensors"), *args],
        message,
        tmp_path / "o.safetensors",
    )


@pytest.mark.parametrize("shape", [(10,), (2, 3, 4)])
def test_not_two_dimensional(tmp_path, shape):
    np.save(tmp_path / "bad.npy", np.zeros(shape, np.float32))
    refused(
        [str(tmp_path / "bad.npy"), "-o", str(tmp_path / "o.npy"), "--dims", "2"],
        "must be a 2-D",
        tmp_path / "o.npy",
    )


def test_nan_rows_are_refused_with_their_numbers_or_skipped(tmp_path):
    x = embeddings()
    x[3, 2] = np.nan
    x[250, 0] = np.inf
    ids = np.arange(300)
    save_file({"e": x, "ids": ids}, tmp_path / "e.safetensors")
    refused(
        [
            str(tmp_path / "e.safetensors"),
            "--key",
            "e",
            "-o",
            str(tmp_path / "o.safetensors"),
            "--dims",
            "8",
            "--chunk-size",
            "2000",
        ],
        "rows 3",
        tmp_path / "o.safetensors",
    )
    out = truncate_skipping_bad_rows(tmp_path)
    keep = np.setdiff1d(ids, [3, 250])
    assert np.array_equal(out["ids"], keep)
    assert np.allclose(out["e"], truncate_reference(x[keep], 8), atol=1e-6)


def truncate_skipping_bad_rows(tmp_path: Path) -> dict:
    """e.safetensors's `e` truncated to 8 dims with --skip-bad-rows; the written tensors."""
    args = ["--key", "e", "-o", str(tmp_path / "o.safetensors"), "--dims", "8"]
    ok(str(tmp_path / "e.safetensors"), *args, "--skip-bad-rows", "-q")
    return load_file(tmp_path / "o.safetensors")


def test_passthrough_rows_of_several_bytes_are_skipped_with_their_rows(tmp_path):
    x = embeddings(rows=50)
    x[[0, 17, 49], 1] = np.nan
    labels = np.arange(150, dtype=np.int16).reshape(50, 3)
    save_file(
        {"e": x, "labels": labels, "meta": np.arange(4, dtype=np.int64)}, tmp_path / "e.safetensors"
    )
    out = truncate_skipping_bad_rows(tmp_path)
    keep = np.setdiff1d(np.arange(50), [0, 17, 49])
    assert np.array_equal(out["labels"], labels[keep]) and np.array_equal(out["meta"], np.arange(4))


def test_format_contradicting_the_suffix_is_refused(npy, tmp_path):
    refused(
        [str(npy), "-o", str(tmp_path / "x.safetensors"), "--dims", "8", "--format", "npy"],
        "--format npy contradicts -o",
        tmp_path / "x.safetensors",
    )
    ok(
        str(npy), "-o", str(tmp_path / "x.npy"), "--dims", "8", "--format", "npy", "-q"
    )  # agreeing is fine


def test_rotation_fitted_with_another_pre_norm_is_refused(npy, tmp_path):
    pca_layer_norm = ["--dims", "8", "--pca", "--pre-norm", "layer_norm", "-q"]
    ok(str(npy), "-o", str(tmp_path / "ln.safetensors"), *pca_layer_norm)
    ok(str(npy), "-o", str(tmp_path / "plain.safetensors"), "--dims", "8", "--pca", "-q")
    out = tmp_path / "q.safetensors"
    refused(
        [
            str(npy),
            "-o",
            str(out),
            "--dims",
            "8",
            "--rotation",
            str(tmp_path / "ln.rotation.safetensors"),
        ],
        "add --pre-norm layer_norm",
        out,
    )
    refused(
        [
            str(npy),
            "-o",
            str(out),
            "--dims",
            "8",
            "--rotation",
            str(tmp_path / "plain.rotation.safetensors"),
            "--pre-norm",
            "layer_norm",
        ],
        "remove --pre-norm layer_norm",
        out,
    )
    ok(
        str(npy),
        "-o",
        str(out),
        "--dims",
        "8",
        "--rotation",
        str(tmp_path / "ln.rotation.safetensors"),
        "--pre-norm",
        "layer_norm",
        "-q",
    )


def test_a_model_refuses_a_rotation_fitted_with_another_pre_norm(sentence_model, tmp_path):
    np.save(tmp_path / "e48.npy", embeddings(dim=48))
    ok(
        str(tmp_path / "e48.npy"),
        "-o",
        str(tmp_path / "c48.safetensors"),
        "--dims",
        "8",
        "--pca",
        "-q",
    )
    model_out = tmp_path / "m"
    refused(
        [
            str(sentence_model),
            "-o",
            str(model_out),
            "--dims",
            "8",
            "--rotation",
            str(tmp_path / "c48.rotation.safetensors"),
            "--pre-norm",
            "layer_norm",
        ],
        "remove --pre-norm",
        model_out,
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--pca-center"], "--pca-center only changes how --pca fits"),
        (
            ["--pca", "--data", "texts.txt"],
            "--data gives the texts a model folder's --pca is fitted on",
        ),
        (["--data", "texts.txt"], "add --pca or drop --data"),
    ],
)
def test_options_a_file_input_would_ignore_are_refused(npy, tmp_path, args, message):
    (tmp_path / "texts.txt").write_text("a\nb\n")
    args = [str(tmp_path / a) if a.endswith(".txt") else a for a in args]
    refused(
        [str(npy), "-o", str(tmp_path / "o.safetensors"), "--dims", "8", *args],
        message,
        tmp_path / "o.safetensors",
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--dtype", "float16"], "--dtype applies to embeddings files, not to a model folder"),
        (["--format", "npy", "--key", "e"], "--key, --format apply to embeddings files"),
        (["--skip-bad-rows"], "--skip-bad-rows applies to embeddings files"),
        (["--quantize", "int8"], "--quantize applies to embeddings files"),
    ],
)
def test_file_options_on_a_model_are_refused(sentence_model, tmp_path, args, message):
    refused(
        [str(sentence_model), "-o", str(tmp_path / "m"), "--dims", "8", *args],
        message,
        tmp_path / "m",
    )


def test_pca_on_too_few_rows_is_refused(tmp_path):
    np.save(tmp_path / "few.npy", embeddings(rows=12))
    refused(
        [str(tmp_path / "few.npy"), "-o", str(tmp_path / "o.safetensors"), "--dims", "16", "--pca"],
        "needs at least 16 rows",
        tmp_path / "o.safetensors",
    )
    refused(
        [
            str(tmp_path / "few.npy"),
            "-o",
            str(tmp_path / "o.safetensors"),
            "--dims",
            "12",
            "--pca",
            "--pca-center",
        ],
        "needs at least 13 rows",
        tmp_path / "o.safetensors",
    )
    x = embeddings(rows=20)
    x[:6, 0] = np.nan  # 14 good rows left after skipping
    np.save(tmp_path / "bad.npy", x)
    refused(
        [
            str(tmp_path / "bad.npy"),
            "-o",
            str(tmp_path / "o.safetensors"),
            "--dims",
            "16",
            "--pca",
            "--skip-bad-rows",
        ],
        "without its 6 skipped rows has 14",
        tmp_path / "o.safetensors",
    )


def test_model_pca_on_too_few_texts_is_refused(tmp_path, sentence_model):
    (tmp_path / "texts.txt").write_text("one\ntwo\nthree\n")
    refused(
        [
            str(sentence_model),
            "-o",
            str(tmp_path / "m"),
            "--dims",
            "8",
            "--pca",
            "--data",
            str(tmp_path / "texts.txt"),
        ],
        "needs at least 8 rows",
        tmp_path / "m",
    )


def test_output_over_the_input_is_refused(npy):
    before = npy.read_bytes()
    code, _, err = run_matcli(
        "truncate-embeddings", str(npy), "-o", str(npy), "--dims", "8", "--force"
    )
    assert code == 2 and "is the input file" in err and npy.read_bytes() == before


def test_an_existing_output_is_refused_before_work_and_reported_by_a_dry_run(npy, tmp_path):
    taken = tmp_path / "taken.safetensors"
    taken.write_bytes(b"keep")
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "other").write_text("keep")
    for out, dims in ((taken, "8"), (folder, "8,16")):
        code, _, err = run_matcli("truncate-embeddings", str(npy), "-o", str(out), "--dims", dims)
        assert code == 2 and "--force" in err and err.count("\n") == 1, err
        code, _, err = run_matcli(
            "truncate-embeddings", str(npy), "-o", str(out), "--dims", dims, "--dry-run"
        )
        assert code == 0 and "a real run would stop here" in err, err
    assert taken.read_bytes() == b"keep" and [p.name for p in folder.iterdir()] == ["other"]


def test_missing_key_unknown_type_and_truncated_npy(tmp_path, npy):
    save_file({"a": embeddings(), "b": embeddings()}, tmp_path / "two.safetensors")
    refused(
        [str(tmp_path / "two.safetensors"), "-o", str(tmp_path / "o.safetensors"), "--dims", "8"],
        "--key",
        tmp_path / "o.safetensors",
    )
    refused(
        [
            str(tmp_path / "two.safetensors"),
            "--key",
            "c",
            "-o",
            str(tmp_path / "o.safetensors"),
            "--dims",
            "8",
        ],
        "no tensor 'c'",
        tmp_path / "o.safetensors",
    )
    (tmp_path / "e.csv").write_text("1,2\n")
    refused(
        [str(tmp_path / "e.csv"), "-o", str(tmp_path / "o.npy"), "--dims", "1"],
        "unknown file type",
        tmp_path / "o.npy",
    )
    cut = tmp_path / "cut.npy"
    cut.write_bytes(npy.read_bytes()[:-100])
    refused(
        [str(cut), "-o", str(tmp_path / "o.npy"), "--dims", "8"], "truncated", tmp_path / "o.npy"
    )


# --- the runner: manifests, replacing an output, dry runs ---------------------------------------


def test_a_folder_of_embedding_files_gets_a_manifest_and_a_single_file_none(npy, tmp_path):
    ok(str(npy), "-o", str(tmp_path / "all"), "--dims", "16,8", "--pca", "-q")
    manifest = json.loads((tmp_path / "all" / "matcli_manifest.json").read_text())
    assert manifest["command"] == "truncate-embeddings" and manifest["options"]["dims"] == [16, 8]
    names = [o["name"] for o in manifest["outputs"]]
    assert names == ["d16.safetensors", "d8.safetensors", "rotation.safetensors"]
    assert manifest["input"]["path"] == str(npy) and manifest["rows_written"] == 300
    ok(str(npy), "-o", str(tmp_path / "one.npy"), "--dims", "8", "-q")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["all", "e.npy", "one.npy"]


def test_a_model_with_one_dimension_replaces_its_folder_with_force(sentence_model, tmp_path):
    out = tmp_path / "m"
    ok(str(sentence_model), "-o", str(out), "--dims", "16", "-q")
    code, _, err = run_matcli(
        "truncate-embeddings", str(sentence_model), "-o", str(out), "--dims", "8"
    )
    assert code == 2 and "--force" in err and err.count("\n") == 1, err
    ok(str(sentence_model), "-o", str(out), "--dims", "8", "--force", "-q")
    manifest = json.loads((out / "matcli_manifest.json").read_text())
    assert manifest["dim"] == 8 and manifest["command_line"][-2:] == ["--force", "-q"]
    assert encode(out, TEXTS).shape == (len(TEXTS), 8)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def test_a_dry_run_reports_what_a_real_run_would_refuse(npy, sentence_model, tmp_path):
    code, out, err = run_matcli(
        "truncate-embeddings", str(npy), "-o", str(npy), "--dims", "8", "--dry-run", "--json"
    )
    assert code == 0, err
    warning = json.loads(out)["warnings"][0]
    assert "a real run would stop here" in warning and "is the input file" in warning
    code, out, err = run_matcli(
        "truncate-embeddings",
        str(sentence_model),
        "-o",
        str(tmp_path / "m"),
        "--dims",
        "16,8",
        "--dry-run",
        "--json",
    )
    plan = json.loads(out)
    assert code == 0 and [o["path"] for o in plan["outputs"]] == [
        str(tmp_path / "m" / "d16"),
        str(tmp_path / "m" / "d8"),
    ]
    assert not (tmp_path / "m").exists()
