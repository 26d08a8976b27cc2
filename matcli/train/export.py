"""Writing a parent from a model trained in memory (QAT, OmniQuant).

Quantized Linears are given as (codes, scale, zero point); tensors the training changed as
dense overrides; every other tensor is copied from the source checkpoint byte for byte. The
result has the same layout as `quantize --method rtn` writes.
"""

from __future__ import annotations

import torch

from matcli.checkpoint.plan import Plan, copy_tensor
from matcli.checkpoint.safetensors_file import torch_dtype
from matcli.checkpoint.writer import OutputTensor, dtype_code
from matcli.options import QuantizeOptions
from matcli.quant import ct_format, grid
from matcli.quant.ct_format import PACKED, SCALE, SHAPE, ZERO, WeightScheme
from matcli.quant.packing import packed_columns
from matcli.quant.parent import ParentInfo
from matcli.train.parent_plan import QuantTargets, parent_plan

QuantizedWeight = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # uint8 codes, scale, zero


def _in_memory(name: str, tensor: torch.Tensor, label: str) -> OutputTensor:
    tensor = tensor.detach().cpu().contiguous()
    return OutputTensor(
        name, dtype_code(tensor.dtype), tuple(tensor.shape), lambda: iter([tensor]), label
    )


def ct_tensors(
    module: str, quantized: QuantizedWeight, scheme: WeightScheme, label: str
) -> list[OutputTensor]:
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
        tensors.append(
            _in_memory(f"{module}.{ZERO}", ct_format.pack_zero_point(zero, scheme.bits), label)
        )
    return tensors


def plan_parent(
    targets: QuantTargets,
    quantized: dict[str, QuantizedWeight],
    dense: dict[str, torch.Tensor],
    info: ParentInfo,
    options: QuantizeOptions,
    report: dict,
) -> Plan:
    source, label = targets.folder, f"{info.method} int{targets.scheme.bits}"
    tensors = []
    for module in targets.modules:
        tensors += ct_tensors(module, quantized[module], targets.scheme, label)
    quantized_names = {m + ".weight" for m in targets.modules}
    for name, tensor in sorted(source.tensors.items()):
        if name in quantized_names:
            continue
        if name in dense:
            tensors.append(
                _in_memory(
                    name, dense[name].to(torch_dtype(tensor.dtype)), f"{info.method} (trained)"
                )
            )
        else:
            tensors.append(copy_tensor(source, name))
    return parent_plan(targets, tensors, info, options, report)
