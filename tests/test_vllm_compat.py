"""matcli's compressed-tensors folders as vLLM and compressed-tensors read them.

vLLM applies `re:` targets to its own module names, without its name mapping
(vllm 0.34.0 model_executor/layers/quantization/compressed_tensors/compressed_tensors.py,
apply_vllm_mapper: regex targets are "preserved"), and fuses q/k/v and gate/up into one Linear
(packed_modules_mapping). Each folder (int8, int4, int2, Mix'n'Match; Llama, text and
multimodal Gemma 3n) is checked layer by layer: every Linear of vLLM's model gets exactly the
scheme of the weights stored for it, and none is quantized without stored codes. The default
suite runs vLLM's rules reproduced below (with their file references); `pytest -m vllm` runs
vLLM's own functions, loaded from its wheel without its dependencies. The 3-bit layout
question is answered against compressed-tensors' own pack/unpack (0.20 installed; 0.17 by
its algorithm, and by its wheel under `-m vllm`).
"""

from __future__ import annotations

import ast
import importlib.util
import json
import re
import subprocess
import sys
import textwrap
import types
import typing
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import assert_refused, run_matcli
from safetensors.torch import load_file, save_file

from matcli.quant import ct_format
from matcli.quant.packing import (
    pack_unsigned,
    packed_columns,
    padded_packed_columns,
    unpack_unsigned,
)

# --- vLLM 0.34.0's model data ------------------------------------------------------------

# models/llama.py:475, gemma3n.py:1111, gemma3n_mm.py:580 (Qwen2, Gemma 2/3, Mistral alike)
PACKED_MODULES = {
    "qkv_proj": ["q_proj", "k_proj", "v_proj"],
    "gate_up_proj": ["gate_proj", "up_proj"],
}
# models/gemma3n_mm.py:592 Gemma3nForConditionalGeneration.hf_to_vllm_mapper (prefix part)
GEMMA3N_MM_PREFIXES = {
    "model.embed_audio.": "embed_audio.",
    "model.embed_vision.": "embed_vision.",
    "model.language_model.": "language_model.model.",
    "model.vision_tower.": "vision_tower.",
    "model.audio_tower.": "audio_tower.",
    "model.multi_modal_projector.": "multi_modal_projector.",
    "lm_head.": "language_model.lm_head.",
    "model": "language_model.model",
}
LAYER = re.compile(r"^(.*\.layers\.(\d+)\.)(.+)$")


def vllm_linears(checkpoint_modules: list[str], prefixes: dict[str, str], kv_shared: set[int]):
    """{vLLM Linear name: the checkpoint modules it holds} for the decoder layers' Linears.

    Names are mapped by the first matching prefix (models/utils.py WeightsMapper); q/k/v and
    gate/up become qkv_proj and gate_up_proj, except that Gemma 3n's KV-shared layers keep a
    lone q_proj (models/gemma3n.py:315-335)."""
    linears: dict[str, list[str]] = {}
    for module in checkpoint_modules:
        new = next(
            (new + module[len(old) :] for old, new in prefixes.items() if module.startswith(old)),
            module,
        )
        m = LAYER.match(new)
        if not m:
            continue
        head, tail = m.group(1), m.group(3)
        parent, _, leaf = tail.rpartition(".")
        fused = next((f for f, parts in PACKED_MODULES.items() if leaf in parts), None)
        if fused == "qkv_proj" and int(m.group(2)) in kv_shared:
            fused = None
        name = head + (f"{parent}.{fused}" if fused else tail)
        linears.setdefault(name, []).append(module)
    return linears


# --- vLLM's matching rules, reproduced (vllm 0.34.0 file and line references) -------------


def is_equal_or_regex_match(value: str, target: str, check_contains: bool = False) -> bool:
    # model_executor/layers/quantization/utils/config_utils.py is_equal_or_regex_match
    if target.startswith("re:"):
        return re.match(target[3:], value) is not None
    if check_contains:
        return target.lower() in value.lower()
    return target == value


