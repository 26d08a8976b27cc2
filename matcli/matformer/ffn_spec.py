"""The text forms of `--ffn-config` and `--skip-layers`, read without looking at the model.

Forms of `--ffn-config` (widths are per kept layer, after skipping):
- a width `8192`, a ratio of each layer's full width `0.5`, or a granularity `s|m|l|xl`
  (1/8, 1/4, 1/2, 1 of the full width, the MatFormer paper's S/M/L/XL): the same for all;
- a comma-separated list of those, one per kept layer: `8192,8192,16384,...`;
- a YAML or JSON file: a list, or `{ffn: [...], skip_layers: [...]}`;
- a row of Google's Gemma 3n slicing CSV: `configs.csv:"Config for E2.98B (block-level)"`.
  Cells like `[2_048 * 4, ...]` are parsed as integer products, never evaluated.

Ratios and granularities become widths in `width_of`, given a layer's full width; checking
the widths and skips against the model is `ffn_config`'s job.
"""

from __future__ import annotations

import csv
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from matcli.errors import MatcliError

GRANULARITIES = {"s": 8, "m": 4, "l": 2, "xl": 1}  # name -> full width divided by
CSV_WIDTHS, CSV_SKIPPED = "FFN Hidden Dims", "Layers Skipped"


@dataclass(frozen=True)
class FfnSpec:
    """`--ffn-config` as written: one item per kept layer (or one for all), and the skipped
    layers it names itself (None: it names none, --skip-layers decides)."""

    items: list[object]
    skip: list[int] | None = None
    skip_origin: str = ""  # where `skip` comes from, for the contradiction message


def read_spec(spec: str) -> FfnSpec:
    """The items (and skipped layers, if any) of a width, list, YAML/JSON file or CSV row."""
    csv_path, _, row = spec.partition(":")
    if csv_path.lower().endswith(".csv") and row:
        widths, skip = read_csv_row(Path(csv_path), row.strip().strip('"').strip("'"))
        origin = f"the CSV row's skipped layers {skip}; drop --skip-layers"
        return FfnSpec(list(widths), skip, origin)
    if spec.lower().endswith((".yaml", ".yml", ".json")):
        items, skip = _read_file(Path(spec))
        return FfnSpec(items, skip, f"skip_layers in {spec}; drop one")
    return FfnSpec([part for part in (p.strip() for p in spec.split(",")) if part])


def parse_layer_list(text: str, what: str = "--skip-layers") -> list[int]:
    """`20-24`, `3,7,20-24` -> sorted unique layer indices."""
    layers: set[int] = set()
    for part in filter(None, (p.strip() for p in text.split(","))):
        m = re.fullmatch(r"(\d+)(?:\s*-\s*(\d+))?", part)
        if not m:
            raise MatcliError(
                f"{what} {text!r}: {part!r} is not a layer index or a range like 20-24"
            )
        lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
        if hi < lo:
            raise MatcliError(f"{what} {text!r}: the range {part!r} runs backwards")
        layers.update(range(lo, hi + 1))
    return sorted(layers)


def integer_product(text: str, where: str) -> int:
    """`2_048 * 4` -> 8192. Only integers (with `_` separators) joined by `*` are accepted."""
    factors = [f.strip() for f in text.split("*")]
    if not factors or not all(re.fullmatch(r"\d+(?:_\d+)*", f) for f in factors):
        raise MatcliError(
            f"{where}: {text.strip()!r} is not an integer or a product of integers like 2_048 * 4"
        )
    value = 1
    for f in factors:
        value *= int(f.replace("_", ""))
    return value


def _bracketed_list(cell: str, where: str) -> list[str]:
    cell = (cell or "").strip()
    if not cell:
        return []
    if not (cell.startswith("[") and cell.endswith("]")):
        raise MatcliError(f"{where}: {cell[:40]!r} is not a [..] list")
    return [item for item in (i.strip() for i in cell[1:-1].split(",")) if item]


def read_csv_row(path: Path, row_name: str) -> tuple[list[int], list[int]]:
    """(widths, skipped layers) of a named row of a Gemma 3n slicing-config CSV."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    except OSError as e:
        raise MatcliError(f"cannot read --ffn-config CSV {path}: {e.strerror}") from e
    if not rows or CSV_WIDTHS not in rows[0] or "name" not in rows[0]:
        raise MatcliError(
            f"{path} is not a slicing-config CSV: it needs the columns name and {CSV_WIDTHS!r}"
        )
    wanted = row_name.strip()
    for row in rows:
        name = (row["name"] or "").strip()
        if wanted in (name, name.removeprefix("Config for ")):
            where = f"{path} row {name!r}"
            widths = [
                integer_product(item, where) for item in _bracketed_list(row[CSV_WIDTHS], where)
            ]
            skipped = [
                integer_product(item, where)
                for item in _bracketed_list(row.get(CSV_SKIPPED) or "", where)
            ]
            return widths, sorted(set(skipped))
    names = ", ".join(repr((r["name"] or "").strip()) for r in rows)
    raise MatcliError(f"{path} has no row named {row_name!r}; its rows are: {names}")


def width_of(item: object, full: int, where: str) -> int:
    """One width for a layer of full width `full`: an int (or a whole float above 1), a ratio
    in (0, 1], or s/m/l/xl. Range checks against `full` come later, with the plan's."""
    if isinstance(item, bool):
        raise MatcliError(f"{where}: {item!r} is not a width")
    if isinstance(item, int):
        return item
    text = str(item).strip().lower()
    if text in GRANULARITIES:
        return full // GRANULARITIES[text]
    if re.fullmatch(r"\d+(?:_\d+)*(?:\s*\*\s*\d+(?:_\d+)*)*", text):
        return integer_product(text, where)
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise MatcliError(
            f"{where}: {item!r} is not a width, a ratio like 0.5, or one of s, m, l, xl"
        )
    if value <= 0:
        raise MatcliError(
            f"{where}: {item!r} is not positive; give a number of neurons in 1..{full}, or a "
            "ratio in (0, 1]"
        )
    if value > 1:
        if not value.is_integer():
            raise MatcliError(
                f"{where}: {item!r} is a fractional width; give an integer number of neurons, "
                "or a ratio in (0, 1]"
            )
        return int(value)  # 64.0 (YAML, or a computed 2048 * 3.5): a whole number of neurons
    width = value * full
    if width != int(width):
        raise MatcliError(
            f"{where}: ratio {item} of {full} is {width:g}, not a whole number of neurons"
        )
    return int(width)


def _read_file(path: Path) -> tuple[list[object], list[int] | None]:
    try:
        text = path.read_text()
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except OSError as e:
        raise MatcliError(f"cannot read --ffn-config {path}: {e.strerror}") from e
    except (json.JSONDecodeError, yaml.YAMLError) as e:
        raise MatcliError(f"--ffn-config {path} is not valid {path.suffix[1:].upper()}: {e}") from e
    if isinstance(data, list):
        return data, None
    if isinstance(data, dict) and "ffn" in data and set(data) <= {"ffn", "skip_layers"}:
        skip = data.get("skip_layers")
        if skip is not None and not (
            isinstance(skip, list) and all(isinstance(i, int) for i in skip)
        ):
            raise MatcliError(f"--ffn-config {path}: skip_layers must be a list of layer indices")
        return list(data["ffn"]), sorted(set(skip)) if skip is not None else None
    raise MatcliError(
        f"--ffn-config {path} must hold a list of widths or {{ffn: [...], skip_layers: [...]}}"
    )
