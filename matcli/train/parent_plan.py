"""What every way of making a parent shares: which Linears, and the parent's plan.

RTN streams codes from the source; QAT and OmniQuant export codes trained in memory. Both end
here, so every parent has the same config, metadata and layout whatever made it.
"""

from __future__ import annotations

from dataclasses import dataclass

from matcli.arch import Architecture, resolve
from matcli.checkpoint.plan import OutputCheckpoint, Plan
from matcli.checkpoint.reader import ModelFolder
from matcli.checkpoint.safetensors_file import FLOAT_CODES, TensorInfo
from matcli.checkpoint.writer import OutputTensor
from matcli.errors import MatcliError
from matcli.matformer.source import read_source
from matcli.options import QuantizeOptions
from matcli.quant import ct_format
from matcli.quant.ct_format import WeightScheme
from matcli.quant.parent import CONFIG_KEY, ParentInfo
from matcli.quant.targets import select_linears, serving_warnings, targets_regex


@dataclass
class QuantTargets:
    """The dense source, its family, the Linears to quantize and the scheme."""

    folder: ModelFolder
    arch: Architecture
    modules: list[str]
    scheme: WeightScheme


def quant_targets(options: QuantizeOptions) -> QuantTargets:
    """Open the source and check everything about it before any work starts."""
    folder = ModelFolder(options.model)
    if "quantization_config" in folder.config:
        raise MatcliError(
            f"{options.model} is already quantized (config.json has quantization_config); "
            "quantize the dense model"
        )
    arch = resolve(folder.config, list(folder.tensors))
    read_source(folder)  # config.json and the FFN weights agree, layer by layer
    modules = select_linears(arch, {n: t.shape for n, t in folder.tensors.items()}, options.layers)
    weights = [folder.tensors[m + ".weight"] for m in modules]
    for weight in weights:
        if weight.dtype not in FLOAT_CODES:
            raise MatcliError(
                f"{weight.name} is {weight.dtype}, not a float weight; quantize a dense model"
            )
    check_group_size(options.group_size, weights)
    return QuantTargets(
        folder,
        arch,
        modules,
        WeightScheme(options.bits, options.scheme == "symmetric", options.group_size),
    )


def check_group_size(group_size: int | None, weights: list[TensorInfo]) -> None:
    bad = next((w for w in weights if group_size and w.shape[1] % group_size), None)
    if bad is None:
        return
    fitting = [g for g in (32, 64, 128, 256) if all(w.shape[1] % g == 0 for w in weights)]
    hint = (
        f"sizes that fit every layer: {', '.join(map(str, fitting))}"
        if fitting
        else "no power of two from 32 to 256 fits every layer"
    )
    raise MatcliError(
        f"--group-size {group_size} does not divide the {bad.shape[1]} input columns of "
        f"{bad.name}; "
        f"{hint}; or omit --group-size for per-channel scales"
    )


def parent_plan(
    targets: QuantTargets,
    tensors: list[OutputTensor],
    info: ParentInfo,
    options: QuantizeOptions,
    report: dict | None = None,
) -> Plan:
    """The plan that writes a parent: the tensors given, and the parent's config."""
    config = dict(targets.folder.config)
    regex = targets_regex(targets.arch, targets.modules)
    config["quantization_config"] = ct_format.quantization_config(
        [(regex, targets.scheme)], ignore=["lm_head"]
    )
    config[CONFIG_KEY] = info.model_dump()
    warnings = ct_format.layout_warnings({targets.scheme.bits})
    linears = [
        n.removesuffix(".weight") for n, t in targets.folder.tensors.items() if len(t.shape) == 2
    ]
    warnings += serving_warnings(targets.arch, linears, targets.modules)
    metadata = {"matcli.role": "parent", "matcli.bits": str(targets.scheme.bits)}
    output = OutputCheckpoint(
        name="", config=config, tensors=sorted(tensors, key=lambda t: t.name), metadata=metadata
    )
    return Plan(
        command="quantize",
        source=targets.folder,
        outputs=[output],
        max_shard_bytes=options.max_shard_size,
        chunk_bytes=options.chunk_size,
        report=report or {},
        warnings=warnings,
    )