def should_ignore_layer(layer_name: str, ignore: list[str], fused_mapping: dict) -> bool:
    # compressed_tensors/utils.py should_ignore_layer + config_utils.py find_matching_patterns
    if any(is_equal_or_regex_match(layer_name, p) for p in ignore):
        return True
    proj = layer_name.split(".")[-1]
    if proj not in fused_mapping:
        return False
    shards = [
        any(is_equal_or_regex_match(layer_name.replace(proj, s), p) for p in ignore)
        for s in fused_mapping[proj]
    ]
    if any(shards) and not all(shards):
        raise ValueError(f"Found different quantization schemes for the shards of {layer_name}")
    return all(shards)


def find_matched_target(layer_name: str, module, targets, fused_mapping: dict) -> str | None:
    # compressed_tensors/utils.py find_matched_target, _find_first_match, _match_fused_layer
    direct = next((t for t in targets if is_equal_or_regex_match(layer_name, t)), None)
    if direct:
        return direct
    fused = next((key for key in fused_mapping if layer_name.endswith(key)), None)
    if fused:
        parts = [layer_name.replace(fused, p) for p in fused_mapping[fused]]
        matches = [next((t for t in targets if is_equal_or_regex_match(p, t)), None) for p in parts]
        if all(matches):
            return matches[0]
    cls = type(module).__name__
    return next((t for t in targets if is_equal_or_regex_match(cls, t, True)), None)


class ReproducedRules:
    """compressed_tensors.py CompressedTensorsConfig: _quantization_scheme_map_from_config
    (:305, a map keyed by target, so a later group with the same target wins) and
    get_scheme_dict (:998, ignore first, then the matched target's scheme)."""

    def scheme(self, qc: dict, layer_name: str, fused_mapping: dict) -> dict | None:
        from compressed_tensors.quantization import QuantizationArgs

        target_map = {}
        for group in qc["config_groups"].values():
            for target in group["targets"]:
                weights = QuantizationArgs.model_validate(group["weights"])
                assert weights.actorder not in ("group", "dynamic")
                target_map[target] = {"weights": weights, "format": group.get("format")}
        if should_ignore_layer(layer_name, qc.get("ignore", []), fused_mapping):
            return None
        target = find_matched_target(layer_name, LinearBase(), target_map, fused_mapping)
        if target is None:
            return None
        scheme = target_map[target]
        # _get_scheme_from_parts :864: weight-only int needs channel/group, static, packed
        weights, fmt = scheme["weights"], scheme["format"] or qc["format"]
        assert weights.strategy in ("channel", "group") and not weights.dynamic
        assert fmt == "pack-quantized"
        return {"num_bits": weights.num_bits, "group_size": weights.group_size}


class LinearBase:
    """What vLLM's Linear modules are to the class-name match (regex targets skip it)."""


# --- vLLM's own functions, from its wheel (pytest -m vllm) --------------------------------

CT_DIR = "vllm/model_executor/layers/quantization/compressed_tensors/"


def wheel(requirement: str, cache: Path) -> Path:
    """A wheel from PyPI (pip download, no dependencies), kept in `cache`."""
    name = requirement.split("==")[0].replace("-", "_")
    found = sorted(cache.glob(f"{name}-*.whl"))
    if not found:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                requirement,
                "--no-deps",
                "-q",
                "-d",
                str(cache),
            ],
            check=True,
        )
        found = sorted(cache.glob(f"{name}-*.whl"))
    return found[-1]


def _load(path: Path, name: str) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _stub_vllm() -> None:
    """The few vLLM modules the matching files import, as stubs (they need CUDA builds)."""
    import logging

    names = {
        "vllm.logger": {"init_logger": logging.getLogger},
        "vllm.model_executor.layers.quantization.utils.quant_utils": {
            k: object()
            for k in ("kFp8Static128BlockSym", "kFp8StaticChannelSym", "kFp8StaticTensorSym")
        },
        "vllm.model_executor.parameter": {
            k: type(k, (), {})
            for k in (
                "BlockQuantScaleParameter",
                "ChannelQuantScaleParameter",
                "PerTensorScaleParameter",
            )
        },
    }
    for full, attrs in names.items():
        parts = full.split(".")
        for i in range(1, len(parts) + 1):
            sys.modules.setdefault(".".join(parts[:i]), types.ModuleType(".".join(parts[:i])))
        sys.modules[full].__dict__.update(attrs)


