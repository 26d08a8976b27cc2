"""Text for evaluation (and later calibration and training): local files, tokenized with the
model's own tokenizer and cut into sequences."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from matcli.errors import MatcliError


def read_texts(path: Path, text_field: str = "text") -> list[str]:
    """Documents from a .txt file (one document) or a .jsonl file (one per line)."""
    if not path.is_file():
        raise MatcliError(f"--data {path} does not exist; give a .txt or .jsonl file")
    if path.suffix == ".txt":
        return [path.read_text(encoding="utf-8")]
    if path.suffix == ".jsonl":
        texts = []
        for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
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
    raise MatcliError(f"--data {path}: unknown file type {path.suffix!r}; use .txt or .jsonl")


def token_windows(tokenizer, texts: list[str], seq_len: int, max_tokens: int | None) -> torch.Tensor:
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
        raise MatcliError(f"the data holds {len(ids)} tokens, fewer than one --seq-len window of {seq_len}; give more text or a shorter --seq-len")
    return torch.tensor(ids[: n * seq_len]).reshape(n, seq_len)
