"""`slice --format gguf`: the file transformers (and, with -m llamacpp, llama.cpp) loads holds
exactly matcli's dequantized slice; layouts without an exact ggml type are refused."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_DECODER, assert_refused, build_llama, run_matcli

from matcli.checkpoint.reader import ModelFolder
from matcli.quant import gguf_format
from matcli.quant.gguf_runtime import llama_cpp_model
from matcli.quant.reference import dequantized_state_dict

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "gguf-parent-g32.yaml"


def bpe_tokenizer():
    """A byte-level BPE tokenizer trained offline (llama.cpp's `gpt2` tokenizer model)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(["The quick brown fox jumps over the lazy dog. " * 20], trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, eos_token="<|endoftext|>", bos_token="<|endoftext|>"
    )


def spm_tokenizer():
    """A Llama 2 / Mistral-style tokenizer.json built offline: BPE over '▁'-marked text with
    byte fallback (<0x00>..<0xFF> at ids 3..258), llama.cpp's `llama` tokenizer model."""
    from tokenizers import Tokenizer, decoders, models, normalizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    trained = Tokenizer(models.BPE())
    trained.normalizer = normalizer
    trained.train_from_iterator(
        ["The quick brown fox jumps over the lazy dog. " * 20], trainers.BpeTrainer(vocab_size=60)
    )
    model = json.loads(trained.to_str())["model"]
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2} | {f"<0x{b:02X}>": 3 + b for b in range(256)}
    for token, _ in sorted(model["vocab"].items(), key=lambda item: item[1]):
        vocab.setdefault(token, len(vocab))
    merges = [tuple(m) for m in model["merges"]]
    tokenizer = Tokenizer(
        models.BPE(vocab, merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True)
    )
    tokenizer.normalizer = normalizer
    tokenizer.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
         decoders.Strip(" ", 1, 0)]
    )  # fmt: skip
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", 1)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )


def build_bf16_llama(path: Path) -> Path:
    """A tiny bf16 Llama with a BPE tokenizer: bf16 scales, like real checkpoints."""
    from transformers import AutoModelForCausalLM

    build_llama(path, vocab_size=320)
    AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16).save_pretrained(path)
    bpe_tokenizer().save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def gguf_dense(tmp_path_factory) -> Path:
    return build_bf16_llama(tmp_path_factory.mktemp("gguf") / "dense")


def make_parent(model: Path, out: Path, *args: str) -> Path:
    code, _, err = run_matcli("quantize", str(model), "-o", str(out), "-q", *args)
    assert code == 0, err
    return out


@pytest.fixture(scope="session")
def gguf_parent(gguf_dense) -> Path:
    """The documented path to GGUF: a parent made with recipes/gguf-parent-g32.yaml."""
    return make_parent(gguf_dense, gguf_dense.parent / "parent", "--recipe", str(RECIPE))


@pytest.fixture(scope="session")
def channel_parent(gguf_dense) -> Path:
    """matcli's default parent: one scale per output channel, FFN only."""
    return make_parent(gguf_dense, gguf_dense.parent / "channel-parent")


def slice_gguf(parent: Path, out: Path, *args: str) -> Path:
    code, _, err = run_matcli("slice", str(parent), "--format", "gguf", "-o", str(out), "-q", *args)
    assert code == 0, err
    return out


def loaded_weights(path: Path) -> dict[str, torch.Tensor]:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype=torch.float32
    )
    return model.state_dict()


def reference(parent: Path, bits) -> dict[str, torch.Tensor]:
    """matcli's dequantized slice, the product d * q rounded in float32 as ggml does."""
    with ModelFolder(parent) as folder:
        state = dequantized_state_dict(folder, bits, scale_dtype=torch.float32)
    return {name: t.float() for name, t in state.items()}


