"""Mix'n'Match widths: the named strategies and the bits budget."""

from __future__ import annotations

import json
import re

import pytest

from matcli.errors import MatcliError
from matcli.quant.mixnmatch import average_bits, file_bits, strategy_bits


def test_pyramid_is_low_at_the_ends_and_high_in_the_middle():
    # Ranked by distance from the middle (ties: the shallower layer first), cut in thirds.
    assert strategy_bits("pyramid", [8, 4, 2], [1] * 9, None) == [2, 4, 4, 8, 8, 8, 4, 2, 2]
    assert strategy_bits("reverse-pyramid", [8, 4, 2], [1] * 9, None) == [8, 8, 4, 2, 2, 2, 4, 4, 8]


def test_increasing_and_decreasing_are_monotone():
    inc = strategy_bits("increasing", [8, 4, 2], [1] * 12, None)
    dec = strategy_bits("decreasing", [8, 4, 2], [1] * 12, None)
    assert inc == sorted(inc) and dec == sorted(dec, reverse=True)


@pytest.mark.parametrize("target", [2.0, 3.0, 3.5, 4.0, 5.2, 8.0])
def test_target_bits_is_met_from_below_and_closely(target):
    weights = [10] * 30
    bits = strategy_bits("pyramid", [8, 4, 2], weights, target)
    avg = average_bits(bits, weights)
    assert avg <= target + 1e-9
    assert target - avg < 6 / 30 + 1e-9  # within one layer's change of the budget


def test_target_accounts_for_layer_sizes():
    weights = [1, 1, 100, 1, 1]  # the big middle layer dominates the average
    bits = strategy_bits("pyramid", [8, 4, 2], weights, 3.0)
    assert average_bits(bits, weights) <= 3.0 and bits[2] != 8


def test_target_below_the_smallest_width():
    with pytest.raises(MatcliError, match="below the smallest width"):
        strategy_bits("pyramid", [8, 4, 2], [1] * 4, 1.5)


def test_bits_config_files(tmp_path):
    (tmp_path / "list.json").write_text(json.dumps([2, 4, 8]))
    assert file_bits(tmp_path / "list.json", 3) == [2, 4, 8]
    (tmp_path / "map.yaml").write_text("default: 4\nlayers:\n  0: 2\n  2: 8\n")
    assert file_bits(tmp_path / "map.yaml", 4) == [2, 4, 8, 4]
    with pytest.raises(MatcliError, match="3 widths for 4 layers"):
        file_bits(tmp_path / "list.json", 4)
    (tmp_path / "gap.yaml").write_text("layers:\n  0: 2\n")
    with pytest.raises(MatcliError, match="no width for layer 1"):
        file_bits(tmp_path / "gap.yaml", 2)


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("digit.yaml", "layers:\n  '\u0661': 2\n", "layer key '\u0661' is not an index 0..3"),
        ("super.yaml", "layers:\n  '\u00b2': 2\n", "layer key '\u00b2' is not an index 0..3"),
        ("negative.yaml", "layers:\n  -1: 2\n", "layer key -1 is not an index 0..3"),
        ("far.json", '{"layers": {"9": 2}}', "layer keys must be indices 0..3"),
        ("list.yaml", "layers: [2, 4]\n", "layers must be a mapping of index to width"),
        ("bad.yaml", "layers: {0: 2\n", "is not valid YAML/JSON"),
        ("bad.json", '{"layers": ', "is not valid YAML/JSON"),
    ],
)
def test_malformed_bits_config_files_are_one_line(tmp_path, name, content, message):
    (tmp_path / name).write_text(content, encoding="utf-8")
    with pytest.raises(MatcliError, match=re.escape(message)) as refused:
        file_bits(tmp_path / name, 4)
    assert "\n" not in str(refused.value)


def test_a_binary_bits_config_file_is_refused(tmp_path):
    (tmp_path / "bin.yaml").write_bytes(b"\xff\xfe\x00layers")
    with pytest.raises(MatcliError, match="is not UTF-8 text"):
        file_bits(tmp_path / "bin.yaml", 4)
