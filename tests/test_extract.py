"""`matcli extract`: MatFormer submodels load with stock transformers and equal a model built
in memory from the same sliced config and weights; Gemma 3n's official rows validate."""

from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from conftest import run_matcli
from safetensors.torch import load_file, save_file

from matcli.matformer.ffn_spec import parse_layer_list

# Google's Gemma 3n slicing configs (google/gemma3n-slicing-configs), as: name, layers,
# effective params (B), MMLU, new layer indices at 16384 (the rest 8192), skipped layers.
OFFICIAL_ROWS = [
    ("Main model", 35, "3.98", "62.30%", "0-34", ""),
    ("Config for official E2B Model", 30, "1.91", "50.90%", "", "20-24"),
    ("Config for E1.96B (layer-level)", 30, "1.96", "53.40%", "4", "20-24"),
    ("Config for E2.54B (layer-level)", 35, "2.54", "55.40%", "4,20-24", ""),
    ("Config for E2.69B (layer-level)", 35, "2.69", "57.70%", "4,9,14,19-24", ""),
    ("Config for E2.98B (layer-level)", 35, "2.98", "59.50%", "15-24,30-34", ""),
    ("Config for E3.18B (layer-level)", 35, "3.18", "61.80%", "4,9-24,29,34", ""),
    ("Config for E3.39B (layer-level)", 35, "3.39", "63.00%", "4,9-29,34", ""),
    ("Config for E3.59B (layer-level)", 35, "3.59", "63.40%", "4-29,34", ""),
    ("Config for E3.79B (layer-level)", 35, "3.79", "63.40%", "4-34", ""),
    ("Config for E2.49B (block-level)", 35, "2.49", "54.50%", "20-24", ""),
    ("Config for E2.73B (block-level)", 35, "2.73", "57.10%", "15-24", ""),
    ("Config for E2.98B (block-level)", 35, "2.98", "59.50%", "10-24", ""),
    ("Config for E3.24B (block-level)", 35, "3.24", "60.70%", "10-29", ""),
    ("Config for E3.49B (block-level)", 35, "3.49", "61.40%", "5-29", ""),
    ("Config for E3.79B (block-level)", 35, "3.74", "62.00%", "5-34", ""),
]


def write_slicing_csv(path: Path, unit: str) -> Path:
    """The CSV in Google's format; `unit` is "2_048" for real widths, smaller when scaled down."""
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(
            [
                "name",
                "# Layers",
                "# Effective Params (B)",
                "MMLU PT accuracy",
                "FFN Hidden Dims",
                "Layers Skipped",
            ]
        )
        for name, layers, eff, mmlu, wide, skipped in OFFICIAL_ROWS:
            wide_set = set(parse_layer_list(wide)) if wide else set()
            dims = (
                "["
                + ", ".join(f"{unit} * {8 if i in wide_set else 4}" for i in range(layers))
                + "]"
            )
            skip = "[" + ", ".join(map(str, parse_layer_list(skipped))) + "]" if skipped else ""
            writer.writerow([name, layers, eff, mmlu, dims, skip])
    return path