def assert_served_like_reference(parent: Path, out: Path, bits) -> None:
    """transformers' GGUF model has matcli's dequantized weights bit for bit, and the same
    logits as the dense model given those weights."""
    from transformers import AutoModelForCausalLM

    loaded, expected = loaded_weights(out), reference(parent, bits)
    assert set(loaded) == set(expected)
    for name, tensor in expected.items():
        assert torch.equal(loaded[name], tensor), name
    tokens = torch.randint(0, 300, (2, 12), generator=torch.Generator().manual_seed(0))
    base = AutoModelForCausalLM.from_pretrained(parent.parent / "dense", dtype=torch.float32)
    base.load_state_dict(expected)
    served = AutoModelForCausalLM.from_pretrained(
        out.parent, gguf_file=out.name, dtype=torch.float32
    )
    with torch.no_grad():
        assert torch.equal(served(tokens).logits, base(tokens).logits)


@pytest.mark.parametrize("bits,ggml_type", [(8, "Q8_0"), (4, "Q4_0")])
def test_transformers_loads_exactly_matcli_slice(gguf_parent, tmp_path, bits, ggml_type):
    import gguf

    out = slice_gguf(gguf_parent, tmp_path / f"model-{bits}.gguf", "--bits", str(bits))
    reader = gguf.GGUFReader(out)
    types = {t.name: t.tensor_type.name for t in reader.tensors}
    assert types["blk.0.attn_q.weight"] == types["blk.1.ffn_down.weight"] == ggml_type
    assert types["token_embd.weight"] == "BF16" and types["output_norm.weight"] == "F32"
    assert_served_like_reference(gguf_parent, out, bits)


