"""Writing a parent from a model trained in memory (QAT, OmniQuant).

Quantized Linears are given as (codes, scale, zero point); tensors the training changed as
dense overrides; every other tensor is copied from the source checkpoint byte for byte. The
result has the same layout as `quantize --method rtn` writes.
"""

from __future__ import annotations

import torch

from matcli.arch import Architecture
from matcli.checkpoint.plan import OutputCheckpoint, Plan, copy_tensor
from matcli.checkpoint.reader import ModelFolder
from matcli.checkpoint.writer import OutputTensor, dtype_code
from matcli.errors import MatcliError
from matcli.quant import ct_format, grid
from matcli.quant.ct_format import PACKED, SCALE, SHAPE, ZERO, WeightScheme
from matcli.quant.packing import packed_columns
from matcli.quant.parent import CONFIG_KEY, ParentInfo
from matcli.quant.targets import targets_regex

QuantizedWeight = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # uint8 codes, scale, zero


def _in_memory(name: str, tensor: torch.Tensor, label: str) -> OutputTensor:
    tensor = tensor.detach().cpu().contiguous()
    return OutputTensor(name, dtype_code(tensor.dtype), tuple(tensor.shape), lambda: iter([tensor]), label)


def ct_tensors(module: str, quantized: QuantizedWeight, scheme: WeightScheme, label: str) -> list[OutputTensor]:
    """The compressed-tensors tensors of one Linear from its codes, scale and zero point."""
    codes, scale, zero = quantized
    out_features, in_features = codes.shape
    packed = ct_format.pack_codes(grid.to_signed(codes, scheme.bits), scheme.bits)
    assert packed.shape == (out_features, packed_columns(in_features, scheme.bits))
    tensors = [
        _in_memory(f"{module}.{PACKED}", packed, label),
        _in_memory(f"{module}.{SCALE}", scale, label),
        _in_memory(f"{module}.{SHAPE}", torch.tensor([out_features, in_features]), label),
    ]
    if not scheme.symmetric:
        tensors.append(_in_memory(f"{module}.{ZERO}", ct_format.pack_zero_point(zero, scheme.bits), label))
    return tensors


def plan_parent(
    source: ModelFolder,
    arch: Architecture,
    quantized: dict[str, QuantizedWeight],
    dense: dict[str, torch.Tensor],
    scheme: WeightScheme,
    info: ParentInfo,
    options: dict,
    chunk_bytes: int,
    max_shard_bytes: int,
    report: dict,
) -> Plan:
    label = f"{info.method} int{scheme.bits}"
    tensors = []
    for module, q in quantized.items():
        if module + ".weight" not in source.tensors:
            raise MatcliError(f"trained module {module} has no weight in {source.path}; the checkpoint and the model disagree")
        tensors += ct_tensors(module, q, scheme, label)
    quantized_names = {m + ".weight" for m in quantized}
    for name, info_tensor in sorted(source.tensors.items()):
        if name in quantized_names:
            continue
        if name in dense:
            tensors.append(_in_memory(name, dense[name].to(getattr(torch, _torch_name(info_tensor.dtype))), f"{info.method} (trained)"))
        else:
            tensors.append(copy_tensor(source, name, chunk_bytes))
    tensors.sort(key=lambda t: t.name)
    config = dict(source.config)
    config["quantization_config"] = ct_format.quantization_config([(targets_regex(arch, sorted(quantized)), scheme)], ignore=["lm_head"])
    config[CONFIG_KEY] = info.model_dump()
    output = OutputCheckpoint(name="", config=config, tensors=tensors, metadata={"matcli.role": "parent", "matcli.bits": str(scheme.bits)})
    return Plan(
        command="quantize",
        source=source,
        outputs=[output],
        options=options,
        max_shard_bytes=max_shard_bytes,
        chunk_bytes=chunk_bytes,
        report=report,
    )


def _torch_name(code: str) -> str:
    from matcli.checkpoint.safetensors_file import DTYPES

    return DTYPES[code][0]
