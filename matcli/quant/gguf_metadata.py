"""What llama.cpp reads besides the tensors: names, hyper-parameters and the tokenizer.

All of it is family data (the `gguf:` block of `matcli/arch/families/*.yaml`) applied to the
checkpoint's config.json and tokenizer files, written through gguf-py's own key names
(`gguf.Keys`) and its `SpecialVocab`, as llama.cpp's convert_hf_to_gguf.py does.
"""

from __future__ import annotations

import json
import re
from hashlib import sha256
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from matcli.arch import Architecture
from matcli.errors import MatcliError


class GgufFamily(BaseModel):
    """A family's `gguf:` block."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    arch: str
    tensors: dict[str, str]
    layer_tensors: dict[str, str]
    permute_heads: dict[str, str] = {}
    hparams: dict[str, list[str]]
    # llama.cpp's tokenizer models the family's converter class tries, in its order:
    # `llama` (SentencePiece-style BPE from tokenizer.json, _set_vocab_llama_hf), `gpt2`.
    tokenizer_models: list[Literal["llama", "gpt2"]] = ["gpt2"]


def gguf_family(arch: Architecture) -> GgufFamily:
    """The family's GGUF data, or a one-line refusal naming what to add."""
    if arch.family.gguf is None:
        raise MatcliError(
            f"family {arch.family.name!r} has no GGUF metadata yet (supported: "
            f"{', '.join(_gguf_families())}); use --format compressed-tensors, or add a gguf: "
            f"block to matcli/arch/families/{arch.family.name}.yaml"
        )
    try:
        return GgufFamily.model_validate(resolved_block(arch.family.name))
    except ValidationError as e:
        raise MatcliError(f"family {arch.family.name!r}: malformed gguf: block ({e})") from e


def resolved_block(name: str) -> dict:
    """A family's `gguf:` block with its `extends: FAMILY` resolved: the named family's
    block, with each mapping merged entry by entry (an entry set to null is removed) and
    every other key replaced, as llama.cpp's converter classes derive from one another."""
    from matcli.arch import families

    block = dict(families()[name].gguf or {})
    parent = block.pop("extends", None)
    if parent is None:
        return block
    if parent not in families():
        raise MatcliError(f"family {name!r}: gguf: extends unknown family {parent!r}")
    merged = resolved_block(parent)
    for key, value in block.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            value = {k: v for k, v in {**merged[key], **value}.items() if v is not None}
        merged[key] = value
    return merged


def _gguf_families() -> list[str]:
    from matcli.arch import families

    return [name for name, family in families().items() if family.gguf]


def gguf_name(arch: Architecture, family: GgufFamily, name: str) -> str | None:
    """llama.cpp's name of a checkpoint tensor (None when the family data has none)."""
    split = arch.split_layer(name)
    if split is None:
        return family.tensors.get(name)
    layer, relative = split
    mapped = family.layer_tensors.get(relative)
    return f"blk.{layer}.{mapped}" if mapped else None


def heads_of(arch: Architecture, family: GgufFamily, name: str, config: dict) -> int | None:
    """The head count whose rows llama.cpp's rotary layout permutes (None: not permuted)."""
    split = arch.split_layer(name)
    key = family.permute_heads.get(split[1]) if split else None
    return _value(config, [key], name) if key else None


def hparams(family: GgufFamily, config: dict) -> list[tuple[str, object, str]]:
    """(`{arch}.KEY`, value, gguf value type) for every hyper-parameter of the family."""
    rope = config.get("rope_parameters") or config.get("rope_scaling") or {}
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type not in ("default", None):
        raise MatcliError(
            f"RoPE type {rope_type!r} (config.json) has no GGUF mapping in matcli yet; "
            "use --format compressed-tensors"
        )
    rows = []
    for key, (kind, *sources) in family.hparams.items():
        value = _value(config, sources, f"{family.arch}.{key}")
        if value is not None:
            rows.append((f"{family.arch}.{key}", _typed(kind, value), kind))
    return rows


def _typed(kind: str, value: object) -> object:
    return int(value) if kind == "uint32" else float(value)