def test_metadata_manifest_and_tokenizer(gguf_parent, tmp_path):
    import gguf

    out = slice_gguf(gguf_parent, tmp_path / "m.gguf", "--bits", "8")
    fields = gguf.GGUFReader(out).fields

    def value(key):
        return fields[key].contents()

    assert value("general.architecture") == "llama"
    assert value("llama.block_count") == 2 and value("llama.attention.head_count_kv") == 2
    assert value("llama.rope.dimension_count") == 16 and value("llama.vocab_size") == 320
    assert value("tokenizer.ggml.model") == "gpt2" and len(value("tokenizer.ggml.tokens")) == 320
    assert value("tokenizer.ggml.merges") and value("tokenizer.chat_template") == "{{ messages }}\n"
    manifest = json.loads(value("matcli.manifest"))
    assert manifest["command"] == "slice" and manifest["slice"]["format"] == "gguf"
    assert manifest["command_line"][:2] == ["matcli", "slice"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.gguf"]  # nothing beside it


def test_mixed_widths_get_a_type_each(gguf_parent, tmp_path):
    import gguf

    bits_file = tmp_path / "bits.yaml"
    bits_file.write_text("layers: {0: 8, 1: 4}\n")
    out = slice_gguf(gguf_parent, tmp_path / "mixed.gguf", "--bits-config", str(bits_file))
    types = {t.name: t.tensor_type.name for t in gguf.GGUFReader(out).tensors}
    assert types["blk.0.ffn_up.weight"] == "Q8_0" and types["blk.1.ffn_up.weight"] == "Q4_0"
    expected = reference(gguf_parent, {m: 8 if ".0." in m else 4 for m in _linears(gguf_parent)})
    loaded = loaded_weights(out)
    assert all(torch.equal(loaded[n], t) for n, t in expected.items())


def _linears(parent: Path) -> list[str]:
    from matcli.quant.ct_format import packed_linears

    with ModelFolder(parent) as folder:
        return list(packed_linears(folder))


def test_requantize_reports_the_added_error(channel_parent, tmp_path):
    """A per-channel parent (the default) has no exact ggml type: --requantize makes Q8_0
    blocks with gguf-py and reports the relative RMS error it added."""
    out = tmp_path / "r.gguf"
    code, stdout, err = run_matcli(
        "slice", str(channel_parent), "--bits", "2", "--format", "gguf", "-o", str(out),
        "--requantize", "--json",
    )  # fmt: skip
    assert code == 0, err
    report = json.loads(stdout)["report"]
    assert report["re-quantized tensors"] == 6 and report["Q4_0 tensors"] == 6
    assert 0 < report["re-quantization relative RMS error"] < 0.1
    # The unquantized attention (BF16, rows of q/k permuted for llama.cpp) loads back exactly.
    loaded, parent = loaded_weights(out), reference(channel_parent, 2)
    attention = [n for n in parent if "self_attn" in n]
    assert len(attention) == 8 and all(torch.equal(loaded[n], parent[n]) for n in attention)


def test_block_encoding_matches_gguf_py():
    """Q8_0 / Q4_0 bytes from codes and scales dequantize, through gguf-py, to d * q."""
    import gguf

    rng = np.random.default_rng(0)
    scale = rng.uniform(0.01, 1, (3, 2)).astype(np.float16)
    for type_name, bits in (("Q8_0", 8), ("Q4_0", 4)):
        codes = rng.integers(0, 1 << bits, (3, 64), dtype=np.uint8)
        blocks = gguf_format.exact_blocks(type_name, codes, bits, scale)
        back = gguf.quants.dequantize(blocks, gguf.GGMLQuantizationType[type_name])
        signed = codes.astype(np.float32) - (1 << (bits - 1))
        assert np.array_equal(back, np.repeat(scale.astype(np.float32), 32, axis=1) * signed)


def test_family_names_agree_with_gguf_py(gguf_parent, tmp_path):
    """The family's tensor names are the ones gguf-py's own map gives for llama."""
    assert_names_from_gguf_py(
        gguf_parent, slice_gguf(gguf_parent, tmp_path / "n.gguf", "--bits", "8")
    )


def assert_names_from_gguf_py(parent: Path, out: Path) -> None:
    """Every tensor name in the file is gguf-py's name (its tensor map for the file's
    architecture) of a checkpoint tensor, and every checkpoint tensor has one there."""
    import gguf

    reader = gguf.GGUFReader(out)
    arch = reader.fields["general.architecture"].contents()
    model_arch = {name: a for a, name in gguf.MODEL_ARCH_NAMES.items()}[arch]
    mapping = gguf.get_tensor_name_map(model_arch, 64)
    with ModelFolder(parent) as folder:
        hf = {n.replace(".weight_packed", ".weight") for n in folder.tensors}
    hf = {n for n in hf if n.endswith((".weight", ".bias"))}
    expected = {mapping.get_name(n, try_suffixes=(".weight", ".bias")) for n in hf}
    assert None not in expected
    assert {t.name for t in reader.tensors} == expected


def build_bf16_family(path: Path, config, tokenizer) -> Path:
    """A tiny bf16 model of any family, every 1-D tensor (norms, biases) random so that a
    norm or bias written wrongly shows."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    with torch.no_grad():
        for tensor in model.parameters():
            if tensor.dim() == 1:
                tensor.copy_(torch.randn_like(tensor) * 0.2 + 1)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    (path / "chat_template.jinja").write_text("{{ messages }}\n")
    return path


# The tests' tiny decoder with room for the tokenizers' 300-odd tokens.
TINY_BPE = {**TINY_DECODER, "vocab_size": 320}


def family_model(family: str):
    """(config, llama.cpp architecture, tokenizer) of a tiny model of each family."""
    import transformers

    models = {
        "qwen2": lambda: (transformers.Qwen2Config(**TINY_BPE), "qwen2", bpe_tokenizer()),
        # transformers' qwen3 GGUF reader ignores attention.key_length and keeps Qwen3's
        # default head_dim, 128 (every released Qwen3's); llama.cpp reads the key.
        "qwen3": lambda: (
            transformers.Qwen3Config(**TINY_BPE, head_dim=128),
            "qwen3",
            bpe_tokenizer(),
        ),
        "mistral": lambda: (transformers.MistralConfig(**TINY_BPE), "llama", spm_tokenizer()),
    }
    return models[family]()


def family_parent(family: str, folder: Path) -> tuple[Path, str]:
    """A group-32 parent of the family's tiny model, and its llama.cpp architecture."""
    config, arch, tokenizer = family_model(family)
    dense = build_bf16_family(folder / "dense", config, tokenizer)
    return make_parent(dense, folder / "parent", "--recipe", str(RECIPE)), arch


def assert_tokenizer_as_converter(parent: Path, out: Path) -> None:
    """The vocabulary is what convert_hf_to_gguf.py writes for the tokenizer's kind:
    `llama` with gguf-py's LlamaHfVocab rows (tokens, scores, types) padded to vocab_size,
    or `gpt2` with merges; and transformers' GGUF tokenizer encodes text as the original."""
    import gguf
    from transformers import AutoTokenizer

    fields = gguf.GGUFReader(out).fields
    tokens = fields["tokenizer.ggml.tokens"].contents()
    if fields["tokenizer.ggml.model"].contents() == "llama":
        rows = list(gguf.LlamaHfVocab(parent).all_tokens())
        assert tokens[: len(rows)] == [text.decode() for text, _, _ in rows]
        types = fields["tokenizer.ggml.token_type"].contents()
        assert types[: len(rows)] == [int(kind) for _, _, kind in rows]
        assert fields["tokenizer.ggml.scores"].contents()[: len(rows)] == [-1000.0] * len(rows)
        assert types[3:259] == [int(gguf.TokenType.BYTE)] * 256
    else:
        assert fields["tokenizer.ggml.merges"].contents()
    original = AutoTokenizer.from_pretrained(parent)
    served = AutoTokenizer.from_pretrained(out.parent, gguf_file=out.name)
    text = "The lazy fox jumps over the quick dog."
    assert served(text).input_ids == original(text).input_ids


@pytest.mark.parametrize("family", ["qwen2", "qwen3", "mistral"])
def test_other_families_load_exactly(family, tmp_path):
    """Each family's GGUF (Q8_0 and Q4_0 of a group-32 parent): llama.cpp's names and
    architecture, loaded by transformers with matcli's weights and logits."""
    import gguf

    parent, arch = family_parent(family, tmp_path)
    dense = parent.parent / "dense"
    for bits, ggml_type in ((8, "Q8_0"), (4, "Q4_0")):
        out = slice_gguf(parent, tmp_path / f"{family}-{bits}.gguf", "--bits", str(bits))
        assert_tokenizer_as_converter(parent, out)
        reader = gguf.GGUFReader(out)
        fields = reader.fields
        assert fields["general.architecture"].contents() == arch
        # key_length from an explicit head_dim (TextModel); rope dimensions: LlamaModel only
        head_dim = json.loads((dense / "config.json").read_text()).get("head_dim")
        key_length = fields.get(f"{arch}.attention.key_length")
        assert (key_length and key_length.contents()) == head_dim
        assert (f"{arch}.rope.dimension_count" in fields) == (arch == "llama")
        types = {t.name: t.tensor_type.name for t in reader.tensors}
        assert types["blk.1.attn_k.weight"] == types["blk.0.ffn_down.weight"] == ggml_type
        assert_names_from_gguf_py(parent, out)
        assert_served_like_reference(parent, out, bits)


def test_refusals(gguf_parent, channel_parent, tmp_path):
    out = tmp_path / "x.gguf"
    parent_args = ["slice", str(channel_parent), "--format", "gguf", "-o", str(out)]
    # per channel (the default parent): no exact type
    assert_refused(
        [*parent_args, "--bits", "8"], out, "gguf-parent-g32.yaml", inputs=[channel_parent]
    )
    # int2 from a group-32 parent: no exact type either
    args = ["slice", str(gguf_parent), "--format", "gguf", "-o", str(out)]
    assert_refused([*args, "--bits", "2"], out, "int2 has no exact ggml type")
    assert_refused([*args, "--bits", "4", "--extra-precision"], out, "extra precision")
    bad_name = tmp_path / "model.bin"
    assert_refused([*args[:-2], "-o", str(bad_name), "--bits", "8"], bad_name, "ending in .gguf")
    assert_refused([*args, "--bits", "8,4"], out, "one width")
    folder = tmp_path / "ct"
    assert_refused(["slice", str(gguf_parent), "-o", str(folder), "--bits", "8", "--requantize"],
                   folder, "--format gguf only")  # fmt: skip


def test_dry_run_writes_nothing_and_existing_file_needs_force(gguf_parent, tmp_path):
    out = tmp_path / "d.gguf"
    args = ["slice", str(gguf_parent), "--bits", "4", "--format", "gguf", "-o", str(out)]
    code, stdout, err = run_matcli(*args, "--dry-run", "--json")
    assert code == 0, err
    plan = json.loads(stdout)["outputs"][0]
    assert plan["transforms"]["int8 -> int4 Q4_0 (exact)"]["tensors"] == 10
    assert not list(tmp_path.iterdir())
    out.write_bytes(b"keep")
    code, _, err = run_matcli(*args, "-q")
    assert code == 2 and "exists" in err and out.read_bytes() == b"keep"
    assert run_matcli(*args, "-q", "--force")[0] == 0 and out.read_bytes()[:4] == b"GGUF"


def test_family_without_gguf_data_is_refused(gemma3n, tmp_path):
    parent = tmp_path / "parent"
    assert run_matcli("quantize", str(gemma3n), "-o", str(parent), "-q")[0] == 0
    out = tmp_path / "g.gguf"
    args = ["slice", str(parent), "--bits", "8", "--format", "gguf", "-o", str(out)]
    assert_refused([*args, "--requantize"], out, "has no GGUF metadata yet", inputs=[parent])


def test_unreadable_sentencepiece_style_tokenizer_is_refused(gguf_parent, tmp_path):
    """Byte fallback over a byte-level tokenizer is neither kind gguf-py reads: refused."""
    import shutil

    parent = tmp_path / "parent"
    shutil.copytree(gguf_parent, parent)
    tokenizer = json.loads((parent / "tokenizer.json").read_text())
    tokenizer["model"]["byte_fallback"] = True
    (parent / "tokenizer.json").write_text(json.dumps(tokenizer))
    out = tmp_path / "s.gguf"
    args = ["slice", str(parent), "--bits", "8", "--format", "gguf", "-o", str(out)]
    assert_refused(args, out, "cannot read it as a SentencePiece-style", inputs=[parent])


def test_every_gguf_block_resolves():
    """Every family's gguf: block, with extends: resolved, is a valid GgufFamily; an
    extends: naming no family is refused in one line."""
    from matcli.arch import families
    from matcli.errors import MatcliError
    from matcli.quant import gguf_metadata

    blocks = {n: gguf_metadata.resolved_block(n) for n, f in families().items() if f.gguf}
    assert {n: gguf_metadata.GgufFamily.model_validate(b).arch for n, b in blocks.items()} == {
        "llama": "llama", "mistral": "llama", "qwen2": "qwen2", "qwen3": "qwen3"
    }  # fmt: skip
    assert "self_attn.q_proj.bias" not in blocks["qwen3"]["layer_tensors"]
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(families()["qwen3"].gguf, "extends", "nope")
        with pytest.raises(MatcliError, match="extends unknown family 'nope'"):
            gguf_metadata.resolved_block("qwen3")


def test_tokenizer_kind_the_converter_does_not_write_is_refused(tmp_path):
    """llama.cpp's Qwen2Model writes only gpt2 vocabularies: a SentencePiece-style one is
    refused rather than written as something its converter never makes."""
    from matcli.errors import MatcliError
    from matcli.quant.gguf_metadata import GgufFamily, resolved_block, vocabulary

    spm_tokenizer().save_pretrained(tmp_path)
    qwen2 = GgufFamily.model_validate(resolved_block("qwen2"))
    with pytest.raises(MatcliError, match="not one llama.cpp's qwen2 converter writes"):
        vocabulary(tmp_path, 320, qwen2)
    llama = GgufFamily.model_validate(resolved_block("llama"))
    assert vocabulary(tmp_path, 320, llama).model == "llama"


def test_inexact_fp16_scale_is_refused():
    """A bf16 scale below fp16's range is not silently rounded: it counts as inexact."""
    scale = np.array([2.0**-30, 0.5, 1e6], dtype=np.float32)
    _, inexact = gguf_format.fp16_scales(scale)
    assert inexact == 2


# --- opt-in: llama.cpp itself (pytest -m llamacpp) ------------------------------------------

WHEELS = Path.home() / ".cache" / "llamacpp-wheels"


def llama_cpp_module():
    """llama-cpp-python, built once from its PyPI sdist (gcc, cmake) and cached as a wheel."""
    import os
    import subprocess
    import sys

    try:
        import llama_cpp
    except ImportError:
        pip = [sys.executable, "-m", "pip"]
        if not list(WHEELS.glob("llama_cpp_python-*.whl")):
            env = {
                **os.environ,
                "CMAKE_ARGS": "-DGGML_NATIVE=ON",
                "CMAKE_BUILD_PARALLEL_LEVEL": "2",
            }
            subprocess.run(
                [*pip, "wheel", "--no-deps", "--no-binary", "llama-cpp-python", "-w", str(WHEELS),
                 "llama-cpp-python"], env=env, check=True,
            )  # fmt: skip
        wheel = sorted(WHEELS.glob("llama_cpp_python-*.whl"))[-1]
        subprocess.run([*pip, "install", str(wheel), "diskcache", "jinja2"], check=True)
        import llama_cpp
    return llama_cpp


@pytest.mark.llamacpp
@pytest.mark.parametrize("bits", [8, 4])
def test_llama_cpp_runs_matcli_gguf(gguf_parent, tmp_path, bits):
    out = slice_gguf(gguf_parent, tmp_path / f"m{bits}.gguf", "--bits", str(bits))
    assert_llama_cpp_matches(gguf_parent, out, bits)


@pytest.mark.llamacpp
@pytest.mark.parametrize("family", ["qwen2", "qwen3", "mistral"])
def test_llama_cpp_runs_other_families(family, tmp_path):
    """...and llama.cpp's tokenizer (gpt2 or llama model, byte fallback included) splits
    text as the original tokenizer does."""
    from transformers import AutoTokenizer

    parent, _ = family_parent(family, tmp_path)
    for bits in (8, 4):
        out = slice_gguf(parent, tmp_path / f"{family}-{bits}.gguf", "--bits", str(bits))
        assert_llama_cpp_matches(parent, out, bits)
    original = AutoTokenizer.from_pretrained(parent)
    text = "The quick brown fox jumps over the lazy dog. é"
    assert llama_cpp_model(out, n_ctx=64).tokenize(text.encode()) == original(text).input_ids


def assert_llama_cpp_matches(parent: Path, out: Path, bits: int) -> None:
    """llama.cpp's logits equal the dequantized reference's up to its own rounding (it
    quantizes activations to 8 bits for Q8_0/Q4_0 products), and it generates."""
    from transformers import AutoModelForCausalLM

    tokens = [int(t) for t in np.random.default_rng(0).integers(0, 300, 32)]
    llama_cpp_module()  # built from the sdist once if missing
    llm = llama_cpp_model(out, n_ctx=64)
    llm.eval(tokens)
    got = np.array(llm.scores[: len(tokens)])
    base = AutoModelForCausalLM.from_pretrained(parent.parent / "dense", dtype=torch.float32)
    base.load_state_dict(reference(parent, bits))
    with torch.no_grad():
        expected = base(torch.tensor([tokens])).logits[0].numpy()
    assert np.abs(got - expected).max() < 0.02 * np.abs(expected).max()
    assert (got.argmax(-1) == expected.argmax(-1)).mean() >= 0.9
    llm.reset()
    generated = llm.generate(tokens[:4], temp=0.0)
    new = [next(generated) for _ in range(5)]
    assert new[0] == int(expected[3].argmax()) and all(0 <= t < 320 for t in new)
