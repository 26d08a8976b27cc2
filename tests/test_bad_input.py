"""Bad input: one clear line, a non-zero exit, no traceback, nothing written, input untouched."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import assert_refused, build_llama, run_matcli


@pytest.fixture
def parent_copy(llama_parent, tmp_path) -> Path:
    return Path(shutil.copytree(llama_parent, tmp_path / "parent"))


def test_missing_folder(tmp_path):
    assert_refused(
        ["slice", str(tmp_path / "nope"), "--bits", "2", "-o", str(tmp_path / "out")],
        tmp_path / "out",
        "does not exist",
    )


def test_folder_without_safetensors(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text('{"model_type": "llama"}')
    assert_refused(
        ["slice", str(tmp_path / "m"), "--bits", "2", "-o", str(tmp_path / "out")],
        tmp_path / "out",
        "no model.safetensors",
    )


def test_pickle_checkpoint_is_refused(tmp_path):
    m = tmp_path / "m"
    m.mkdir()
    (m / "config.json").write_text('{"model_type": "llama"}')
    (m / "pytorch_model.bin").write_bytes(b"\x80\x04\x95 pickle")
    assert_refused(
        ["quantize", str(m), "-o", str(tmp_path / "out")], tmp_path / "out", "pickle", inputs=[m]
    )


def test_truncated_safetensors(parent_copy, tmp_path):
    shard = parent_copy / "model.safetensors"
    shard.write_bytes(shard.read_bytes()[:-1000])
    assert_refused(
        ["slice", str(parent_copy), "--bits", "2", "-o", str(tmp_path / "out")],
        tmp_path / "out",
        "truncated",
        inputs=[parent_copy],
    )


def test_absurd_header_length(parent_copy, tmp_path):
    shard = parent_copy / "model.safetensors"
    data = bytearray(shard.read_bytes())
    data[:8] = (2**62).to_bytes(8, "little")
    shard.write_bytes(bytes(data))
    assert_refused(["inspect", str(parent_copy)], tmp_path / "none", "header length field")


def test_index_escaping_the_folder(parent_copy, tmp_path):
    (parent_copy / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": {"x": "../../../etc/hosts"}})
    )
    assert_refused(
        ["slice", str(parent_copy), "--bits", "2", "-o", str(tmp_path / "out")],
        tmp_path / "out",
        "outside the model folder",
    )


@pytest.mark.parametrize(
    ("bits", "match"), [("0", "out of range"), ("9", "out of range"), ("two", "not a whole number")]
)
def test_bits_out_of_range(llama_parent, tmp_path, bits, match):
    assert_refused(
        ["slice", str(llama_parent), "--bits", bits, "-o", str(tmp_path / "out")],
        tmp_path / "out",
        match,
    )


def test_bits_above_the_parent(llama, tmp_path):
    parent = tmp_path / "int4-parent"
    assert run_matcli("quantize", str(llama), "-o", str(parent), "--bits", "4", "-q")[0] == 0
    assert_refused(
        ["slice", str(parent), "--bits", "8", "-o", str(tmp_path / "out")],
        tmp_path / "out",
        "cannot slice int8 out of an int4 parent",
    )


def test_unknown_family(llama, tmp_path):
    m = Path(shutil.copytree(llama, tmp_path / "m"))
    config = json.loads((m / "config.json").read_text())
    config["model_type"] = "brandnew"
    (m / "config.json").write_text(json.dumps(config))
    assert_refused(
        ["quantize", str(m), "-o", str(tmp_path / "out")],
        tmp_path / "out",
        "matcli/arch/families/brandnew.yaml",
    )


def test_dense_model_given_to_slice(llama, tmp_path):
    assert_refused(
        ["slice", str(llama), "--bits", "2", "-o", str(tmp_path / "out")],
        tmp_path / "out",
        "matcli quantize",
    )


def test_existing_output_needs_force(llama_parent, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "precious.txt").write_text("keep")
    exit_code, _, stderr = run_matcli("slice", str(llama_parent), "--bits", "2", "-o", str(out))
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert exit_code == 2 and len(lines) == 1 and "--force" in lines[0], stderr
    assert (out / "precious.txt").read_text() == "keep"
    assert (
        run_matcli("slice", str(llama_parent), "--bits", "2", "-o", str(out), "--force", "-q")[0]
        == 0
    )
    assert not (out / "precious.txt").exists() and (out / "model.safetensors").exists()


def test_output_replacing_the_input_is_refused(parent_copy):
    assert_refused(
        ["slice", str(parent_copy), "--bits", "2", "-o", str(parent_copy), "--force"],
        parent_copy / "none",
        "replace the input",
        inputs=[parent_copy],
    )


def test_output_inside_the_input_is_refused(parent_copy):
    out = parent_copy / "sub"
    assert_refused(
        ["slice", str(parent_copy), "--bits", "2", "-o", str(out)],
        out,
        "inside the input",
        inputs=[parent_copy],
    )
    assert not out.exists()


def test_output_under_a_file_is_refused(llama_parent, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    assert_refused(
        ["slice", str(llama_parent), "--bits", "8", "-o", str(blocker / "out")],
        tmp_path / "none",
        "which is a file",
    )


@pytest.mark.skipif(
    not Path("/proc/self").is_dir(), reason="needs Linux /proc, where nobody can create folders"
)
def test_unwritable_output_is_one_line(llama_parent):
    out = Path("/proc/matcli-test/out")
    assert_refused(
        ["slice", str(llama_parent), "--bits", "8", "-o", str(out)],
        out,
        "/proc/matcli-test",
        code=1,
    )


def test_sharded_checkpoint_of_symlinks_is_read(llama_parent, tmp_path):
    """The Hugging Face cache keeps shards as symlinks into a blobs folder: they are shards too."""
    repo = tmp_path / "models--org--tiny"
    blobs, snapshot = repo / "blobs", repo / "snapshots" / "abc"
    blobs.mkdir(parents=True)
    snapshot.mkdir(parents=True)
    shutil.copyfile(llama_parent / "model.safetensors", blobs / "abc123")
    (snapshot / "model-00001-of-00001.safetensors").symlink_to(blobs / "abc123")
    for f in llama_parent.iterdir():
        if f.suffix == ".json":
            shutil.copyfile(f, snapshot / f.name)
    from matcli.checkpoint.safetensors_file import read_header

    names = read_header(blobs / "abc123").tensors
    (snapshot / "model.safetensors.index.json").write_text(
        json.dumps(
            {"metadata": {}, "weight_map": {n: "model-00001-of-00001.safetensors" for n in names}}
        )
    )
    assert (
        run_matcli("slice", str(snapshot), "--bits", "2", "-o", str(tmp_path / "out"), "-q")[0] == 0
    )
    assert (tmp_path / "out" / "model.safetensors").exists()


def test_group_size_that_does_not_divide(llama, tmp_path):
    assert_refused(
        ["quantize", str(llama), "-o", str(tmp_path / "out"), "--group-size", "48"],
        tmp_path / "out",
        "does not divide",
    )


def test_untrained_width_is_a_warning_not_a_refusal(llama_parent, tmp_path):
    code, _, err = run_matcli(
        "slice", str(llama_parent), "--bits", "2", "-o", str(tmp_path / "out")
    )
    assert code == 0 and "not trained for int2" in err


def test_debug_shows_the_traceback(tmp_path):
    code, _, err = run_matcli(
        "--debug", "slice", str(tmp_path / "nope"), "--bits", "2", "-o", str(tmp_path / "out")
    )
    assert (
        code == 2
        and "Traceback" in err
        and err.strip().endswith("does not exist; give the path of a Hugging Face model folder")
    )


def test_dry_run_writes_nothing(llama_parent, tmp_path):
    code, out, _ = run_matcli(
        "slice",
        str(llama_parent),
        "--bits",
        "4,2",
        "-o",
        str(tmp_path / "out"),
        "--dry-run",
        "--json",
    )
    assert code == 0 and not (tmp_path / "out").exists()
    plan = json.loads(out)
    assert [o["folder"] for o in plan["outputs"]] == ["int4", "int2"]
    changes = {c["key"] for c in plan["outputs"][1]["config_changes"]}
    assert "quantization_config.config_groups.group_0.weights.num_bits" in changes
    assert plan["estimated_peak_memory_bytes"] > 0


def _interrupt_slice(parent: Path, out: Path, sig: int) -> tuple[int, str]:
    """Start a slice (niced, so that this poller runs first on a busy machine), freeze it
    with SIGSTOP once its first output file is being staged, send `sig`, let it go on; its
    exit code and stderr."""
    cmd = ["nice", "-n", "19", sys.executable, "-m", "matcli", "slice", str(parent)]
    cmd += ["--bits", "4,2", "-o", str(out), "--chunk-size", "64", "-q"]
    # An earlier test may leave SIGINT ignored in this process, and children inherit that
    # (Python then installs no KeyboardInterrupt handler): give the slice the default.
    default_sigint = lambda: signal.signal(signal.SIGINT, signal.SIG_DFL)  # noqa: E731
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, preexec_fn=default_sigint)
    deadline = time.time() + 60
    staged = f".{out.name}.matcli-tmp-*/int*/model.safetensors"
    while time.time() < deadline and not list(out.parent.glob(staged)):
        time.sleep(0.002)
    assert proc.poll() is None, "the slice finished before it could be interrupted"
    os.kill(proc.pid, signal.SIGSTOP)
    os.kill(proc.pid, sig)
    os.kill(proc.pid, signal.SIGCONT)
    _, stderr = proc.communicate(timeout=60)
    return proc.returncode, stderr


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT])
def test_interrupted_write_leaves_no_destination(llama_parent, tmp_path, sig):
    """Kill a slice while it streams (slowed down by 64-byte chunks): no destination appears.
    On an idle machine the rest of the tiny slice can finish between the signal's sending and
    its landing; such a run must then have renamed a complete output (atomic), and it is
    retried until a signal lands mid-write."""
    for attempt in range(8):
        out = tmp_path / f"out{attempt}"
        code, stderr = _interrupt_slice(llama_parent, out, sig)
        if not out.exists():
            break
        assert (out / "int2" / "matcli_manifest.json").is_file(), "a partial destination"
    else:
        pytest.fail("in 8 tries no signal landed before the slice finished")
    if sig == signal.SIGINT:
        assert code == 130 and "interrupted" in stderr and "Traceback" not in stderr
        assert not list(tmp_path.glob(f".{out.name}.matcli-*"))  # Ctrl-C cleans its staging
    # A later run cleans a killed run's staging folder and succeeds.
    assert run_matcli("slice", str(llama_parent), "--bits", "2", "-o", str(out), "-q")[0] == 0
    assert not list(tmp_path.glob(f".{out.name}.matcli-*"))


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (
            OSError(28, "No space left on device", "/out/model.safetensors"),
            "error: /out/model.safetensors: No space left on device; check the path",
        ),
        (
            OSError("Can't load tokenizer for 'x'.\nIf you were trying to load it from the Hub..."),
            "error: Can't load tokenizer for 'x'.",
        ),
    ],
)
def test_os_errors_are_one_line(monkeypatch, capsys, error, expected):
    """A full disk gets the disk hint; other OSErrors (transformers raises them) their first
    line."""
    import matcli.cli as cli

    def fail(*args, **kwargs):
        raise error

    monkeypatch.setattr(cli, "app", fail)
    monkeypatch.setattr(sys, "argv", ["matcli", "slice"])
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    err = capsys.readouterr().err
    assert exit_info.value.code == 1 and err.startswith(expected) and err.count("\n") == 1, err


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ('"two"', "config.json: num_hidden_layers must be a positive whole number, not 'two'"),
        ("-2", "config.json: num_hidden_layers must be a positive whole number, not -2"),
        ("0", "config.json: num_hidden_layers must be a positive whole number, not 0"),
        ("2.5", "config.json: num_hidden_layers must be a positive whole number, not 2.5"),
    ],
)
@pytest.mark.parametrize("command", ["extract", "slice", "inspect"])
def test_layer_count_of_the_wrong_type_is_one_line(request, tmp_path, value, message, command):
    source = request.getfixturevalue("llama" if command == "extract" else "llama_parent")
    model = tmp_path / "model"
    shutil.copytree(source, model)
    config = json.loads((model / "config.json").read_text())
    config["num_hidden_layers"] = json.loads(value)
    (model / "config.json").write_text(json.dumps(config))
    args = {
        "extract": ["extract", str(model), "--ffn-config", "0.5", "-o", str(tmp_path / "o")],
        "slice": ["slice", str(model), "--bits-config", "pyramid", "-o", str(tmp_path / "o")],
        "inspect": ["inspect", str(model)],
    }[command]
    code, _, err = run_matcli(*args)
    assert code == 2 and message in err and err.count("\n") == 1, err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("method", ["rtn", "weighted-rtn"])
def test_non_finite_weights_are_refused_while_quantizing(llama, tmp_path, value, method):
    from safetensors.torch import load_file, save_file

    model = tmp_path / "model"
    shutil.copytree(llama, model)
    weights = load_file(model / "model.safetensors")
    name = "model.layers.1.mlp.up_proj.weight"
    weights[name][5, 3] = value
    save_file(weights, model / "model.safetensors", metadata={"format": "pt"})
    out = tmp_path / "parent"
    code, _, err = run_matcli("quantize", str(model), "-o", str(out), "--method", method, "-q")
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    assert f"{name} holds 1 NaN or infinite value(s) (the first in row 5)" in err
    assert not out.exists() and not list(tmp_path.glob(".parent.matcli-tmp-*"))


def test_an_empty_ffn_is_named_as_such(tmp_path):
    """A layer whose FFN weights have no rows is broken, not a width "outside 1..0"."""
    from safetensors.torch import load_file, save_file

    model = build_llama(tmp_path / "model")
    weights = load_file(model / "model.safetensors")
    for projection in ("gate_proj", "up_proj"):
        weights[f"model.layers.1.mlp.{projection}.weight"] = torch.zeros(0, 64)
    weights["model.layers.1.mlp.down_proj.weight"] = torch.zeros(64, 0)
    save_file(weights, model / "model.safetensors", metadata={"format": "pt"})
    out = tmp_path / "o"
    code, _, err = run_matcli("extract", str(model), "--ffn-config", "0.5", "-o", str(out))
    assert code == 2 and "layer 1's FFN" in err and "has width 0" in err, err
    assert err.count("\n") == 1 and not out.exists()


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda qc: qc.update(config_groups=[1, 2]), "quantization_config config_groups:"),
        (
            lambda qc: qc["config_groups"]["group_0"].update(targets=["re:model.(layers"]),
            "is not a valid regex",
        ),
        (
            lambda qc: qc["config_groups"]["group_0"]["weights"].update(num_bits="eight"),
            "config group 'group_0' weights num_bits:",
        ),
        (
            lambda qc: qc["config_groups"]["group_0"]["weights"].update(num_bits=12),
            "less than or equal to 8",
        ),
    ],
)
@pytest.mark.parametrize("command", ["slice", "inspect"])
def test_malformed_quantization_config_is_one_line(llama_parent, tmp_path, edit, message, command):
    parent = tmp_path / "parent"
    shutil.copytree(llama_parent, parent)
    config = json.loads((parent / "config.json").read_text())
    edit(config["quantization_config"])
    (parent / "config.json").write_text(json.dumps(config))
    out = tmp_path / "o"
    args = ["slice", str(parent), "--bits", "2", "-o", str(out)] if command == "slice" else []
    code, _, err = run_matcli(*(args or ["inspect", str(parent)]))
    assert code == 2 and message in err and err.count("\n") == 1, err
    assert "Traceback" not in err and not out.exists()


def test_weights_that_disagree_with_the_config_are_not_quantized(tmp_path):
    """A checkpoint whose FFN weights are wider than config.json says is refused before
    anything is written (extract refused it already; quantize used to quantize it)."""
    model = build_llama(tmp_path / "model")
    config = json.loads((model / "config.json").read_text())
    config["intermediate_size"] = 96  # the weights are 128 wide
    (model / "config.json").write_text(json.dumps(config))
    out = tmp_path / "parent"
    code, _, err = run_matcli("quantize", str(model), "-o", str(out), "--method", "rtn")
    assert code == 2 and err.count("\n") == 1, err
    assert "intermediate_size" in err and "128" in err and not out.exists()
