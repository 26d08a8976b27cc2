"""Mix'n'Match: a bit-width per layer, chosen by a named strategy or given in a file.

The paper (MatQuant §3.2.1, §5) slices each layer's FFN to one of the trained widths with no
further training; Pyramid (lowest width at the first and last layers, highest in the
middle) worked best. It gives no exact layer boundaries, so matcli's rule is:

- each strategy ranks layers (Pyramid: distance from the middle; Increasing: depth; ...);
- the ranked layers are cut into consecutive blocks, highest width first;
- without a budget the blocks are as equal as possible; with `--target-bits T` the block
  sizes maximise the average bits per quantized weight subject to average <= T (scales not
  counted, as in the paper's plots), ties going to the most even split.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import yaml

from matcli.errors import MatcliError
from matcli.options import MIX_N_MATCH_STRATEGIES


def _rank(strategy: str, num_layers: int) -> list[int]:
    """Layer indices, the one that gets the most bits first."""
    middle = (num_layers - 1) / 2
    keys = {
        "pyramid": lambda i: (abs(i - middle), i),
        "reverse-pyramid": lambda i: (-abs(i - middle), i),
        "increasing": lambda i: -i,
        "decreasing": lambda i: i,
    }
    return sorted(range(num_layers), key=keys[strategy])


def _assign(order: list[int], counts: tuple[int, ...], widths: list[int]) -> list[int]:
    bits = [0] * len(order)
    blocks = itertools.chain.from_iterable([w] * n for w, n in zip(widths, counts))
    for layer, w in zip(order, blocks):
        bits[layer] = w
    return bits


def average_bits(layer_bits: list[int], layer_weights: list[int]) -> float:
    total = sum(layer_weights)
    return sum(b * n for b, n in zip(layer_bits, layer_weights)) / total


def strategy_bits(
    strategy: str, widths: list[int], layer_weights: list[int], target_bits: float | None
) -> list[int]:
    """Per-layer widths for a named strategy; `layer_weights` are quantized weights per layer."""
    if strategy not in MIX_N_MATCH_STRATEGIES:
        raise MatcliError(
            f"unknown Mix'n'Match strategy {strategy!r}; use one of "
            f"{', '.join(MIX_N_MATCH_STRATEGIES)} or a file"
        )
    widths = sorted(set(widths), reverse=True)
    num_layers = len(layer_weights)
    order = _rank(strategy, num_layers)
    even = num_layers / len(widths)
    best = None
    for counts in _compositions(num_layers, len(widths)):
        bits = _assign(order, counts, widths)
        avg = average_bits(bits, layer_weights)
        if target_bits is not None and avg > target_bits + 1e-9:
            continue
        unevenness = sum((n - even) ** 2 for n in counts)
        key = (avg if target_bits is not None else 0.0, -unevenness, counts)
        if best is None or key > best[0]:
            best = (key, bits)
    if best is None:
        raise MatcliError(
            f"--target-bits {target_bits} is below the smallest width {min(widths)}; raise it"
        )
    return best[1]


def _compositions(total: int, parts: int):
    """Every tuple of `parts` non-negative integers summing to `total`."""
    for cuts in itertools.combinations_with_replacement(range(total + 1), parts - 1):
        bounds = (0, *cuts, total)
        yield tuple(b - a for a, b in zip(bounds, bounds[1:]))


def file_bits(path: Path, num_layers: int) -> list[int]:
    """Widths from a YAML/JSON file: a list (one per layer) or {default: r, layers: {i: r}}."""
    data = _read_bits_file(path)
    if isinstance(data, list):
        bits = data
    elif isinstance(data, dict) and set(data) <= {"default", "layers"}:
        layers = _layer_map(path, data.get("layers") or {}, num_layers)
        bits = [layers.get(i, data.get("default")) for i in range(num_layers)]
    else:
        raise MatcliError(
            f"--bits-config {path} must hold a list of widths or "
            f"{{default: r, layers: {{index: r}}}}"
        )
    if len(bits) != num_layers:
        raise MatcliError(f"--bits-config {path} gives {len(bits)} widths for {num_layers} layers")
    missing = [i for i, b in enumerate(bits) if b is None]
    if missing:
        raise MatcliError(
            f"--bits-config {path} gives no width for layer {missing[0]} (add it or a default)"
        )
    if not all(isinstance(b, int) and not isinstance(b, bool) for b in bits):
        raise MatcliError(f"--bits-config {path}: widths must be integers")
    return bits


def _read_bits_file(path: Path) -> object:
    """The parsed file; unreadable, non-UTF-8 or malformed files are one line."""
    try:
        text = path.read_text(encoding="utf-8")
        return yaml.safe_load(text) if path.suffix in (".yaml", ".yml") else json.loads(text)
    except OSError as e:
        raise MatcliError(f"cannot read --bits-config {path}: {e.strerror}") from e
    except UnicodeDecodeError as e:
        raise MatcliError(f"--bits-config {path} is not UTF-8 text") from e
    except (yaml.YAMLError, json.JSONDecodeError) as e:
        problem = str(e).strip().splitlines()[0]
        raise MatcliError(f"--bits-config {path} is not valid YAML/JSON: {problem}") from e


def _layer_map(path: Path, layers: object, num_layers: int) -> dict[int, object]:
    """`layers: {index: width}` with indices as ASCII digits (int or text) in range."""
    if not isinstance(layers, dict):
        raise MatcliError(f"--bits-config {path}: layers must be a mapping of index to width")
    indices = {}
    for key, width in layers.items():
        text = str(key) if isinstance(key, int) and not isinstance(key, bool) else key
        if not (isinstance(text, str) and text.isascii() and text.isdigit()):
            raise MatcliError(
                f"--bits-config {path}: layer key {key!r} is not an index 0..{num_layers - 1}"
            )
        if int(text) >= num_layers:
            raise MatcliError(
                f"--bits-config {path}: layer keys must be indices 0..{num_layers - 1}"
            )
        indices[int(text)] = width
    return indices