def _value(config: dict, sources: list[str], what: str) -> object:
    """The first source the config has: `a.b` (nested key), `a / b` (integer quotient)."""
    optional = all(s.endswith("?") for s in sources)
    for source in sources:
        source = source.rstrip("?")
        parts = [_lookup(config, p.strip()) for p in source.split("/")]
        if all(p is not None for p in parts):
            return parts[0] if len(parts) == 1 else parts[0] // parts[1]
    if optional:
        return None
    raise MatcliError(
        f"config.json has none of {', '.join(sources)} (needed for GGUF key {what}); fix the config"
    )


def _lookup(config: dict, dotted: str) -> object:
    value: object = config
    for part in dotted.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


# llama.cpp names a BPE pre-tokenizer by the hash of its tokens for one text
# (convert_hf_to_gguf.py, get_vocab_base_pre); these are the hashes of the families matcli
# writes. Any other tokenizer is written as "default", with a warning.
PRE_TOKENIZERS = {
    "855059429035d75a914d1eda9f10a876752e281a054a7a3d421ef0533e5b6249": "smollm",
    "0ef9807a4087ebef797fc749390439009c3b9eda9ad1a097abbe738f486c01e5": "llama-bpe",
    "d4540891389ea895b53b399da6ac824becc30f2fba0e9ddbb98f92e55ca0e97c": "qwen2",
    "e636dc30a262dcc0d8c323492e32ae2b70728f4df7dfe9737d9f920a282b8aea": "qwen2",
    "63b97e4253352e6f357cc59ea5b583e3a680eaeaf2632188c2b952de2588485e": "tekken",
}
CHECK_TEXT = (
    "\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n🚀 (normal) 😶\u200d🌫️ (multiple emojis "
    "concatenated) ✅ 🦙🦙 3 33 333 3333 33333 333333 3333333 33333333 3.3 3..3 3...3 "
    "កាន់តែពិសេសអាច😁 ?我想在apple工作1314151天～ ------======= нещо на Български "
    "''''''```````\"\"\"\"......!!!!!!?????? I've been 'told he's there, 'RE you sure? "
    "'M not sure I'll make it, 'D you like some tea? We'Ve a'lL"
)


class Vocabulary(BaseModel):
    """A tokenizer as llama.cpp stores it: `gpt2` (byte-level BPE) or `llama`
    (SentencePiece-style BPE, with a score per token)."""

    model_config = ConfigDict(frozen=True)
    model: Literal["gpt2", "llama"]
    tokens: list[str]
    token_types: list[int]
    scores: list[float] | None = None
    pre: str
    known_pre: bool


def vocabulary(folder: Path, vocab_size: int, family: GgufFamily) -> Vocabulary:
    """The token list of tokenizer.json, in the first of the family's tokenizer models
    that describes it, as the family's converter class chooses."""
    path = folder / "tokenizer.json"
    data = _tokenizer_json(path)
    model = data.get("model") or {}
    if model.get("type") != "BPE":
        raise MatcliError(
            f"{path}: GGUF output supports BPE tokenizers (tokenizer.json model type BPE), "
            f"not {model.get('type')!r}; use --format compressed-tensors"
        )
    kind = "llama" if _sentencepiece_style(data) else "gpt2"
    if kind not in family.tokenizer_models:
        raise MatcliError(
            f"{path}: a {_KIND_TEXT[kind]} tokenizer is not one llama.cpp's {family.arch} "
            f"converter writes (it writes {', '.join(family.tokenizer_models)}); use "
            "--format compressed-tensors"
        )
    if kind == "llama":
        return _llama_vocabulary(folder, vocab_size)
    return _gpt2_vocabulary(path, data, vocab_size)


_KIND_TEXT = {
    "llama": "SentencePiece-style BPE (byte fallback, '▁' for spaces)",
    "gpt2": "byte-level BPE",
}


