"""`matcli inspect`: what a checkpoint is, from its config and headers alone."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from matcli.arch import resolve
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
            family, num_layers = None, None
        linears = ct_format.packed_linears(folder)
        groups: dict[tuple, dict] = defaultdict(lambda: {"modules": 0, "weights": 0, "stored_bytes": 0})
        for lin in linears.values():
            key = (lin.scheme.bits, lin.scheme.name, lin.scheme.group_size)
            g = groups[key]
            g["modules"] += 1
            g["weights"] += lin.out_features * lin.in_features
            g["stored_bytes"] += sum(
                folder.tensors[lin.tensor(s)].nbytes
                for s in (ct_format.PACKED, ct_format.SCALE, ct_format.SHAPE, ct_format.ZERO)
                if lin.tensor(s) in folder.tensors
            )
        quantized = [
            {
                "bits": bits,
                "scheme": scheme,
                "group_size": group_size,
                **g,
                "effective_bits": round(8 * g["stored_bytes"] / g["weights"], 4),
            }
            for (bits, scheme, group_size), g in sorted(groups.items(), reverse=True)
        ]
        info = folder.config.get(CONFIG_KEY) or {}
        total_weights = sum(g["weights"] for g in quantized)
        return {
            "path": str(folder.path),
            "model_type": folder.config.get("model_type"),
            "family": family,
            "num_layers": num_layers,
            "role": info.get("role") or ("quantized" if linears else "dense"),
            "trained_bits": info.get("trained_bits") or (info.get("parent") or {}).get("trained_bits"),
            "matcli": info or None,
            "tensors": len(folder.tensors),
            "parameters": sum(t.numel for t in folder.tensors.values() if t.name not in _ct_aux(linears)),
            "quantized": quantized,
            "quantized_weights": total_weights,
            "effective_bits": round(8 * sum(g["stored_bytes"] for g in quantized) / total_weights, 4) if total_weights else None,
            "size_on_disk": sum(p.stat().st_size for p in folder.path.rglob("*") if p.is_file()),
        }


def _ct_aux(linears: dict) -> set[str]:
    """Tensors that describe quantized weights rather than being parameters themselves."""
    return {lin.tensor(s) for lin in linears.values() for s in (ct_format.SCALE, ct_format.SHAPE, ct_format.ZERO, ct_format.PACKED)}
