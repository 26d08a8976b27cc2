"""`matcli inspect`: what a checkpoint is, from its config and headers alone."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from matcli.arch import Architecture, resolve
from matcli.checkpoint.reader import ModelFolder
from matcli.errors import MatcliError
from matcli.quant import ct_format
from matcli.quant.parent import CONFIG_KEY


def inspect_model(path: Path) -> dict:
    with ModelFolder(path) as folder:
        try:
            arch = resolve(folder.config, list(folder.tensors))
            family = arch.name
            num_layers = arch.num_layers(folder.text_config(arch.family.text_config))
        except MatcliError:
            arch, family, num_layers = None, None, None
        linears = ct_format.packed_linears(folder)
        groups: dict[tuple, dict] = defaultdict(
            lambda: {"modules": [], "weights": 0, "stored_bytes": 0}
        )
        for lin in linears.values():
            g = groups[(lin.scheme.bits, lin.scheme.name, lin.scheme.group_size)]
            g["modules"].append(lin.module)
            g["weights"] += lin.weights
            g["stored_bytes"] += sum(
                folder.tensors[n].nbytes for n in lin.tensor_names() if n in folder.tensors
            )
        quantized = [
            {
                "bits": bits,
                "scheme": scheme,
                "group_size": group_size,
                "modules": len(g["modules"]),
                "which": _which(arch, g["modules"]),
                "weights": g["weights"],
                "stored_bytes": g["stored_bytes"],
                "effective_bits": round(8 * g["stored_bytes"] / g["weights"], 4),
            }
            for (bits, scheme, group_size), g in sorted(groups.items(), reverse=True)
        ]
        info = folder.config.get(CONFIG_KEY) or {}
        total_weights = sum(g["weights"] for g in quantized)
        storage = set().union(*(lin.tensor_names() for lin in linears.values()))
        return {
            "path": str(folder.path),
            "model_type": folder.config.get("model_type"),
            "family": family,
            "num_layers": num_layers,
            "role": info.get("role") or ("quantized" if linears else "dense"),
            "trained_bits": info.get("trained_bits")
            or (info.get("parent") or {}).get("trained_bits"),
            "matcli": info or None,
            "tensors": len(folder.tensors),
            # A quantized Linear is out x in parameters, whatever tensors store it.
            "parameters": sum(t.numel for t in folder.tensors.values() if t.name not in storage)
            + total_weights,
            "quantized": quantized,
            "quantized_weights": total_weights,
            "effective_bits": round(
                8 * sum(g["stored_bytes"] for g in quantized) / total_weights, 4
            )
            if total_weights
            else None,
            "size_on_disk": sum(p.stat().st_size for p in folder.path.rglob("*") if p.is_file()),
        }


def _which(arch: Architecture | None, modules: list[str]) -> list[str]:
    """Modules as `layers 0-29: mlp.down_proj, mlp.gate_proj`, one line per set of layers."""
    if arch is None:
        return sorted(modules)
    layers_of: dict[str, list[int]] = defaultdict(list)
    outside = []
    for module in modules:
        split = arch.split_layer(module + ".")
        if split is None:
            outside.append(module)
        else:
            layers_of[split[1].removesuffix(".")].append(split[0])
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
