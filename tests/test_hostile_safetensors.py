"""Hostile checkpoints: safetensors headers and index files are checked to the format's full
rules when read, and every way they can be wrong is refused with one MatcliError line."""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import pytest
from conftest import assert_refused
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from matcli.checkpoint.reader import ModelFolder
from matcli.checkpoint.safetensors_file import read_header
from matcli.errors import MatcliError


def header_file(path: Path, header: object, data: bytes | None = None, raw: bytes = b"") -> Path:
    """Write a safetensors file by hand: 8-byte length, JSON header (or `raw`), data bytes."""
    text = raw or json.dumps(header).encode()
    if data is None:
        data = bytes(_data_size(header))
    path.write_bytes(struct.pack("<Q", len(text)) + text + data)
    return path


def _data_size(header: object) -> int:
    if not isinstance(header, dict):
        return 0
    ends = [
        e["data_offsets"][-1]
        for k, e in header.items()
        if k != "__metadata__" and isinstance(e, dict) and _is_list(e.get("data_offsets"))
    ]
    return max([0, *[e for e in ends if isinstance(e, int)]])


def _is_list(value: object) -> bool:
    return isinstance(value, list) and bool(value)


def entry(begin: int, shape=(2,), dtype="F32", size=4) -> dict:
    n = size
    for d in shape:
        n *= d
    return {"dtype": dtype, "shape": list(shape), "data_offsets": [begin, begin + n]}


VALID = {"__metadata__": {"format": "pt"}, "a": entry(0), "b": entry(8, (3,))}


def refused(path: Path, fragment: str) -> str:
    with pytest.raises(MatcliError) as info:
        read_header(path)
    message = str(info.value)
    assert fragment in message, message
    assert str(path) in message and "\n" not in message
    return message


def test_valid_header_is_read(tmp_path):
    header = read_header(header_file(tmp_path / "m.safetensors", VALID))
    assert set(header.tensors) == {"a", "b"} and header.metadata == {"format": "pt"}
    assert header.tensors["b"].start == 8 + len(json.dumps(VALID)) + 8


@pytest.mark.parametrize(
    ("header", "fragment"),
    [
        ([1, 2], "not a JSON object"),
        ({"a": [1]}, "lacks dtype, shape or data_offsets"),
        ({"a": {"dtype": "F32", "shape": [2]}}, "lacks dtype"),
        ({"a": {**entry(0), "dtype": ["F32"]}}, "unknown dtype"),
        ({"a": {**entry(0), "dtype": "F33"}}, "unknown dtype"),
        ({"a": {**entry(0), "shape": "2"}}, "invalid shape"),
        ({"a": {**entry(0), "shape": [-2]}}, "invalid shape"),
        ({"a": {**entry(0), "shape": [2.0]}}, "invalid shape"),
        ({"a": {**entry(0), "shape": [True, 2]}}, "invalid shape"),
        ({"a": {**entry(0), "data_offsets": [0]}}, "invalid data_offsets"),
        ({"a": {**entry(0), "data_offsets": [8, 0]}}, "invalid data_offsets"),
        ({"a": {**entry(0), "data_offsets": ["0", 8]}}, "invalid data_offsets"),
        ({"a": {**entry(0), "data_offsets": {"0": 8}}}, "invalid data_offsets"),
        ({"a": {**entry(0), "data_offsets": [0, 12]}}, "has 12 bytes for shape [2] of F32"),
        ({"__metadata__": ["format", "pt"], "a": entry(0)}, "__metadata__ is a list"),
        ({"__metadata__": {"format": 1}, "a": entry(0)}, "__metadata__ value for 'format'"),
        ({"__metadata__": {"x": None}, "a": entry(0)}, "not a string"),
    ],
)
def test_malformed_entries_are_refused(tmp_path, header, fragment):
    refused(header_file(tmp_path / "m.safetensors", header), fragment)


def test_metadata_null_is_no_metadata(tmp_path):
    path = header_file(tmp_path / "m.safetensors", {"__metadata__": None, "a": entry(0)})
    assert read_header(path).metadata == {}


def test_duplicate_tensor_names_are_refused(tmp_path):
    a, b = json.dumps(entry(0)), json.dumps(entry(8))
    raw = f'{{"w": {a}, "w": {b}}}'.encode()
    refused(header_file(tmp_path / "m.safetensors", None, bytes(16), raw), "names 'w' twice")


def test_overlapping_tensors_are_refused(tmp_path):
    header = {"a": entry(0, (4,)), "b": entry(8)}  # a: 0..16, b: 8..16
    refused(header_file(tmp_path / "m.safetensors", header), "overlaps")