class VllmRules:
    """vLLM's config_utils.py and compressed_tensors/utils.py imported as they are, and
    CompressedTensorsConfig's get_scheme_dict, _quantization_scheme_map_from_config and
    _is_wNa16_group_channel compiled from compressed_tensors.py's source."""

    METHODS = ("get_scheme_dict", "_quantization_scheme_map_from_config", "_is_wNa16_group_channel")

    def __init__(self, root: Path):
        import compressed_tensors.quantization as ctq

        _stub_vllm()
        quant = "vllm.model_executor.layers.quantization"
        _load(
            root / "vllm/model_executor/layers/quantization/utils/config_utils.py",
            f"{quant}.utils.config_utils",
        )
        utils = _load(root / CT_DIR / "utils.py", f"{quant}.compressed_tensors.utils")
        source = (root / CT_DIR / "compressed_tensors.py").read_text()
        config_class = next(
            n
            for n in ast.walk(ast.parse(source))
            if isinstance(n, ast.ClassDef) and n.name == "CompressedTensorsConfig"
        )
        code = "from __future__ import annotations\n" + "\n".join(
            textwrap.dedent(ast.get_source_segment(source, f))
            for f in config_class.body
            if isinstance(f, ast.FunctionDef) and f.name in self.METHODS
        )
        self.ns = {
            **vars(utils),
            **{
                k: getattr(ctq, k)
                for k in ("QuantizationArgs", "QuantizationType", "ActivationOrdering")
            },
            "cast": typing.cast,
            "Any": typing.Any,
        }
        exec(compile(code, str(root / CT_DIR / "compressed_tensors.py"), "exec"), self.ns)

    def scheme(self, qc: dict, layer_name: str, fused_mapping: dict) -> dict | None:
        target_map = self.ns["_quantization_scheme_map_from_config"](
            None, config=json.loads(json.dumps(qc))
        )
        config = types.SimpleNamespace(
            ignore=qc.get("ignore", []),
            packed_modules_mapping=fused_mapping,
            target_scheme_map=target_map,
            quant_format=qc["format"],
        )
        found = self.ns["get_scheme_dict"](config, LinearBase(), layer_name)
        if found is None or found["weights"] is None:
            return None
        assert self.ns["_is_wNa16_group_channel"](found["weights"], found["input_activations"])
        assert found["format"] == "pack-quantized"
        return {"num_bits": found["weights"].num_bits, "group_size": found["weights"].group_size}


@pytest.fixture(scope="session")
def wheels(tmp_path_factory) -> Path:
    cache = Path.home() / ".cache" / "matcli-tests"
    cache.mkdir(parents=True, exist_ok=True)
    return cache


