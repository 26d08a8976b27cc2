"""Slice widths: the one definition of a width r, its range, the defaults and their order.

A width is validated where it enters (options, a --bits-config file, a parent's config) with
`check_width`; everything after that trusts it.
"""

from __future__ import annotations

from collections.abc import Iterable

from matcli.errors import MatcliError

MIN_WIDTH = 1
MAX_WIDTH = 8
# The paper's nested widths R (MatQuant, every Gemma and Mistral run).
DEFAULT_WIDTHS = (8, 4, 2)


def check_width(width: int, parent_bits: int = MAX_WIDTH, what: str = "width") -> int:
    """A width of a `parent_bits` parent, or one line saying what the range is."""
    if isinstance(width, bool) or not isinstance(width, int):
        raise MatcliError(f"{what} {width!r} is not a whole number of bits")
    if MIN_WIDTH <= width <= MAX_WIDTH and width > parent_bits:
        raise MatcliError(
            f"{what} {width}: cannot slice int{width} out of an int{parent_bits} parent; "
            f"widths go up to {parent_bits}"
        )
    if not MIN_WIDTH <= width <= parent_bits:
        of = "" if parent_bits == MAX_WIDTH else f" of an int{parent_bits} parent"
        raise MatcliError(
            f"{what} {width} is out of range: widths{of} are {MIN_WIDTH} to {parent_bits} bits"
        )
    return width


def check_widths(
    widths: Iterable[int], parent_bits: int = MAX_WIDTH, what: str = "width"
) -> list[int]:
    """Several widths, each in range and none repeated; the order is kept."""
    widths = list(widths)
    if not widths:
        raise MatcliError(f"give at least one {what}, e.g. 2 or 4,2")
    for width in widths:
        check_width(width, parent_bits, what)
    if len(set(widths)) != len(widths):
        raise MatcliError(f"a {what} is repeated in {','.join(map(str, widths))}")
    return widths


def widest_first(widths: Iterable[int]) -> list[int]:
    return sorted(widths, reverse=True)


def default_widths(parent_bits: int) -> list[int]:
    """The paper's {8, 4, 2} below the parent's own width, plus that width; widest first."""
    return widest_first({parent_bits} | {w for w in DEFAULT_WIDTHS if w < parent_bits})
