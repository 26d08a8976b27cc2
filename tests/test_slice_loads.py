"""The central invariant: a sliced folder loads with stock transformers, and the weights it
materializes (and so its logits) equal matcli's dequant(S(Q(w, c), r))."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import run_matcli

from matcli.checkpoint.reader import ModelFolder
from matcli.quant.reference import dequantized_state_dict


def expected_weights(
    parent: Path, bits: dict[str, int] | int, extra_precision: bool = False
) -> dict[str, torch.Tensor]:
    """matcli's reference: every tensor of the parent, quantized Linears as dequant(S(q, r))."""
    with ModelFolder(parent) as folder:
        return dequantized_state_dict(folder, bits, extra_precision)


def load(path: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


def check_invariant(dense: Path, sliced: Path, expected: dict[str, torch.Tensor]) -> None:
    model = load(sliced)
    params = dict(model.named_parameters())
    for name, weight in expected.items():
        if name in params:
            assert torch.equal(params[name].detach(), weight.to(params[name].dtype)), name
    reference = load(dense)
    missing, unexpected = reference.load_state_dict(expected, strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}
    tokens = torch.randint(0, 128, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        got, want = model(tokens).logits, reference(tokens).logits
    assert torch.allclose(got, want, rtol=0, atol=1e-6), (got - want).abs().max()


@pytest.fixture(scope="module")
def gemma3n_parent(gemma3n, tmp_path_factory):
    out = tmp_path_factory.mktemp("g3n-parent") / "parent"
    code, _, err = run_matcli("quantize", str(gemma3n), "-o", str(out), "--group-size", "32", "-q")
    assert code == 0, err
    return out


@pytest.mark.parametrize("fmt", ["compressed-tensors", "dense"])
def test_llama_slices_load_and_match(llama, llama_parent, tmp_path, fmt):
    out = tmp_path / "slices"
    code, _, err = run_matcli(
        "slice", str(llama_parent), "--bits", "8,4,3,2", "--format", fmt, "-o", str(out), "-q"
    )
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["int2", "int3", "int4", "int8"]
    for r in (8, 4, 3, 2):
        config = json.loads((out / f"int{r}" / "config.json").read_text())
        assert config["matcli"]["bits"] == r
        if fmt == "dense":
            assert "quantization_config" not in config
        else:
            assert (
                config["quantization_config"]["config_groups"]["group_0"]["weights"]["num_bits"]
                == r
            )
        check_invariant(llama, out / f"int{r}", expected_weights(llama_parent, r))


def test_parent_itself_loads_as_int8(llama, llama_parent):
    check_invariant(llama, llama_parent, expected_weights(llama_parent, 8))


@pytest.mark.parametrize("fmt", ["compressed-tensors", "dense"])
def test_gemma3n_text_slices_load_and_match(gemma3n, gemma3n_parent, tmp_path, fmt):
    out = tmp_path / "sliced"
    code, _, err = run_matcli(
        "slice", str(gemma3n_parent), "--bits", "8,4,3,2", "--format", fmt, "-o", str(out), "-q"
    )
    assert code == 0, err
    for r in (8, 4, 3, 2):
        check_invariant(gemma3n, out / f"int{r}", expected_weights(gemma3n_parent, r))


def test_attention_and_group_quantization(llama, tmp_path):
    parent = tmp_path / "parent"
    code, _, err = run_matcli(
        "quantize",
        str(llama),
        "-o",
        str(parent),
        "--layers",
        "ffn,attention",
        "--group-size",
        "16",
        "-q",
    )
    assert code == 0, err
    config = json.loads((parent / "config.json").read_text())
    assert "self_attn" in config["quantization_config"]["config_groups"]["group_0"]["targets"][0]
    out = tmp_path / "int3"
    assert run_matcli("slice", str(parent), "--bits", "3", "-o", str(out), "-q")[0] == 0
    check_invariant(llama, out, expected_weights(parent, 3))


def test_asymmetric_parent_slices_exactly_as_dense_only(llama, tmp_path):
    parent = tmp_path / "parent"
    assert (
        run_matcli("quantize", str(llama), "-o", str(parent), "--scheme", "asymmetric", "-q")[0]
        == 0
    )
    code, _, err = run_matcli("slice", str(parent), "--bits", "2", "-o", str(tmp_path / "ct"))
    assert code == 2 and "--format dense" in err and not (tmp_path / "ct").exists()
    out = tmp_path / "dense2"
    assert (
        run_matcli("slice", str(parent), "--bits", "2", "--format", "dense", "-o", str(out), "-q")[
            0
        ]
        == 0
    )
    check_invariant(llama, out, expected_weights(parent, 2))


def test_extra_precision_stores_r_plus_one_bits(llama, llama_parent, tmp_path):
    out = tmp_path / "ep2"
    assert (
        run_matcli(
            "slice", str(llama_parent), "--bits", "2", "--extra-precision", "-o", str(out), "-q"
        )[0]
        == 0
    )
    config = json.loads((out / "config.json").read_text())
    assert config["quantization_config"]["config_groups"]["group_0"]["weights"]["num_bits"] == 3
    assert config["matcli"]["storage_bits"] == 3 and config["matcli"]["extra_precision"]
    fraction = config["matcli"]["extra_bucket_fraction"]
    assert 0 < fraction < 0.2
    expected = expected_weights(llama_parent, 2, extra_precision=True)
    check_invariant(llama, out, expected)
    # The extra bucket is 2^r on the r-bit grid: one step above the clamped maximum.
    clamped = expected_weights(llama_parent, 2)
    diff = sum(int((expected[n] != clamped[n]).sum()) for n in expected if ".mlp." in n)
    assert diff > 0


def test_mix_n_match_pyramid_loads(llama, llama_parent, tmp_path):
    out = tmp_path / "pyramid"
    code, _, err = run_matcli(
        "slice", str(llama_parent), "--bits-config", "pyramid", "-o", str(out), "-q"
    )
    assert code == 0, err
    config = json.loads((out / "config.json").read_text())
    layer_bits = config["matcli"]["layer_bits"]
    assert layer_bits == {"0": 8, "1": 4}  # 2 layers, widths {8, 4, 2}: middle-most first
    groups = config["quantization_config"]["config_groups"]
    assert sorted(g["weights"]["num_bits"] for g in groups.values()) == [4, 8]
    widths = {
        f"model.layers.{i}.mlp.{p}": b
        for i, b in ((0, 8), (1, 4))
        for p in ("gate_proj", "up_proj", "down_proj")
    }
    check_invariant(llama, out, expected_weights(llama_parent, widths))


def test_slicing_is_deterministic(llama_parent, tmp_path):
    for name in ("a", "b"):
        assert (
            run_matcli("slice", str(llama_parent), "--bits", "2", "-o", str(tmp_path / name), "-q")[
                0
            ]
            == 0
        )
    for fname in ("model.safetensors", "config.json"):
        assert (tmp_path / "a" / fname).read_bytes() == (tmp_path / "b" / fname).read_bytes()


def test_sharded_output_and_aux_files(llama, llama_parent, tmp_path):
    out = tmp_path / "sharded"
    assert (
        run_matcli(
            "slice",
            str(llama_parent),
            "--bits",
            "4",
            "--max-shard-size",
            "20000",
            "-o",
            str(out),
            "-q",
        )[0]
        == 0
    )
    shards = sorted(p.name for p in out.glob("*.safetensors"))
    assert len(shards) > 1 and (out / "model.safetensors.index.json").exists()
    assert (out / "tokenizer_config.json").read_bytes() == (
        llama / "tokenizer_config.json"
    ).read_bytes()
    assert (out / "chat_template.jinja").read_bytes() == (
        llama / "chat_template.jinja"
    ).read_bytes()
    check_invariant(llama, out, expected_weights(llama_parent, 4))


def test_several_widths_read_the_parent_once(llama_parent, tmp_path, monkeypatch):
    from matcli.checkpoint import reader
    from matcli.checkpoint.atomic import staged_folder
    from matcli.options import SliceOptions
    from matcli.quant.slicing import plan_slice

    read = []
    original = reader.read_range
    monkeypatch.setattr(
        reader,
        "read_range",
        lambda fd, start, n, path, **kw: read.append(n) or original(fd, start, n, path, **kw),
    )

    def bytes_read(bits: list[int]) -> int:
        read.clear()
        plan = plan_slice(
            SliceOptions(
                parent=llama_parent, output=tmp_path / str(bits), bits=bits, chunk_size=4096
            )
        )
        with staged_folder(tmp_path / str(bits), force=False) as staging:
            plan.write(staging, lambda n: None)
        plan.source.close()
        return sum(read)

    one, three = bytes_read([4]), bytes_read([4, 3, 2])
    assert three == one


def test_mix_n_match_under_dequantize_true(llama, llama_parent, tmp_path):
    """transformers 5.25 with dequantize=True decompresses every Linear with one config group's
    scheme (integrations/compressed_tensors.py get_dense_scheme: the first group), so no order
    of the groups works: widest first (matcli's order) fails with a size mismatch, narrowest
    first loads the wider layers wrong. The default (dequantize=False), followed by
    compressed-tensors' decompress_model when plain weights are wanted, and `--format dense`
    give the exact weights (docs/formats.md)."""
    from transformers import AutoModelForCausalLM, CompressedTensorsConfig

    widths = {
        f"model.layers.{i}.mlp.{p}": b
        for i, b in ((0, 8), (1, 4))
        for p in ("gate_proj", "up_proj", "down_proj")
    }
    expected = expected_weights(llama_parent, widths)
    mixed, narrow_first = tmp_path / "mixed", tmp_path / "narrow-first"
    for fmt, out in (("compressed-tensors", mixed), ("dense", tmp_path / "dense")):
        code, _, err = run_matcli(
            "slice", str(llama_parent), "--bits-config", "pyramid", "--format", fmt, "-o", str(out)
        )
        assert code == 0, err
    check_invariant(llama, tmp_path / "dense", expected)

    def load_dequantized(path: Path):
        dequantize = CompressedTensorsConfig(dequantize=True)
        return AutoModelForCausalLM.from_pretrained(
            path, dtype=torch.float32, quantization_config=dequantize
        )

    with pytest.raises(RuntimeError, match="ignore_mismatched_sizes"):
        load_dequantized(mixed)
    shutil.copytree(mixed, narrow_first)
    config = json.loads((narrow_first / "config.json").read_text())
    groups = config["quantization_config"]["config_groups"]
    config["quantization_config"]["config_groups"] = dict(reversed(groups.items()))
    (narrow_first / "config.json").write_text(json.dumps(config))
    params = dict(load_dequantized(narrow_first).named_parameters())
    wrong = {n for n in widths if not torch.equal(params[n + ".weight"], expected[n + ".weight"])}
    assert wrong == {n for n, b in widths.items() if b == 8}
    # The workaround: load as usual, then decompress module by module (each Linear carries its
    # own group's scheme), which leaves plain dense weights.
    model = load(mixed)
    model.hf_quantizer.compressor.decompress_model(model)
    params = dict(model.named_parameters())
    assert not [n for n in params if n.endswith("weight_packed")]
    for name in widths:
        assert torch.equal(params[name + ".weight"], expected[name + ".weight"]), name
