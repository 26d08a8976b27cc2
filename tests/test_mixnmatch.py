"""Mix'n'Match widths: the named strategies and the bits budget."""

from __future__ import annotations

import json

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
