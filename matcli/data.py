"""Text for evaluation (and later calibration and training): local files, tokenized with the
model's own tokenizer and cut into sequences."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from matcli.errors import MatcliError
from matcli.inputs import read_utf8


def read_texts(path: Path | str, text_field: str = "text") -> list[str]:
    """Documents from a .txt file (one document), a .jsonl or .parquet file (a text field per
    row), or, when `path` is not a file, a Hugging Face dataset already in the local cache
    (`name` or `name:config:split`)."""
    path = Path(path)
    if path.suffix == ".txt" and path.is_file():
        return [_utf8_text(path)]
    if path.suffix == ".jsonl" and path.is_file():
        return _jsonl_texts(path, text_field)
    if path.suffix == ".parquet" and path.is_file():
        return _parquet_texts(path, text_field)
    if path.suffix in (".txt", ".jsonl", ".parquet"):
        raise MatcliError(f"--data {path} does not exist; give a .txt, .jsonl or .parquet file")
    if path.exists():
        raise MatcliError(
            f"--data {path}: unknown file type {path.suffix!r}; use .txt, .jsonl or .parquet"
        )
    return _cached_dataset_texts(str(path), text_field)


def _utf8_text(path: Path) -> str:
    return read_utf8(path, "--data", "give a UTF-8 .txt or .jsonl file")


def _jsonl_texts(path: Path, text_field: str) -> list[str]:
    texts = []
    for i, line in enumerate(_utf8_text(path).splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise MatcliError(f"--data {path} line {i} is not JSON: {e}") from e
        if not isinstance(record, dict) or not isinstance(record.get(text_field), str):
            raise MatcliError(f"--data {path} line {i} has no string field {text_field!r}")
        texts.append(record[text_field])
    return texts


def _parquet_texts(path: Path, text_field: str) -> list[str]:
    try:
        import pyarrow.parquet as pq
    except ImportError as e:
        raise MatcliError("reading .parquet needs pyarrow: pip install 'matcli[parquet]'") from e
    try:
        table = pq.read_table(path)
    except Exception as e:  # pyarrow raises several types for a corrupt file
        raise MatcliError(f"--data {path} is not a valid parquet file: {e}") from e
    if text_field not in table.column_names:
        raise MatcliError(
            f"--data {path} has no column {text_field!r} (columns: {', '.join(table.column_names)})"
        )
    return [t for t in table.column(text_field).to_pylist() if isinstance(t, str)]


def _cached_dataset_texts(name: str, text_field: str) -> list[str]:
    """A dataset from the local Hugging Face cache only: nothing is downloaded."""
    import importlib.util
    import os

    if importlib.util.find_spec("datasets") is None:
        raise MatcliError(
            f"--data {name} is not a file; for Hugging Face dataset names install `datasets` "
            "(only the local cache is used)"
        )
    os.environ["HF_DATASETS_OFFLINE"] = "1"
    from datasets import load_dataset

    dataset, _, rest = name.partition(":")
    config, _, split = rest.partition(":")
    try:
        data = load_dataset(dataset, config or None, split=split or "train")
    except Exception as e:  # datasets raises many types for a cache miss
        raise MatcliError(
            f"--data {name}: not a file and not in the local Hugging Face cache "
            f"({type(e).__name__}); give a local file"
        ) from e
    if text_field not in data.column_names:
        raise MatcliError(f"--data {name} has no column {text_field!r}")
    return [t for t in data[text_field] if isinstance(t, str)]


def data_digest(path: Path | str) -> str:
    """sha256 of a data file's bytes (or of a dataset name), for the manifest."""
    import hashlib

    path = Path(path)
    h = hashlib.sha256()
    if path.is_file():
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    else:
        h.update(str(path).encode())
    return h.hexdigest()


def token_windows(
    tokenizer, texts: list[str], seq_len: int, max_tokens: int | None
) -> torch.Tensor:
    """Documents tokenized, joined with EOS, cut into [n, seq_len] non-overlapping windows."""
    eos = tokenizer.eos_token_id
    ids: list[int] = []
    for text in texts:
        ids += tokenizer(text, add_special_tokens=False)["input_ids"]
        if eos is not None:
            ids.append(eos)
        if max_tokens and len(ids) >= max_tokens:
            break
    if max_tokens:
        ids = ids[:max_tokens]
    n = len(ids) // seq_len
    if n == 0:
        raise MatcliError(
            f"the data holds {len(ids)} tokens, fewer than one --seq-len window of {seq_len}; "
            "give more text or a shorter --seq-len"
        )
    return torch.tensor(ids[: n * seq_len]).reshape(n, seq_len)