def test_aliased_tensors_are_refused(tmp_path):
    header = {"a": entry(0), "b": entry(0)}
    refused(header_file(tmp_path / "m.safetensors", header, bytes(8)), "overlaps")


def test_hole_between_tensors_is_refused(tmp_path):
    header = {"a": entry(0), "b": entry(12)}  # 8..12 belongs to nobody
    refused(header_file(tmp_path / "m.safetensors", header), "hole of 4 bytes before tensor 'b'")


def test_hole_at_the_start_is_refused(tmp_path):
    refused(header_file(tmp_path / "m.safetensors", {"a": entry(4)}), "hole of 4 bytes")


def test_trailing_bytes_are_refused(tmp_path):
    path = header_file(tmp_path / "m.safetensors", {"a": entry(0)}, bytes(12))
    refused(path, "describes 8 bytes of tensor data but the file holds 12")


def test_truncated_data_is_refused(tmp_path):
    path = header_file(tmp_path / "m.safetensors", VALID, bytes(10))
    refused(path, "the file is truncated")


def test_empty_tensors_may_share_an_offset(tmp_path):
    header = {"e": entry(0, (0,)), "f": entry(0, (0, 3)), "a": entry(0)}
    assert set(read_header(header_file(tmp_path / "m.safetensors", header)).tensors) == {
        "e",
        "f",
        "a",
    }


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        (b"\xff\xfe{}", "not JSON"),
        (b"{" * 3000 + b"}" * 3000, "not JSON"),
        (b"[" * 100_000, "JSON"),
        (b'{"a": ' + b"1" * 5000 + b"}", "not JSON"),
    ],
)
def test_unparsable_headers_are_refused(tmp_path, raw, fragment):
    refused(header_file(tmp_path / "m.safetensors", None, b"", raw), fragment)


# --- index files ---------------------------------------------------------------------------


def folder_with_index(path: Path, index: object) -> Path:
    path.mkdir()
    (path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    header_file(path / "model-00001-of-00001.safetensors", {"a": entry(0)})
    (path / "model.safetensors.index.json").write_text(json.dumps(index))
    return path


SHARD = "model-00001-of-00001.safetensors"


@pytest.mark.parametrize(
    ("index", "fragment"),
    [
        ([SHARD], "is not a JSON object"),
        ({"weight_map": [SHARD]}, "has no weight_map"),
        ({"weight_map": {}}, "has no weight_map"),
        ({"weight_map": {"a": [SHARD]}}, "maps tensor 'a' to ['model-00001"),
        ({"weight_map": {"a": SHARD, "b": 3}}, "maps tensor 'b' to 3, not a shard file name"),
        ({"weight_map": {"a": None}}, "not a shard file name"),
        ({"metadata": [], "weight_map": {"a": SHARD}}, "metadata that is a list"),
        ({"metadata": "x", "weight_map": {"a": SHARD}}, "metadata that is a str"),
    ],
)
def test_malformed_index_is_refused(tmp_path, index, fragment):
    folder = folder_with_index(tmp_path / "m", index)
    with pytest.raises(MatcliError) as info:
        ModelFolder(folder)
    assert fragment in str(info.value) and "model.safetensors.index.json" in str(info.value)


def test_valid_index_is_read(tmp_path):
    folder = folder_with_index(tmp_path / "m", {"metadata": {}, "weight_map": {"a": SHARD}})
    with ModelFolder(folder) as model:
        assert set(model.tensors) == {"a"}


# --- through the CLI -----------------------------------------------------------------------


@pytest.fixture
def parent_copy(llama_parent, tmp_path) -> Path:
    return Path(shutil.copytree(llama_parent, tmp_path / "parent"))


def rewrite_header(shard: Path, change) -> None:
    """Re-write a real shard with its header changed by `change(header) -> header`."""
    data = shard.read_bytes()
    n = int.from_bytes(data[:8], "little")
    header = change(json.loads(data[8 : 8 + n]))
    header_file(shard, None, data[8 + n :], json.dumps(header).encode())


def test_cli_refuses_overlapping_tensors(parent_copy, tmp_path):
    def alias(header):
        names = sorted(k for k in header if k != "__metadata__")
        first, second = header[names[0]], header[names[1]]
        second["data_offsets"] = list(first["data_offsets"])
        second["shape"], second["dtype"] = first["shape"], first["dtype"]
        return header

    rewrite_header(parent_copy / "model.safetensors", alias)
    out = tmp_path / "out"
    args = ["slice", str(parent_copy), "--bits", "2", "-o", str(out)]
    assert_refused(args, out, "re-save the checkpoint with safetensors")


def test_cli_refuses_list_metadata(parent_copy, tmp_path):
    rewrite_header(parent_copy / "model.safetensors", lambda h: {**h, "__metadata__": ["pt"]})
    assert_refused(["inspect", str(parent_copy)], tmp_path / "none", "__metadata__ is a list")


def test_cli_refuses_index_with_list_shard(parent_copy, tmp_path):
    names = read_header(parent_copy / "model.safetensors").tensors
    (parent_copy / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {n: ["model.safetensors"] for n in names}})
    )
    out = tmp_path / "out"
    args = ["slice", str(parent_copy), "--bits", "2", "-o", str(out)]
    assert_refused(args, out, "not a shard file name")


