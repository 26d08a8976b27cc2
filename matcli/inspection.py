"""`matcli inspect`: what a checkpoint is, from its config and headers alone."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from matcli.arch import Architecture, config_section, family_for_model_type, resolve
from matcli.checkpoint.reader import ModelFolder
from matcli.errors import MatcliError
from matcli.quant import ct_format
from matcli.quant.parent import CONFIG_KEY


def inspect_model(path: Path) -> dict:
    with ModelFolder(path) as folder:
        arch, num_layers = _architecture(folder)
        linears = ct_format.packed_linears(folder)
        quantized = _quantized_groups(folder, arch, linears)
        info = config_section(folder.config, CONFIG_KEY) or {}
        total_weights = sum(g["weights"] for g in quantized)
        stored_bytes = sum(g["stored_bytes"] for g in quantized)
        storage = set().union(*(lin.tensor_names() for lin in linears.values()))
        # A quantized Linear is out x in parameters, whatever tensors store it.
        unquantized = sum(t.numel for t in folder.tensors.values() if t.name not in storage)
        return {
            "path": str(folder.path),
            "model_type": folder.config.get("model_type"),
            "family": arch.name if arch else None,
            "num_layers": num_layers,
            "role": info.get("role") or ("quantized" if linears else "dense"),
            "trained_bits": info.get("trained_bits")
            or (config_section(info, "parent") or {}).get("trained_bits"),
            "matcli": info or None,
            "tensors": len(folder.tensors),
            "parameters": unquantized + total_weights,
            "quantized": quantized,
            "quantized_weights": total_weights,
            "effective_bits": round(8 * stored_bytes / total_weights, 4) if total_weights else None,
            "size_on_disk": sum(p.stat().st_size for p in folder.path.rglob("*") if p.is_file()),
        }


def _architecture(folder: ModelFolder) -> tuple[Architecture | None, int | None]:
    """The family and layer count when matcli knows the family; else (None, None). A known
    family's config is checked like every command checks it: malformed is refused."""
    try:
        family_for_model_type(folder.config.get("model_type"))
    except MatcliError:  # a family matcli does not know: summarised without it
        return None, None
    arch = resolve(folder.config, list(folder.tensors))
    return arch, arch.num_layers(folder.text_config(arch.family.text_config))


def _quantized_groups(folder: ModelFolder, arch: Architecture | None, linears: dict) -> list[dict]:
    """Quantized Linears grouped by (bits, scheme, group size), widest first."""
    groups: dict[tuple, dict] = defaultdict(lambda: {"modules": [], "weights": 0, "stored": 0})
    for lin in linears.values():
        g = groups[(lin.scheme.bits, lin.scheme.name, lin.scheme.group_size)]
        g["modules"].append(lin.module)
        g["weights"] += lin.weights
        names = [n for n in lin.tensor_names() if n in folder.tensors]
        g["stored"] += sum(folder.tensors[n].nbytes for n in names)
    return [
        {
            "bits": bits,
            "scheme": scheme,
            "group_size": group_size,
            "modules": len(g["modules"]),
            "which": _which(arch, g["modules"]),
            "weights": g["weights"],
            "stored_bytes": g["stored"],
            "effective_bits": round(8 * g["stored"] / g["weights"], 4),
        }
        for (bits, scheme, group_size), g in sorted(groups.items(), reverse=True)
    ]


def _which(arch: Architecture | None, modules: list[str]) -> list[str]:
    """Modules as `layers 0-29: mlp.down_proj, mlp.gate_proj`, one line per set of layers."""
    if arch is None:
        return sorted(modules)
    layers_of: dict[str, list[int]] = defaultdict(list)
    outside = []
    for module in modules:
        split = arch.split_layer(module)
        if split is None:
            outside.append(module)
        else:
            layers_of[split[1]].append(split[0])
    by_layers: dict[str, list[str]] = defaultdict(list)
    for relative, layers in layers_of.items():
        by_layers[_ranges(sorted(layers))].append(relative)
    return [
        f"layers {layers}: {', '.join(sorted(names))}"
        for layers, names in sorted(by_layers.items())
    ] + sorted(outside)


def _ranges(numbers: list[int]) -> str:
    """[0, 1, 2, 5, 7, 8] -> '0-2,5,7-8'."""
    parts, start = [], numbers[0]
    for previous, current in zip(numbers, numbers[1:] + [None]):
        if current != previous + 1:
            parts.append(str(start) if start == previous else f"{start}-{previous}")
            start = current
    return ",".join(parts)