def _gpt2_vocabulary(path: Path, data: dict, vocab_size: int) -> Vocabulary:
    """convert_hf_to_gguf.py's get_vocab_base: tokens padded to vocab_size with [PADi]."""
    import gguf
    from tokenizers import Tokenizer

    added = {t["id"]: t for t in data.get("added_tokens") or []}
    by_id = {i: t for t, i in data["model"].get("vocab", {}).items()} | {
        i: t["content"] for i, t in added.items()
    }
    _check_ids(path, max(by_id, default=-1), vocab_size)
    tokens, types = [], []
    for i in range(vocab_size):
        tokens.append(by_id.get(i, f"[PAD{i}]"))
        types.append(_token_type(gguf, added.get(i), i in by_id))
    ids = Tokenizer.from_file(str(path)).encode(CHECK_TEXT).ids
    pre = PRE_TOKENIZERS.get(sha256(str(ids).encode()).hexdigest())
    return Vocabulary(
        model="gpt2", tokens=tokens, token_types=types, pre=pre or "default", known_pre=bool(pre)
    )


def _llama_vocabulary(folder: Path, vocab_size: int) -> Vocabulary:
    """convert_hf_to_gguf.py's _set_vocab_llama_hf: gguf-py's LlamaHfVocab (byte tokens
    <0xNN> typed BYTE, special ones CONTROL, every score -1000 as gguf-py writes them),
    padded to vocab_size with unused [PADi] tokens."""
    import gguf

    try:
        hf = gguf.LlamaHfVocab(folder)
    except (FileNotFoundError, TypeError) as e:
        raise MatcliError(
            f"{folder / 'tokenizer.json'}: gguf-py cannot read it as a SentencePiece-style "
            f"tokenizer ({e}); use --format compressed-tensors"
        ) from e
    rows = list(hf.all_tokens())
    _check_ids(folder / "tokenizer.json", len(rows) - 1, vocab_size)
    rows += [
        (f"[PAD{i}]".encode(), -1000.0, gguf.TokenType.UNUSED) for i in range(len(rows), vocab_size)
    ]
    return Vocabulary(
        model="llama",
        tokens=[text.decode("utf-8") for text, _, _ in rows],
        token_types=[int(kind) for _, _, kind in rows],
        scores=[float(score) for _, score, _ in rows],
        pre="default",
        known_pre=True,
    )


def _check_ids(path: Path, largest: int, vocab_size: int) -> None:
    if largest >= vocab_size:
        raise MatcliError(f"{path} has token id {largest} >= vocab_size {vocab_size}")


def _sentencepiece_style(data: dict) -> bool:
    """Llama 2 / Mistral tokenizers: BPE over '▁'-marked text with byte fallback, which
    llama.cpp reads as its SentencePiece (`llama`) model, not as byte-level `gpt2`."""
    text = json.dumps([data.get("normalizer"), data.get("pre_tokenizer")])
    return bool((data.get("model") or {}).get("byte_fallback")) or "Metaspace" in text


def _token_type(gguf, added: dict | None, present: bool) -> int:
    if not present:
        return int(gguf.TokenType.UNUSED)
    if added is None:
        return int(gguf.TokenType.NORMAL)
    special = added.get("special") or re.fullmatch(r"<\|.*\|>", added["content"])
    return int(gguf.TokenType.CONTROL if special else gguf.TokenType.USER_DEFINED)


def _tokenizer_json(path: Path) -> dict:
    if not path.is_file():
        raise MatcliError(
            f"{path} is missing: GGUF output needs the tokenizer (tokenizer.json); copy it "
            "from the original model into the parent folder"
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise MatcliError(f"{path} is not valid JSON ({e}); copy it from the original model") from e
    if not isinstance(data, dict):
        raise MatcliError(f"{path} is not a tokenizer.json object")
    return data


def add_tokenizer(writer, folder: Path, vocab: Vocabulary) -> None:
    """Tokens, merges (gpt2), scores (llama), special token ids and chat template, as
    convert_hf_to_gguf.py's _set_vocab_gpt2 / _set_vocab_llama_hf write them."""
    import gguf

    writer.add_tokenizer_model(vocab.model)
    writer.add_tokenizer_pre(vocab.pre)
    writer.add_token_list(vocab.tokens)
    if vocab.scores is not None:
        writer.add_token_scores(vocab.scores)
    writer.add_token_types(vocab.token_types)
    merges = vocab.model == "gpt2"
    special = gguf.SpecialVocab(folder, load_merges=merges, n_vocab=len(vocab.tokens))
    special.add_to_gguf(writer, quiet=True)