def load(path: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


def reference_submodel(dense: Path, kept: list[int], widths: list[int]):
    """The submodel built independently: sliced config and weights, plain torch indexing."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = json.loads((dense / "config.json").read_text())
    state = load_file(dense / "model.safetensors")
    num_layers = config["num_hidden_layers"]
    new = {}
    for name, t in state.items():
        if ".layers." in name:
            prefix, rest = name.split(".layers.", 1)
            old, rel = rest.split(".", 1)
            if int(old) not in kept:
                continue
            n = kept.index(int(old))
            m = widths[n]
            if rel.startswith(("mlp.gate_proj", "mlp.up_proj")):
                t = t[:m]
            elif rel.startswith("mlp.down_proj"):
                t = t[:, :m]
            new[f"{prefix}.layers.{n}.{rel}"] = t
        elif name.endswith("embed_tokens_per_layer.weight"):
            p = config["hidden_size_per_layer_input"]
            new[name] = t.reshape(t.shape[0], num_layers, p)[:, kept].reshape(t.shape[0], -1)
        elif name.endswith("per_layer_model_projection.weight"):
            p = config["hidden_size_per_layer_input"]
            new[name] = t.reshape(num_layers, p, -1)[kept].reshape(-1, t.shape[1])
        else:
            new[name] = t
    config["num_hidden_layers"] = len(kept)
    if isinstance(config["intermediate_size"], list):
        config["intermediate_size"] = widths
        shared_from = num_layers - config["num_kv_shared_layers"]
        config["num_kv_shared_layers"] = sum(i >= shared_from for i in kept)
        config["activation_sparsity_pattern"] = [
            config["activation_sparsity_pattern"][i] for i in kept
        ]
    else:
        config["intermediate_size"] = widths[0]
    if "layer_types" in config:
        config["layer_types"] = [config["layer_types"][i] for i in kept]
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**config), dtype=torch.float32)
    missing, unexpected = model.load_state_dict(new, strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}, (missing, unexpected)
    model.tie_weights()
    return model.eval()


def assert_same_logits(a, b, vocab: int = 128):
    tokens = torch.randint(0, vocab, (2, 20), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        x, y = a(tokens).logits, b(tokens).logits
    assert torch.allclose(x, y, rtol=0, atol=1e-5), (x - y).abs().max()


def tensor_bytes(folder: Path) -> dict[str, bytes]:
    from matcli.checkpoint.reader import ModelFolder

    with ModelFolder(folder) as f:
        return {n: bytes(f.read_bytes(n, 0, t.nbytes)) for n, t in f.tensors.items()}


def edited_copy(model: Path, dest: Path, drop: tuple[str, ...] = (), **config_edits) -> Path:
    """A copy of `model` without the tensors `drop`, with config keys set (None: removed)."""
    copy = Path(shutil.copytree(model, dest))
    if drop:
        state = load_file(copy / "model.safetensors")
        for name in drop:
            del state[name]
        save_file(state, copy / "model.safetensors", metadata={"format": "pt"})
    config = json.loads((copy / "config.json").read_text())
    for key, value in config_edits.items():
        config.pop(key) if value is None else config.__setitem__(key, value)
    (copy / "config.json").write_text(json.dumps(config))
    return copy


def refused(args: tuple[str, ...], out: Path, message: str) -> None:
    """Bad input: exit 2, one line naming the problem, no traceback, nothing written."""
    code, _, err = run_matcli(*args)
    assert code == 2 and message in err and "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1, err
    assert not out.exists()


def dry_run_plan(*args: str) -> dict:
    code, out, err = run_matcli(*args, "--dry-run", "--json")
    assert code == 0, err
    return json.loads(out)


def config_changes(plan: dict) -> dict:
    return {c["key"]: c["after"] for c in plan["outputs"][0]["config_changes"]}


# --- Llama family ---------------------------------------------------------------------------


def test_identity_is_byte_identical(llama, tmp_path):
    out = tmp_path / "same"
    assert run_matcli("extract", str(llama), "-o", str(out), "--ffn-config", "xl", "-q")[0] == 0
    assert tensor_bytes(out) == tensor_bytes(llama)
    assert json.loads((out / "config.json").read_text())["intermediate_size"] == 128


@pytest.mark.parametrize("spec", ["0.5", "64", "l"])
def test_llama_uniform_half_width_loads_and_matches(llama, tmp_path, spec):
    out = tmp_path / "half"
    code, _, err = run_matcli("extract", str(llama), "-o", str(out), "--ffn-config", spec, "-q")
    assert code == 0, err
    assert json.loads((out / "config.json").read_text())["intermediate_size"] == 64
    assert_same_logits(load(out), reference_submodel(llama, [0, 1], [64, 64]))


def test_qwen2_uniform_extraction_loads(tmp_path):
    from transformers import AutoModelForCausalLM, Qwen2Config

    dense = tmp_path / "qwen2"
    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=128,
        hidden_size=64,
        intermediate_size=256,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    AutoModelForCausalLM.from_config(config, dtype=torch.float32).save_pretrained(dense)
    out = tmp_path / "q"
    assert (
        run_matcli(
            "extract", str(dense), "-o", str(out), "--ffn-config", "m", "--skip-layers", "1", "-q"
        )[0]
        == 0
    )
    got = json.loads((out / "config.json").read_text())
    assert got["num_hidden_layers"] == 2 and got["intermediate_size"] == 64
    assert len(got["layer_types"]) == 2
    assert_same_logits(load(out), reference_submodel(dense, [0, 2], [64, 64]))


def test_non_uniform_llama_is_refused(llama, tmp_path):
    refused(
        ("extract", str(llama), "-o", str(tmp_path / "o"), "--ffn-config", "64,128"),
        tmp_path / "o",
        "one intermediate_size",
    )


def test_fused_gate_up_is_cut_as_two_halves(llama, tmp_path):
    fused = Path(shutil.copytree(llama, tmp_path / "fused"))
    state = load_file(fused / "model.safetensors")
    for i in range(2):
        p = f"model.layers.{i}.mlp."
        state[p + "gate_up_proj.weight"] = torch.cat(
            [state.pop(p + "gate_proj.weight"), state.pop(p + "up_proj.weight")]
        )
    save_file(state, fused / "model.safetensors", metadata={"format": "pt"})
    out = tmp_path / "cut"
    assert run_matcli("extract", str(fused), "-o", str(out), "--ffn-config", "48", "-q")[0] == 0
    original, cut = load_file(llama / "model.safetensors"), load_file(out / "model.safetensors")
    p = "model.layers.1.mlp."
    expected = torch.cat(
        [original[p + "gate_proj.weight"][:48], original[p + "up_proj.weight"][:48]]
    )
    assert torch.equal(cut[p + "gate_up_proj.weight"], expected)
    assert torch.equal(cut[p + "down_proj.weight"], original[p + "down_proj.weight"][:, :48])


# --- Gemma 3n --------------------------------------------------------------------------------


@pytest.mark.parametrize("spec", ["xl", "1.0", "128,128,256,256"])
def test_gemma3n_identity_is_byte_identical(gemma3n, tmp_path, spec):
    """Full widths (128 and 256 here), no skips: every tensor and the config come back as they
    were."""
    out = tmp_path / "same"
    code, _, err = run_matcli("extract", str(gemma3n), "-o", str(out), "--ffn-config", spec, "-q")
    assert code == 0, err
    assert tensor_bytes(out) == tensor_bytes(gemma3n)
    config = json.loads((out / "config.json").read_text())
    config.pop("matcli")
    assert config == json.loads((gemma3n / "config.json").read_text())


def test_gemma3n_e2b_like_row_loads_and_matches(gemma3n_35, tmp_path):
    table = write_slicing_csv(tmp_path / "configs.csv", unit="16")
    out = tmp_path / "e2b"
    code, _, err = run_matcli(
        "extract",
        str(gemma3n_35),
        "-o",
        str(out),
        "--ffn-config",
        f'{table}:"Config for official E2B Model"',
        "-q",
    )
    assert code == 0, err
    config = json.loads((out / "config.json").read_text())
    assert config["num_hidden_layers"] == 30 and config["num_kv_shared_layers"] == 10
    assert config["activation_sparsity_pattern"] == [0.95] * 10 + [0.0] * 20
    assert config["intermediate_size"] == [64] * 30 and len(config["layer_types"]) == 30
    kept = [i for i in range(35) if not 20 <= i <= 24]
    assert_same_logits(load(out), reference_submodel(gemma3n_35, kept, [64] * 30))


def test_gemma3n_mixed_widths_load_and_match(gemma3n_35, tmp_path):
    table = write_slicing_csv(tmp_path / "configs.csv", unit="16")
    out = tmp_path / "mix"
    assert (
        run_matcli(
            "extract",
            str(gemma3n_35),
            "-o",
            str(out),
            "--ffn-config",
            f"{table}:E2.98B (layer-level)",
            "-q",
        )[0]
        == 0
    )
    wide = set(parse_layer_list("15-24,30-34"))
    widths = [128 if i in wide else 64 for i in range(35)]
    assert json.loads((out / "config.json").read_text())["intermediate_size"] == widths
    assert_same_logits(load(out), reference_submodel(gemma3n_35, list(range(35)), widths))


@pytest.mark.parametrize("row", [r[0] for r in OFFICIAL_ROWS])
def test_every_official_row_validates_with_the_expected_config_edits(gemma3n_35, tmp_path, row):
    table = write_slicing_csv(tmp_path / "configs.csv", unit="16")
    code, out, err = run_matcli(
        "extract",
        str(gemma3n_35),
        "-o",
        str(tmp_path / "o"),
        "--ffn-config",
        f"{table}:{row}",
        "--dry-run",
        "--json",
    )
    assert code == 0, err
    plan = json.loads(out)
    name, layers, _, _, wide, skipped = next(r for r in OFFICIAL_ROWS if r[0] == row)
    skip = parse_layer_list(skipped) if skipped else []
    changes = {c["key"]: c["after"] for c in plan["outputs"][0]["config_changes"]}
    if layers != 35:
        assert changes["num_hidden_layers"] == layers
        assert changes["num_kv_shared_layers"] == 15 - len([i for i in skip if i >= 20])
        assert len(changes["layer_types"]) == layers
        assert changes["activation_sparsity_pattern"] == [0.95] * 10 + [0.0] * (layers - 10)
    else:  # nothing skipped: only the widths may change
        assert not {
            "num_hidden_layers",
            "num_kv_shared_layers",
            "activation_sparsity_pattern",
            "layer_types",
        } & set(changes)
    wide_set = set(parse_layer_list(wide)) if wide else set()
    expected_widths = [128 if i in wide_set else 64 for i in range(layers)]
    assert changes.get("intermediate_size", [128] * 35) == expected_widths
    assert not (tmp_path / "o").exists()


def e4b_sparse_checkpoint(path: Path) -> Path:
    """Real Gemma 3n E4B text shapes in a sparse file: header only, no data on disk."""
    from transformers import AutoModelForCausalLM, Gemma3nTextConfig

    from matcli.checkpoint.writer import OutputTensor, header_bytes

    config = Gemma3nTextConfig()  # transformers' defaults are E4B's
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    shapes = {n: tuple(p.shape) for n, p in model.state_dict().items() if n != "lm_head.weight"}
    # Hub checkpoints also hold k/v projections for the KV-shared layers (transformers v5
    # no longer builds them, but they are in the files and counted in Google's figures).
    for i in range(35 - config.num_kv_shared_layers, 35):
        p = f"model.layers.{i}.self_attn."
        shapes.setdefault(p + "k_proj.weight", (512, 2048))
        shapes.setdefault(p + "v_proj.weight", (512, 2048))
        shapes.setdefault(p + "k_norm.weight", (256,))
    tensors = [OutputTensor(n, "BF16", s, lambda: iter([])) for n, s in sorted(shapes.items())]
    path.mkdir()
    (path / "config.json").write_text(json.dumps(config.to_dict()))
    with open(path / "model.safetensors", "wb") as f:
        f.write(header_bytes(tensors, {"format": "pt"}))
        f.truncate(f.tell() + sum(t.nbytes for t in tensors))
    return path


@pytest.fixture(scope="module")
def e4b(tmp_path_factory) -> Path:
    return e4b_sparse_checkpoint(tmp_path_factory.mktemp("e4b") / "e4b")


def test_official_e2b_row_reproduces_googles_effective_parameter_count(e4b, tmp_path):
    table = write_slicing_csv(tmp_path / "configs.csv", unit="2_048")
    plan = dry_run_plan(
        "extract",
        str(e4b),
        "-o",
        str(tmp_path / "o"),
        "--ffn-config",
        f"{table}:Config for official E2B Model",
    )
    report = plan["report"]
    assert report["parameters_after"]["effective"] == 1_905_495_648
    eff = report["parameters_before"]["effective"]
    assert math.isclose(eff / 1e9, 3.98, abs_tol=0.005)  # the CSV's figure for the main model
    assert not any("granularities" in w for w in plan["warnings"])  # 8192 is a trained width


def test_widths_off_gemma3ns_trained_widths_warn(e4b, tmp_path):
    """Gemma 3n was trained at 8192 and 16384 only (family data), not at 1/8..1 of 16384."""
    plan = dry_run_plan(
        "extract", str(e4b), "-o", str(tmp_path / "o"), "--ffn-config", "0.25"
    )  # 4096
    assert any(
        "widths [4096] are not trained MatFormer granularities (gemma3n was trained at 8192, 16384)"
        in w
        for w in plan["warnings"]
    ), plan["warnings"]
    plan = dry_run_plan(
        "extract", str(e4b), "-o", str(tmp_path / "o"), "--ffn-config", "8192,16384," * 17 + "16384"
    )
    assert not any("granularities" in w for w in plan["warnings"]), plan["warnings"]


def test_widths_off_the_matformer_ratios_warn(llama, tmp_path):
    """Families without trained widths (and scaled-down Gemma 3n) fall back to 1/8, 1/4, 1/2, 1."""
    plan = dry_run_plan("extract", str(llama), "-o", str(tmp_path / "o"), "--ffn-config", "48")
    assert any(
        "widths [48] are not trained MatFormer granularities "
        "(1/8, 1/4, 1/2 or all of a layer's width: 16, 32, 64, 128)" in w
        for w in plan["warnings"]
    ), plan["warnings"]
    plan = dry_run_plan("extract", str(llama), "-o", str(tmp_path / "o"), "--ffn-config", "m")
    assert not any("granularities" in w for w in plan["warnings"])


def test_budget_of_effective_parameters_finds_e2b(e4b, tmp_path):
    """Google's "E2B" is an effective count: with --budget-of effective and E2B's skipped
    layers, a 1.91B budget gives the official E2B slice (every layer at the trained 8192)."""
    args = (
        "extract",
        str(e4b),
        "-o",
        str(tmp_path / "o"),
        "--budget",
        "1.91B",
        "--skip-layers",
        "20-24",
    )
    plan = dry_run_plan(*args, "--budget-of", "effective")
    assert plan["report"]["parameters_after"]["effective"] == 1_905_495_648
    assert config_changes(plan)["intermediate_size"] == [8192] * 30
    # Counting every tensor (per-layer embeddings alone are 2 B), nothing fits.
    refused(args, tmp_path / "o", "no submodel fits --budget 1.91B (parameters)")
    refused(
        args + ("--budget-of", "effective", "--ffn-config", "0.5"),
        tmp_path / "o",
        "give either --ffn-config",
    )
    refused(
        (
            "extract",
            str(e4b),
            "-o",
            str(tmp_path / "o"),
            "--ffn-config",
            "0.5",
            "--budget-of",
            "effective",
        ),
        tmp_path / "o",
        "--budget-of says what --budget counts",
    )
    refused(args + ("--budget-of", "active"), tmp_path / "o", "invalid --budget-of")


# --- bad input -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--ffn-config", "64,64,64"], "gives 3 widths but 35 layers are kept"),
        (["--ffn-config", "0"], "outside 1..128"),
        (["--ffn-config", "256"], "outside 1..128"),
        (["--ffn-config", "64.5"], "'64.5' is a fractional width"),
        (
            ["--ffn-config", "-5"],
            "'-5' is not positive; give a number of neurons in 1..128, or a ratio in (0, 1]",
        ),
        (["--ffn-config", "-0.5"], "'-0.5' is not positive"),
        (["--ffn-config", "nan"], "'nan' is not a width"),
        (["--ffn-config", "64", "--skip-layers", "19"], "layer 19 cannot be skipped"),
        (["--ffn-config", "64", "--skip-layers", "18"], "layer 18 cannot be skipped"),
        (["--ffn-config", "64", "--skip-layers", "40"], "is not a layer"),
        (["--budget", "400000", "--skip-layers", "40"], "is not a layer"),
        (["--ffn-config", "64", "--skip-layers", "0-34"], "skips every layer"),
    ],
)
def test_bad_widths_and_skips(gemma3n_35, tmp_path, args, message):
    refused(("extract", str(gemma3n_35), "-o", str(tmp_path / "o"), *args), tmp_path / "o", message)


def test_whole_number_float_widths_are_widths(gemma3n_35, tmp_path):
    """A YAML 64.0 (or 2048 * 3.5 computed somewhere) is 64 neurons, not a ratio or an error."""
    spec = tmp_path / "widths.yaml"
    spec.write_text("ffn: [64.0]\nskip_layers: [20, 21, 22, 23, 24]\n")
    plan = dry_run_plan(
        "extract", str(gemma3n_35), "-o", str(tmp_path / "o"), "--ffn-config", str(spec)
    )
    assert config_changes(plan)["intermediate_size"] == [64] * 30
    assert (
        config_changes(
            dry_run_plan(
                "extract", str(gemma3n_35), "-o", str(tmp_path / "o"), "--ffn-config", "64.0"
            )
        )["intermediate_size"]
        == [64] * 35
    )


def kv_producers_from_config(config: dict) -> set[int]:
    """Independently of matcli: the last layer of each attention type before the KV-shared ones."""
    first = config["num_hidden_layers"] - config["num_kv_shared_layers"]
    types = config["layer_types"]
    return {max(i for i in range(first) if types[i] == t) for t in set(types[first:])}


def test_kv_producers_of_the_small_gemma3n_cannot_be_skipped(gemma3n, tmp_path):
    config = json.loads((gemma3n / "config.json").read_text())
    producers = kv_producers_from_config(config)
    assert producers  # the fixture shares KV, so some layers produce it
    for layer in range(config["num_hidden_layers"]):
        args = (
            "extract",
            str(gemma3n),
            "-o",
            str(tmp_path / "o"),
            "--ffn-config",
            "xl",
            "--skip-layers",
            str(layer),
        )
        if layer in producers:
            refused(args, tmp_path / "o", f"layer {layer} cannot be skipped")
        else:
            assert (
                config_changes(dry_run_plan(*args))["num_hidden_layers"]
                == config["num_hidden_layers"] - 1
            )


def test_kv_producers_of_the_35_layer_gemma3n_are_18_and_19(gemma3n_35):
    assert kv_producers_from_config(json.loads((gemma3n_35 / "config.json").read_text())) == {
        18,
        19,
    }


@pytest.mark.parametrize(
    ("edits", "args", "message"),
    [
        (
            {"layer_types": None},
            ["--skip-layers", "3"],
            "config.json sets num_kv_shared_layers but has no layer_types list",
        ),
        (
            {"layer_types": ["sliding_attention", "full_attention"] * 2 + ["sliding_attention"]},
            [],
            "config.json layer_types has 5 entries but the model has 4 layers",
        ),
        (
            {"activation_sparsity_pattern": [0.95, 0.0, 0.0]},
            [],
            "config.json activation_sparsity_pattern has 3 entries but the model has 4 layers",
        ),
        (
            {"intermediate_size": [128, 128, 256]},
            [],
            "config.json intermediate_size has 3 entries but the model has 4 layers",
        ),
        (
            {"intermediate_size": [128, 128, 256, 128]},
            [],
            "model.layers.3.mlp.gate_proj.weight has shape [256, 64] but config.json says "
            "[128 (intermediate_size[3]), 64 (hidden_size)]",
        ),
        (
            {"num_kv_shared_layers": 4},
            [],
            "config.json num_kv_shared_layers is 4; it must be a layer count in 0..3",
        ),
    ],
)
def test_bad_gemma3n_config(gemma3n, tmp_path, edits, args, message):
    broken = edited_copy(gemma3n, tmp_path / "broken", **edits)
    refused(
        ("extract", str(broken), "-o", str(tmp_path / "o"), "--ffn-config", "xl", *args),
        tmp_path / "o",
        message,
    )


def test_gemma3n_without_layer_types_extracts_when_nothing_is_skipped(gemma3n, tmp_path):
    broken = edited_copy(gemma3n, tmp_path / "no-types", layer_types=None)
    assert config_changes(
        dry_run_plan("extract", str(broken), "-o", str(tmp_path / "o"), "--ffn-config", "0.5")
    )["intermediate_size"] == [64, 64, 128, 128]


def test_bad_csv_rows(gemma3n_35, tmp_path):
    table = write_slicing_csv(tmp_path / "configs.csv", unit="16")
    refused(
        ("extract", str(gemma3n_35), "-o", str(tmp_path / "o"), "--ffn-config", f"{table}:E9.99B"),
        tmp_path / "o",
        "has no row named 'E9.99B'",
    )
    text = table.read_text().replace("16 * 8", "__import__('os') * 8", 1)
    table.write_text(text)
    refused(
        (
            "extract",
            str(gemma3n_35),
            "-o",
            str(tmp_path / "o"),
            "--ffn-config",
            f"{table}:Main model",
        ),
        tmp_path / "o",
        "not an integer or a product of integers",
    )


@pytest.mark.parametrize(
    "tensor",
    [
        "model.layers.1.mlp.down_proj.weight",  # an FFN tensor
        # not FFN: transformers would initialise it at random
        "model.layers.1.self_attn.q_proj.weight",
        "model.layers.0.post_attention_layernorm.weight",
    ],
)
def test_missing_layer_tensor(llama, tmp_path, tensor):
    broken = edited_copy(llama, tmp_path / "broken", drop=(tensor,))
    refused(
        ("extract", str(broken), "-o", str(tmp_path / "o"), "--ffn-config", "0.5"),
        tmp_path / "o",
        tensor,
    )


def test_missing_tensor_of_a_kv_shared_gemma3n_layer(gemma3n, tmp_path):
    """KV-shared layers may lack k/v projections (transformers v5 writes none), nothing else."""
    assert "model.layers.3.self_attn.k_proj.weight" not in tensor_bytes(
        gemma3n
    )  # layer 3 is KV-shared
    broken = edited_copy(
        gemma3n, tmp_path / "broken", drop=("model.layers.3.self_attn.q_proj.weight",)
    )
    refused(
        ("extract", str(broken), "-o", str(tmp_path / "o"), "--ffn-config", "xl"),
        tmp_path / "o",
        "model.layers.3.self_attn.q_proj.weight is missing",
    )
    broken = edited_copy(
        gemma3n, tmp_path / "broken-kv", drop=("model.layers.1.self_attn.k_proj.weight",)
    )  # a producer
    refused(
        ("extract", str(broken), "-o", str(tmp_path / "o"), "--ffn-config", "xl"),
        tmp_path / "o",
        "model.layers.1.self_attn.k_proj.weight is missing",
    )


def test_quantized_input_is_refused(llama_parent, tmp_path):
    refused(
        ("extract", str(llama_parent), "-o", str(tmp_path / "o"), "--ffn-config", "0.5"),
        tmp_path / "o",
        "extract from the dense model",
    )


def test_gemma3n_multimodal_wrapper(gemma3n_35, tmp_path):
    """Gemma3nForConditionalGeneration layout: the language model under model.language_model.,
    its config under text_config; vision and audio towers are copied untouched."""
    wrapper = tmp_path / "wrapper"
    wrapper.mkdir()
    text = load_file(gemma3n_35 / "model.safetensors")
    state = {n.replace("model.", "model.language_model.", 1): t for n, t in text.items()}
    state["model.vision_tower.timm_model.conv_stem.conv.weight"] = torch.randn(8, 3, 3, 3)
    state["model.audio_tower.conformer.0.ffw_layer_start.ffw_layer_1.weight"] = torch.randn(16, 8)
    state["model.embed_vision.embedding.weight"] = torch.randn(4, 32)
    save_file(state, wrapper / "model.safetensors", metadata={"format": "pt"})
    text_config = json.loads((gemma3n_35 / "config.json").read_text())
    config = {
        "model_type": "gemma3n",
        "architectures": ["Gemma3nForConditionalGeneration"],
        "text_config": text_config,
        "vision_config": {"model_type": "gemma3n_vision"},
        "audio_config": {"model_type": "gemma3n_audio"},
    }
    (wrapper / "config.json").write_text(json.dumps(config))
    (wrapper / "processor_config.json").write_text('{"processor_class": "Gemma3nProcessor"}')

    table = write_slicing_csv(tmp_path / "configs.csv", unit="16")
    row = f"{table}:Config for official E2B Model"
    assert (
        run_matcli("extract", str(wrapper), "-o", str(tmp_path / "mm"), "--ffn-config", row, "-q")[
            0
        ]
        == 0
    )
    assert (
        run_matcli(
            "extract", str(gemma3n_35), "-o", str(tmp_path / "text"), "--ffn-config", row, "-q"
        )[0]
        == 0
    )
    mm, only_text = (
        load_file(tmp_path / "mm" / "model.safetensors"),
        load_file(tmp_path / "text" / "model.safetensors"),
    )
    for name, t in only_text.items():
        assert torch.equal(mm[name.replace("model.", "model.language_model.", 1)], t), name
    for name in (
        "model.vision_tower.timm_model.conv_stem.conv.weight",
        "model.audio_tower.conformer.0.ffw_layer_start.ffw_layer_1.weight",
        "model.embed_vision.embedding.weight",
    ):
        assert torch.equal(mm[name], state[name])
    out_config = json.loads((tmp_path / "mm" / "config.json").read_text())
    assert (
        out_config["text_config"]["num_hidden_layers"] == 30
        and out_config["text_config"]["num_kv_shared_layers"] == 10
    )
    assert (
        out_config["vision_config"] == config["vision_config"]
        and out_config["architectures"] == config["architectures"]
    )
    assert (
        tmp_path / "mm" / "processor_config.json"
    ).read_text() == '{"processor_class": "Gemma3nProcessor"}'


@pytest.mark.parametrize("choice", [["--ffn-config", "0.5"], ["--budget", "400000"]])
def test_extract_never_imports_torch(gemma3n_35, tmp_path, choice):
    """Without --reorder or --rank-by-loss no model runs, so torch is never imported."""
    import subprocess
    import sys

    argv = ["matcli", "extract", str(gemma3n_35), "-o", str(tmp_path / "o"), *choice, "-q"]
    argv += ["--skip-layers", "20-24"]
    script = (
        f"import sys\nfrom matcli.cli import main\nsys.argv = {argv!r}\n"
        "try:\n    main()\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
        "assert 'torch' not in sys.modules, 'extract imported torch'\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "o" / "model.safetensors").exists()