# --- fuzz: parsing succeeds with every byte range inside the file, or raises MatcliError ----


def small_valid_file() -> bytes:
    header = {
        "__metadata__": {"format": "pt"},
        "w": entry(0, (2, 3)),
        "b": entry(24, (3,), "BF16", 2),
        "e": entry(30, (0,)),
        "i": entry(30, (1,), "I64", 8),
    }
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + bytes(range(38))


VALID_FILE = small_valid_file()
JSON_SWAPS = [b'"', b"[", b"]", b"{", b"}", b",", b":", b"-1", b"1e9", b"true", b"null", b'""']


def mutate(data: bytes, draw) -> bytes:
    """One random mutation of a valid file: truncation, bit flips, offset digits changed,
    JSON tokens swapped in, or a different header length."""
    kind = draw(st.sampled_from(["truncate", "flip", "digits", "token", "length", "extend"]))
    buf = bytearray(data)
    if kind == "truncate":
        return bytes(buf[: draw(st.integers(0, len(buf)))])
    if kind == "flip":
        for _ in range(draw(st.integers(1, 8))):
            i = draw(st.integers(0, len(buf) - 1))
            buf[i] ^= 1 << draw(st.integers(0, 7))
        return bytes(buf)
    if kind == "length":
        buf[:8] = struct.pack("<Q", draw(st.integers(0, 2**64 - 1)))
        return bytes(buf)
    if kind == "extend":
        return bytes(buf) + draw(st.binary(min_size=1, max_size=16))
    n = min(int.from_bytes(buf[:8], "little"), len(buf) - 8)
    positions = [i for i in range(8, 8 + n) if kind != "digits" or chr(buf[i]).isdigit()]
    if not positions:
        return bytes(buf)
    i = draw(st.sampled_from(positions))
    if kind == "digits":
        buf[i] = ord(draw(st.sampled_from("0123456789")))
        return bytes(buf)
    token = draw(st.sampled_from(JSON_SWAPS))
    text = bytes(buf[8 : 8 + n])
    text = text[: i - 8] + token + text[i - 8 + draw(st.integers(0, 3)) :]
    return struct.pack("<Q", len(text)) + text + bytes(buf[8 + n :])


@st.composite
def hostile_files(draw) -> bytes:
    if draw(st.integers(0, 9)) == 0:
        return draw(st.binary(max_size=200))
    data = VALID_FILE
    for _ in range(draw(st.integers(1, 3))):
        if len(data) < 9:
            break
        data = mutate(data, draw)
    return data


def check_parse(path: Path, data: bytes) -> None:
    path.write_bytes(data)
    try:
        header = read_header(path)
    except MatcliError as e:
        assert "\n" not in str(e)
        return
    data_start = 8 + int.from_bytes(data[:8], "little")
    for info in header.tensors.values():
        assert data_start <= info.start <= info.start + info.nbytes <= len(data)
    covered = sum(info.nbytes for info in header.tensors.values())
    assert covered == len(data) - data_start
    assert all(isinstance(v, str) for v in header.metadata.values())


def test_valid_fuzz_seed_is_read(tmp_path):
    path = tmp_path / "m.safetensors"
    path.write_bytes(VALID_FILE)
    assert set(read_header(path).tensors) == {"w", "b", "e", "i"}


FUZZ_SETTINGS = dict(deadline=None, suppress_health_check=list(HealthCheck), database=None)


@settings(max_examples=400, **FUZZ_SETTINGS)
@given(data=hostile_files())
def test_fuzz_header_parsing(tmp_path_factory, data):
    check_parse(tmp_path_factory.mktemp("fuzz") / "m.safetensors", data)


@pytest.mark.fuzz
@settings(max_examples=100_000, **FUZZ_SETTINGS)
@given(data=hostile_files())
def test_fuzz_header_parsing_long(tmp_path_factory, data):
    check_parse(tmp_path_factory.mktemp("fuzz") / "m.safetensors", data)
