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


def gguf_family(arch: Architecture) -> GgufFamily:
    """The family's GGUF data, or a one-line refusal naming what to add."""
    block = arch.family.gguf
    if block is None:
        raise MatcliError(
            f"family {arch.family.name!r} has no GGUF metadata yet (supported: "
            f"{', '.join(_gguf_families())}); use --format compressed-tensors, or add a gguf: "
            f"block to matcli/arch/families/{arch.family.name}.yaml"
        )
    try:
        return GgufFamily.model_validate(block)
    except ValidationError as e:
        raise MatcliError(f"family {arch.family.name!r}: malformed gguf: block ({e})") from e


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
    """A BPE tokenizer as llama.cpp's `gpt2` tokenizer model stores it."""

    model_config = ConfigDict(frozen=True)
    tokens: list[str]
    token_types: list[int]
    pre: str
    known_pre: bool


def vocabulary(folder: Path, vocab_size: int) -> Vocabulary:
    """The token list of tokenizer.json (BPE), padded to the model's vocabulary size."""
    import gguf
    from tokenizers import Tokenizer

    path = folder / "tokenizer.json"
    data = _tokenizer_json(path)
    model = data.get("model") or {}
    if model.get("type") != "BPE":
        raise MatcliError(
            f"{path}: GGUF output supports BPE tokenizers (tokenizer.json model type BPE), "
            f"not {model.get('type')!r}; use --format compressed-tensors"
        )
    if _sentencepiece_style(data):
        raise MatcliError(
            f"{path}: a SentencePiece-style BPE tokenizer (byte fallback, '▁' for spaces) is "
            "llama.cpp's `llama` tokenizer model, which matcli's GGUF output does not write yet; "
            "use --format compressed-tensors"
        )
    added = {t["id"]: t for t in data.get("added_tokens") or []}
    by_id = {i: t for t, i in model.get("vocab", {}).items()} | {
        i: t["content"] for i, t in added.items()
    }
    if by_id and max(by_id) >= vocab_size:
        raise MatcliError(f"{path} has token id {max(by_id)} >= vocab_size {vocab_size}")
    tokens, types = [], []
    for i in range(vocab_size):
        tokens.append(by_id.get(i, f"[PAD{i}]"))
        types.append(_token_type(gguf, added.get(i), i in by_id))
    ids = Tokenizer.from_file(str(path)).encode(CHECK_TEXT).ids
    pre = PRE_TOKENIZERS.get(sha256(str(ids).encode()).hexdigest())
    return Vocabulary(tokens=tokens, token_types=types, pre=pre or "default", known_pre=bool(pre))


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
    """Tokens, merges, special token ids and chat template, as convert_hf_to_gguf.py writes
    them for a `gpt2` (byte-level BPE) tokenizer."""
    import gguf

    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(vocab.pre)
    writer.add_token_list(vocab.tokens)
    writer.add_token_types(vocab.token_types)
    special = gguf.SpecialVocab(folder, load_merges=True, n_vocab=len(vocab.tokens))
    special.add_to_gguf(writer, quiet=True)