@pytest.fixture(scope="session")
def vllm_root(wheels, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("vllm-wheel")
    with zipfile.ZipFile(wheel("vllm==0.34.0", wheels)) as whl:
        for name in whl.namelist():
            if name.startswith(
                ("vllm/model_executor/layers/quantization/", "vllm/model_executor/models/")
            ):
                whl.extract(name, root)
    return root


@pytest.fixture(
    scope="session", params=["reproduced", pytest.param("vllm", marks=pytest.mark.vllm)]
)
def rules(request):
    if request.param == "reproduced":
        return ReproducedRules()
    return VllmRules(request.getfixturevalue("vllm_root"))


@pytest.mark.vllm
def test_reproduced_model_data_is_vllms(vllm_root):
    """The name mapping and fused modules above are the wheel's own."""
    models = vllm_root / "vllm/model_executor/models"

    def class_assignments(path: Path, cls: str) -> dict[str, ast.AST]:
        tree = ast.parse(path.read_text())
        body = next(n for n in ast.walk(tree) if isinstance(n, ast.ClassDef) and n.name == cls).body
        return {a.targets[0].id: a.value for a in body if isinstance(a, ast.Assign)}

    for path, cls in (
        ("llama.py", "LlamaForCausalLM"),
        ("gemma3n.py", "Gemma3nForCausalLM"),
        ("gemma3n_mm.py", "Gemma3nForConditionalGeneration"),
    ):
        assert (
            ast.literal_eval(class_assignments(models / path, cls)["packed_modules_mapping"])
            == PACKED_MODULES
        )
    wna16 = ast.parse((vllm_root / CT_DIR / "schemes/compressed_tensors_wNa16.py").read_text())
    supported = next(
        n.value
        for n in wna16.body
        if isinstance(n, ast.Assign)
        and getattr(n.targets[0], "id", None) == "WNA16_SUPPORTED_TYPES_MAP"
    )
    assert [ast.literal_eval(k) for k in supported.keys] == list(range(2, 9))  # no int1
    mapper = class_assignments(models / "gemma3n_mm.py", "Gemma3nForConditionalGeneration")[
        "hf_to_vllm_mapper"
    ]
    assert ast.literal_eval(mapper.keywords[0].value) == GEMMA3N_MM_PREFIXES
    gemma3 = class_assignments(models / "gemma3_mm.py", "Gemma3ForConditionalGeneration")
    prefixes = ast.literal_eval(gemma3["hf_to_vllm_mapper"].keywords[0].value)
    assert prefixes["model.language_model."] == "language_model.model."


# --- the folders --------------------------------------------------------------------------


def gemma3n_multimodal(text_model: Path, path: Path) -> Path:
    """A Gemma3nForConditionalGeneration folder around a text model (towers as stand-ins)."""
    path.mkdir()
    state = {
        n.replace("model.", "model.language_model.", 1): t
        for n, t in load_file(text_model / "model.safetensors").items()
    }
    state["model.vision_tower.timm_model.conv_stem.conv.weight"] = torch.randn(8, 3, 3, 3)
    state["model.audio_tower.conformer.0.ffw_layer_start.ffw_layer_1.weight"] = torch.randn(16, 8)
    state["model.embed_vision.embedding_projection.weight"] = torch.randn(64, 32)
    save_file(state, path / "model.safetensors", metadata={"format": "pt"})
    config = {
        "model_type": "gemma3n",
        "architectures": ["Gemma3nForConditionalGeneration"],
        "text_config": json.loads((text_model / "config.json").read_text()),
        "vision_config": {"model_type": "gemma3n_vision"},
        "audio_config": {"model_type": "gemma3n_audio"},
    }
    (path / "config.json").write_text(json.dumps(config))
    return path


SLICES = {
    "int8": ("--bits", "8"),
    "int4": ("--bits", "4"),
    "int2": ("--bits", "2"),
    "mix": ("--bits-config", "pyramid"),
}


@pytest.fixture(scope="module", params=["llama", "gemma3n", "gemma3n-multimodal"])
def family_slices(request, tmp_path_factory) -> tuple[str, dict[str, Path]]:
    base = tmp_path_factory.mktemp(request.param)
    dense = request.getfixturevalue("llama" if request.param == "llama" else "gemma3n")
    if request.param == "gemma3n-multimodal":
        dense = gemma3n_multimodal(dense, base / "dense")
    parent = base / "parent"
    args = ("--layers", "ffn,attention", "--group-size", "32", "-q")
    code, _, err = run_matcli("quantize", str(dense), "-o", str(parent), *args)
    assert code == 0, err
    slices = {}
    for name, how in SLICES.items():
        assert run_matcli("slice", str(parent), *how, "-o", str(base / name), "-q")[0] == 0
        slices[name] = base / name
    return request.param, slices


def stored_widths(folder: Path) -> dict[str, int]:
    """{checkpoint module: width} of the quantized Linears, from matcli's record."""
    config = json.loads((folder / "config.json").read_text())
    names = load_file(folder / "model.safetensors").keys()
    modules = [n.removesuffix(".weight_packed") for n in names if n.endswith(".weight_packed")]
    record = config["matcli"]
    if record["bits"]:
        return dict.fromkeys(modules, record["bits"])
    return {m: record["layer_bits"][LAYER.match(m).group(2)] for m in modules}


@pytest.mark.parametrize("name", list(SLICES))
def test_vllm_quantizes_exactly_the_stored_linears(family_slices, name, rules):
    family, slices = family_slices
    folder = slices[name]
    config = json.loads((folder / "config.json").read_text())
    qc = config["quantization_config"]
    text = config.get("text_config", config)
    kv_shared = set(
        range(
            text["num_hidden_layers"] - text.get("num_kv_shared_layers", 0),
            text["num_hidden_layers"],
        )
    )
    widths = stored_widths(folder)
    tensors = load_file(folder / "model.safetensors")
    modules = [
        n.rsplit(".", 1)[0]
        for n, t in tensors.items()
        if n.endswith((".weight", ".weight_packed")) and t.dim() == 2
    ]
    prefixes = GEMMA3N_MM_PREFIXES if family == "gemma3n-multimodal" else {}
    linears = vllm_linears(sorted(set(modules)), prefixes, kv_shared)
    assert any("qkv_proj" in n for n in linears) and any("gate_up_proj" in n for n in linears)
    if family == "gemma3n-multimodal":
        assert all(n.startswith("language_model.model.layers.") for n in linears)
    quantized = 0
    for vllm_name, parts in linears.items():
        bits = {widths.get(p) for p in parts}
        assert len(bits) == 1, (vllm_name, parts)  # fused parts share one scheme
        width = bits.pop()
        want = None if width is None else {"num_bits": width, "group_size": 32}
        assert rules.scheme(qc, vllm_name, PACKED_MODULES) == want, vllm_name
        quantized += want is not None
    assert quantized == len({n for n, parts in linears.items() if parts[0] in widths}) > 0
    if name == "mix":
        assert len(qc["config_groups"]) > 1 and len(set(widths.values())) > 1


def test_transformers_names_match_too(family_slices):
    """compressed-tensors' own matcher (what transformers applies) picks exactly the stored
    Linears under the checkpoint's (= transformers v5's) module names."""
    from compressed_tensors.utils.match import match_named_modules

    _, slices = family_slices
    for folder in slices.values():
        qc = json.loads((folder / "config.json").read_text())["quantization_config"]
        names = [
            n.rsplit(".", 1)[0]
            for n in load_file(folder / "model.safetensors")
            if n.endswith((".weight", ".weight_packed"))
        ]
        model = module_tree(sorted(set(names)))
        targets = [t for g in qc["config_groups"].values() for t in g["targets"]]
        matched = {n for n, _ in match_named_modules(model, targets, qc["ignore"])}
        assert matched == set(stored_widths(folder))


def module_tree(names: list[str]) -> torch.nn.Module:
    """A module tree with a Linear at each name (no weights: matching reads names only)."""
    root = torch.nn.Module()
    for name in names:
        node = root
        *path, leaf = name.split(".")
        for part in path:
            if not hasattr(node, part):
                node.add_module(part, torch.nn.Module())
            node = getattr(node, part)
        if not hasattr(node, leaf):
            node.add_module(leaf, torch.nn.Linear(1, 1, bias=False))
    return root


# --- the 3-bit layout ---------------------------------------------------------------------


def padded_pack(signed: np.ndarray, bits: int) -> np.ndarray:
    """compressed-tensors 0.17.0's pack_to_int32 (compressors/pack_quantized/helpers.py:20-84,
    packed_dim=1): offset to unsigned, pad the row to a multiple of 32 // bits, and put
    32 // bits codes in each int32 word, code k at bits k*b.. (the top 32 % b bits unused)."""
    per_word = 32 // bits
    u = (signed.astype(np.int64) + (1 << (bits - 1))).astype(np.uint32)
    rows, cols = u.shape
    padded = np.zeros((rows, padded_packed_columns(cols, bits) * per_word), np.uint32)
    padded[:, :cols] = u
    shifts = np.arange(per_word, dtype=np.uint32) * bits
    words = (padded.reshape(rows, -1, per_word) << shifts).sum(axis=2, dtype=np.uint32)
    return words.view(np.int32)


def random_codes(bits: int, cols: int, seed: int = 0) -> np.ndarray:
    low = -(1 << (bits - 1))
    return np.random.default_rng(seed).integers(low, -low, size=(6, cols)).astype(np.int8)


@pytest.mark.parametrize("bits", range(1, 9))
@pytest.mark.parametrize("cols", [64, 75])
def test_padded_and_dense_layouts_agree_only_when_bits_divide_32(bits, cols):
    signed = random_codes(bits, cols)
    dense = pack_unsigned((signed.astype(np.int16) + (1 << (bits - 1))).astype(np.uint8), bits)
    padded = padded_pack(signed, bits)
    assert dense.shape == (6, packed_columns(cols, bits))
    if 32 % bits == 0:
        assert np.array_equal(dense, padded)
    else:  # 3 bits: 64 codes take 6 dense words but 7 padded ones (10 codes each)
        assert padded.shape == (6, padded_packed_columns(cols, bits))
        assert padded.shape != dense.shape or not np.array_equal(dense, padded)
        assert cols != 64 or padded.shape != dense.shape


@pytest.mark.parametrize("bits", [3, 5, 6, 7])
def test_slice_warns_about_the_layout_and_records_the_version(llama, bits, tmp_path):
    parent = tmp_path / "parent"
    assert run_matcli("quantize", str(llama), "-o", str(parent), "-q")[0] == 0
    code, _, err = run_matcli(
        "slice", str(parent), "--bits", f"{bits},4", "-o", str(tmp_path / "s")
    )
    assert code == 0, err
    text = " ".join(err.split())  # warnings are wrapped to the terminal width
    assert text.count("compressed-tensors 0.17 (pinned by vLLM 0.34)") == 1
    assert f"int{bits} codes" in text and "int4 codes" not in text
    for width in (bits, 4):
        qc = json.loads((tmp_path / "s" / f"int{width}" / "config.json").read_text())[
            "quantization_config"
        ]
        version = tuple(int(p) for p in qc["version"].split(".")[:2])
        assert version >= (0, 18)
    code, _, err = run_matcli("slice", str(parent), "--bits", "4", "-o", str(tmp_path / "four"))
    assert code == 0 and "compressed-tensors 0.17" not in err


def test_slice_warns_that_vllm_has_no_int1(llama_parent, tmp_path):
    code, _, err = run_matcli("slice", str(llama_parent), "--bits", "1", "-o", str(tmp_path / "s"))
    assert code == 0 and "int1 codes load in transformers but not in vLLM" in " ".join(err.split())


def test_padded_layout_parent_is_refused(llama, tmp_path):
    """A 3-bit parent written by compressed-tensors 0.17: one line naming the layout."""
    parent = tmp_path / "parent"
    assert run_matcli("quantize", str(llama), "-o", str(parent), "--bits", "3", "-q")[0] == 0
    tensors = load_file(parent / "model.safetensors")
    for name in [n for n in tensors if n.endswith(".weight_packed")]:
        cols = int(tensors[name.replace("weight_packed", "weight_shape")][1])
        unsigned = unpack_unsigned(tensors[name].numpy(), 3, cols)
        tensors[name] = torch.from_numpy(padded_pack(unsigned.astype(np.int16) - 4, 3))
    save_file(tensors, parent / "model.safetensors", metadata={"format": "pt"})
    out = tmp_path / "out"
    args = ["slice", str(parent), "--bits", "2", "-o", str(out)]
    assert_refused(args, out, "10 3-bit codes per int32", inputs=[parent])


# --- compressed-tensors 0.17 itself (pytest -m vllm) --------------------------------------

CT017_CHECK = """
import json, sys
import numpy as np, torch
from compressed_tensors import __version__
from compressed_tensors.compressors.pack_quantized.helpers import pack_to_int32, unpack_from_int32
from compressed_tensors.quantization import QuantizationConfig
assert __version__ == "0.17.0", __version__
data = np.load(sys.argv[1])
out = {}
for bits in range(1, 9):
    codes = torch.from_numpy(data[f"codes{bits}"])
    out[f"padded{bits}"] = pack_to_int32(codes, bits).numpy()
    dense = torch.from_numpy(data[f"dense{bits}"])
    try:
        back = unpack_from_int32(dense, bits, codes.shape).numpy()
        out[f"reads_dense{bits}"] = np.array(np.array_equal(back, codes.numpy()))
    except Exception:
        out[f"reads_dense{bits}"] = np.array(False)
np.savez(sys.argv[2], **out)
QuantizationConfig.model_validate(json.loads(open(sys.argv[3]).read()))
"""


@pytest.mark.vllm
def test_compressed_tensors_017_packs_as_reproduced(wheels, tmp_path):
    """compressed-tensors 0.17.0 from its wheel, in a subprocess: its packing is padded_pack,
    it misreads matcli's dense 3/5/6/7-bit words (and reads 1/2/4/8), and it accepts
    matcli's quantization_config."""
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel("compressed-tensors==0.17.0", wheels)) as whl:
        whl.extractall(site)
    arrays = {}
    for bits in range(1, 9):
        arrays[f"codes{bits}"] = random_codes(bits, 75, seed=bits)
        u = (arrays[f"codes{bits}"].astype(np.int16) + (1 << (bits - 1))).astype(np.uint8)
        arrays[f"dense{bits}"] = pack_unsigned(u, bits)
    np.savez(tmp_path / "in.npz", **arrays)
    config = ct_format.quantization_config(
        [("^x$", ct_format.WeightScheme(3, True, 32))], ["lm_head"]
    )
    (tmp_path / "qc.json").write_text(json.dumps(config))
    script = tmp_path / "check.py"
    script.write_text(CT017_CHECK)
    env = {"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    args = [
        sys.executable,
        str(script),
        str(tmp_path / "in.npz"),
        str(tmp_path / "out.npz"),
        str(tmp_path / "qc.json"),
    ]
    done = subprocess.run(args, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    out = np.load(tmp_path / "out.npz")
    for bits in range(1, 9):
        assert np.array_equal(out[f"padded{bits}"], padded_pack(arrays[f"codes{bits}"], bits))
        assert bool(out[f"reads_dense{bits}"]) == (32 % bits == 0)


@pytest.mark.parametrize(
    ("layers", "warned"),
    [
        ("re:.*(q_proj|up_proj)$", "vLLM fuses mlp.gate_proj + mlp.up_proj; self_attn.q_proj"),
        ("ffn,attention", None),
        ("ffn", None),
        ("re:(lm_head|.*mlp\\..*)$", "lm_head is outside the decoder layers"),
    ],
)
def test_quantize_warns_what_vllm_would_miss(llama, tmp_path, layers, warned):
    code, _, err = run_matcli("quantize", str(llama), "-o", str(tmp_path / "p"), "--layers", layers)
    text = " ".join(err.split())
    assert code == 0, err
    assert ("vLLM" in text) == bool(warned)
    if warned and "fuses" in warned:
        assert warned in text and "self_attn.k_proj + self_attn.v_proj" in text
        assert "layer(s) 0, 1" in text
    elif warned:
        assert warned in text and "fuses" not in text


# (model_type, transformers v5 layer prefix, vLLM's): models/llama.py, qwen2.py, qwen3.py,
# mistral.py, gemma2.py, gemma3.py name layers model.layers.N; gemma3_mm.py:519 and
# gemma3n_mm.py:597 map model.language_model. to language_model.model.
FAMILY_PREFIXES = [
    ("llama", "model.layers.", "model.layers."),
    ("qwen2", "model.layers.", "model.layers."),
    ("qwen3", "model.layers.", "model.layers."),
    ("mistral", "model.layers.", "model.layers."),
    ("gemma2", "model.layers.", "model.layers."),
    ("gemma3_text", "model.layers.", "model.layers."),
    ("gemma3", "model.language_model.layers.", "language_model.model.layers."),
    ("gemma3n_text", "model.layers.", "model.layers."),
    ("gemma3n", "model.language_model.layers.", "language_model.model.layers."),
]


@pytest.mark.parametrize(("model_type", "hf", "served"), FAMILY_PREFIXES)
def test_every_family_targets_both_namings(model_type, hf, served, rules):
    from compressed_tensors.utils.match import match_named_modules

    from matcli.arch import resolve
    from matcli.quant.targets import targets_regex

    arch = resolve({"model_type": model_type}, [hf + "0.mlp.up_proj.weight"])
    ffn = arch.family.ffn
    names = [ffn.gate, ffn.up, ffn.down, *arch.family.attention]
    modules = [f"{hf}{i}.{n}" for i in (0, 1) for n in names]
    scheme = ct_format.WeightScheme(4, True, None)
    qc = ct_format.quantization_config([(targets_regex(arch, modules), scheme)], ["lm_head"])
    for i in (0, 1):
        for fused in (
            "self_attn.qkv_proj",
            "self_attn.o_proj",
            "mlp.gate_up_proj",
            "mlp.down_proj",
        ):
            got = rules.scheme(qc, f"{served}{i}.{fused}", PACKED_MODULES)
            assert got == {"num_bits": 4, "group_size": None}, (served, fused)
    vision = "vision_tower.vision_model.encoder.layers.0.self_attn.q_proj"
    assert rules.scheme(qc, vision, PACKED_MODULES) is None
    targets = qc["config_groups"]["group_0"]["targets"]
    tree = module_tree([*modules, "model." + vision, f"{hf}2.mlp.up_proj"])
    assert {n for n, _ in match_named_modules(tree, targets, qc["ignore"])} == set(modules)
