"""Command-line surface: fast help, inspect, quantize and slice reports."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import run_matcli


def test_help_does_not_import_torch_or_transformers():
    code = (
        "import sys, runpy; sys.argv = ['matcli', '--help']\n"
        "try:\n    runpy.run_module('matcli', run_name='__main__')\nexcept SystemExit:\n    pass\n"
        "assert 'torch' not in sys.modules and 'transformers' not in sys.modules, 'heavy import'\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "slice" in result.stdout and "quantize" in result.stdout


def test_inspect_parent_and_slice(llama, llama_parent, tmp_path):
    code, out, _ = run_matcli("inspect", str(llama_parent), "--json")
    report = json.loads(out)
    assert code == 0
    assert report["family"] == "llama" and report["num_layers"] == 2 and report["role"] == "parent"
    assert report["trained_bits"] == [8]
    (group,) = report["quantized"]
    assert group["bits"] == 8 and group["modules"] == 6 and group["weights"] == 6 * 64 * 128
    assert group["which"] == ["layers 0-1: mlp.down_proj, mlp.gate_proj, mlp.up_proj"]
    assert 8 < report["effective_bits"] < 8.6  # codes plus one fp32 scale per row
    assert (
        run_matcli("slice", str(llama_parent), "--bits", "2", "-o", str(tmp_path / "s"), "-q")[0]
        == 0
    )
    report = json.loads(run_matcli("inspect", str(tmp_path / "s"), "--json")[1])
    assert report["role"] == "slice" and report["quantized"][0]["bits"] == 2
    assert (
        report["size_on_disk"]
        < json.loads(run_matcli("inspect", str(llama_parent), "--json")[1])["size_on_disk"]
    )
    dense = json.loads(run_matcli("inspect", str(llama), "--json")[1])
    assert dense["role"] == "dense" and dense["quantized"] == []
    assert report["parameters"] == dense["parameters"]  # quantized Linears count as out x in
    assert run_matcli("inspect", str(llama_parent))[0] == 0


def test_dry_run_warns_about_an_existing_output(llama_parent, tmp_path):
    out = tmp_path / "s"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    code, text, _ = run_matcli(
        "slice", str(llama_parent), "--bits", "8", "-o", str(out), "--dry-run", "--json"
    )
    assert code == 0 and any("not empty" in w for w in json.loads(text)["warnings"])


def test_slice_json_summary(llama_parent, tmp_path):
    code, out, _ = run_matcli(
        "slice", str(llama_parent), "--bits", "4,2", "-o", str(tmp_path / "s"), "--json"
    )
    summary = json.loads(out)
    assert code == 0 and [r["matcli"]["bits"] for r in summary["outputs"]] == [4, 2]
    assert summary["outputs"][0]["size_bytes"] > summary["outputs"][1]["size_bytes"]
    assert any("not trained for int4" in w for w in summary["warnings"])


def test_target_bits_needs_a_strategy(llama_parent, tmp_path):
    code, _, err = run_matcli(
        "slice", str(llama_parent), "--bits", "2", "--target-bits", "3", "-o", str(tmp_path / "s")
    )
    assert code == 2 and "--target-bits needs --bits-config" in err


def test_quantize_dry_run_plans_without_writing(llama, tmp_path):
    code, out, _ = run_matcli(
        "quantize", str(llama), "-o", str(tmp_path / "p"), "--dry-run", "--json"
    )
    plan = json.loads(out)
    assert code == 0 and not (tmp_path / "p").exists()
    (output,) = plan["outputs"]
    assert (
        output["transforms"]["quantize int8"]["tensors"] == 6 * 3
    )  # packed, scale, shape per Linear
    assert any(c["key"] == "quantization_config" for c in output["config_changes"])
    code, text, _ = run_matcli("quantize", str(llama), "-o", str(tmp_path / "p"), "--dry-run")
    assert code == 0 and "estimated peak memory" in text and "model.safetensors" in text


def test_demo_runs_end_to_end(tmp_path):
    """The README's first command: the tiny Llama through quantize and slice, every artifact
    loaded."""
    code, out, err = run_matcli("demo", "-o", str(tmp_path / "demo"))
    assert code == 0, err
    for name in ("dense", "parent-int8", "int4", "int2"):
        assert (tmp_path / "demo" / name / "config.json").is_file()
        assert name in out
    # Every folder loads in transformers with the logits of matcli's own dequantized weights.
    cells = [
        [c.strip() for c in line.split("│")[1:-1]]
        for line in out.splitlines()
        if line.count("│") == 7
    ]
    diffs = [float(row[-1]) for row in cells if row[0] in ("parent-int8", "int4", "int2")]
    assert len(diffs) == 3 and max(diffs) < 1e-4, out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["slice", "--bogus"], "error: No such option: --bogus"),
        (["nosuch"], "error: No such command 'nosuch'; see matcli --help"),
        (["slice", "p", "-o", "o", "--bits", "2", "extra"], "unexpected extra argument"),
        (["slice", "p", "--bits"], "requires an argument"),
    ],
)
def test_usage_errors_are_one_line(args, message):
    code, out, err = run_matcli(*args)
    assert code == 2 and message in err and err.count("\n") == 1, err
    assert err.startswith("error: ") and "Usage:" not in err + out


def test_an_unexpected_exception_is_one_line_and_asks_for_debug(monkeypatch, tmp_path):
    import matcli.quant.slicing

    def bug(options):
        raise TypeError("'NoneType' object is not subscriptable")

    monkeypatch.setattr(matcli.quant.slicing, "plan_slice", bug)
    args = ("slice", str(tmp_path / "p"), "--bits", "2", "-o", str(tmp_path / "o"))
    code, _, err = run_matcli(*args)
    assert code == 1 and err.count("\n") == 1 and "Traceback" not in err, err
    assert "unexpected TypeError: 'NoneType' object is not subscriptable" in err
    assert "rerun with --debug" in err
    code, _, err = run_matcli("--debug", *args)
    assert code == 1 and "Traceback" in err


def test_a_multi_line_message_is_printed_as_one_line(llama, tmp_path):
    """YAML's parser explains an error over several lines; the user still gets one."""
    spec = tmp_path / "widths.yaml"
    spec.write_text("ffn: [1,\n  2\nskip_layers: {\n")
    out = tmp_path / "o"
    code, _, err = run_matcli("extract", str(llama), "--ffn-config", str(spec), "-o", str(out))
    assert code == 2 and "is not valid YAML" in err, err
    assert err.count("\n") == 1 and err.startswith("error: ") and not out.exists()
