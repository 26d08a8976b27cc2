"""Shared fixtures: tiny models built offline from transformers configs, and a CLI runner."""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


# The shape of every tiny decoder the tests build (any family's config accepts these keys).
TINY_DECODER = dict(
    vocab_size=128,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=64,
    tie_word_embeddings=False,
)


def build_llama(path: Path, seed: int = 0, **overrides) -> Path:
    from transformers import AutoModelForCausalLM, LlamaConfig

    settings = {**TINY_DECODER, **overrides}
    torch.manual_seed(seed)
    AutoModelForCausalLM.from_config(LlamaConfig(**settings), dtype=torch.float32).save_pretrained(
        path
    )
    char_tokenizer().save_pretrained(path)
    (path / "chat_template.jinja").write_text("{{ messages }}\n")
    return path


def char_tokenizer():
    """A character-level tokenizer (99 ids) built offline, so tiny models can read text."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<eos>": 1, "\n": 2, "<pad>": 3}
    for code in range(32, 127):
        vocab[chr(code)] = len(vocab)
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex(".|\n"), "isolated")
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, unk_token="<unk>", eos_token="<eos>", pad_token="<pad>"
    )


@pytest.fixture(scope="session")
def text_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("text") / "sample.txt"
    path.write_text("The quick brown fox jumps over the lazy dog. " * 40)
    return path


def build_gemma3n_text(path: Path, seed: int = 0) -> Path:
    from transformers import AutoModelForCausalLM, Gemma3nTextConfig

    config = Gemma3nTextConfig(
        vocab_size=128,
        vocab_size_per_layer_input=128,
        hidden_size=64,
        hidden_size_per_layer_input=8,
        intermediate_size=[128, 128, 256, 256],
        num_hidden_layers=4,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=32,
        num_kv_shared_layers=2,
        layer_types=["sliding_attention", "full_attention"] * 2,
        sliding_window=16,
        activation_sparsity_pattern=[0.95, 0.0, 0.0, 0.0],
        laurel_rank=4,
        altup_num_inputs=2,
    )
    torch.manual_seed(seed)
    AutoModelForCausalLM.from_config(config, dtype=torch.float32).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def llama(tmp_path_factory) -> Path:
    return build_llama(tmp_path_factory.mktemp("llama") / "dense")


@pytest.fixture(scope="session")
def gemma3n(tmp_path_factory) -> Path:
    return build_gemma3n_text(tmp_path_factory.mktemp("gemma3n") / "dense")


@pytest.fixture(scope="session")
def llama_parent(llama, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("llama-parent") / "parent"
    code, _, stderr = run_matcli("quantize", str(llama), "-o", str(out), "-q")
    assert code == 0, stderr
    return out


def run_matcli(*args: str) -> tuple[int, str, str]:
    """Run the CLI in-process, as `matcli ARGS`: (exit code, stdout, stderr)."""
    import contextlib
    import io

    from matcli.cli import main

    stdout, stderr = io.StringIO(), io.StringIO()
    argv = sys.argv
    sys.argv = ["matcli", *args]
    code = 0
    try:
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            main()
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally:
        sys.argv = argv
    return code, stdout.getvalue(), stderr.getvalue()


def tree_digest(path: Path) -> str:
    """Names, link targets and bytes of everything under path (links are not followed)."""
    h = hashlib.sha256()
    for p in sorted(path.rglob("*")):
        h.update(p.relative_to(path).as_posix().encode())
        if p.is_symlink():
            h.update(b"->" + os.readlink(p).encode())
        elif p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()


def assert_refused(
    args: list[str], output: Path, match: str, code: int = 2, inputs: list[Path] = ()
) -> None:
    """Bad input: exit `code`, exactly one `error:` line containing `match`, no traceback,
    nothing at `output` or beside it, and every input unchanged."""
    before = [tree_digest(p) for p in inputs]
    exit_code, stdout, stderr = run_matcli(*args)
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert exit_code == code, stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    assert match in lines[0], lines[0]
    assert "Traceback" not in stderr + stdout
    assert not output.exists() or not any(output.iterdir())
    assert not list(output.parent.glob(f".{output.name}.matcli-*"))
    assert [tree_digest(p) for p in inputs] == before


def logits_of(
    model_path: Path, tokens: torch.Tensor, state_dict: dict | None = None, base: Path | None = None
) -> torch.Tensor:
    """Logits of a folder loaded by stock transformers, or of `base` carrying `state_dict`."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base or model_path, dtype=torch.float32)
    if state_dict is not None:
        model.load_state_dict(state_dict, strict=True)
    model.eval()
    with torch.no_grad():
        return model(tokens).logits


def build_gemma3n_35(path: Path, seed: int = 0) -> Path:
    """A scaled-down Gemma 3n E4B: the same 35 layers, layer types, KV sharing (15 layers) and
    activation sparsity (first 10), every width divided by 128 (FFN 16384 -> 128)."""
    from transformers import AutoModelForCausalLM, Gemma3nTextConfig

    config = Gemma3nTextConfig(
        vocab_size=128,
        vocab_size_per_layer_input=64,
        hidden_size=32,
        hidden_size_per_layer_input=4,
        intermediate_size=[128] * 35,
        num_hidden_layers=35,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        num_kv_shared_layers=15,
        layer_types=(["sliding_attention"] * 4 + ["full_attention"]) * 7,
        sliding_window=16,
        activation_sparsity_pattern=[0.95] * 10 + [0.0] * 25,
        laurel_rank=4,
        altup_num_inputs=2,
    )
    torch.manual_seed(seed)
    AutoModelForCausalLM.from_config(config, dtype=torch.float32).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def gemma3n_35(tmp_path_factory) -> Path:
    return build_gemma3n_35(tmp_path_factory.mktemp("gemma3n-35") / "dense")


def build_sentence_transformer(path: Path, seed: int = 0) -> Path:
    """A tiny BERT sentence-transformers folder (Transformer, mean Pooling, Normalize), offline."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.models import Normalize, Pooling, Transformer
    from transformers import BertConfig, BertModel

    bert = path.parent / (path.name + "-bert")
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=99,
        hidden_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=96,
        max_position_embeddings=128,
    )
    BertModel(config).save_pretrained(bert)
    char_tokenizer().save_pretrained(bert)
    transformer = Transformer(str(bert), max_seq_length=64)
    model = SentenceTransformer(
        modules=[transformer, Pooling(48, pooling_mode="mean"), Normalize()], device="cpu"
    )
    model.save(str(path))
    return path


@pytest.fixture(scope="session")
def sentence_model(tmp_path_factory) -> Path:
    return build_sentence_transformer(tmp_path_factory.mktemp("st") / "model")


def free_port() -> str:
    """A TCP port nobody listens on now, for a torchrun rendezvous (a fixed port can still be
    held in TIME_WAIT by the previous run)."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return str(probe.getsockname()[1])
