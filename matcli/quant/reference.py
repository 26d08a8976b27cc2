"""matcli's own dequantized weights of a compressed-tensors checkpoint, in memory.

This is the reference side of the loadability invariant: the model transformers builds from
a sliced folder must produce the logits of a plain model that carries these weights.
"""

from __future__ import annotations

import torch

from matcli.checkpoint.reader import ModelFolder
from matcli.quant import ct_format, grid


def dequantized_state_dict(folder: ModelFolder) -> dict[str, torch.Tensor]:
    """Every tensor of the checkpoint, with each quantized Linear replaced by its dense weight."""
    linears = ct_format.packed_linears(folder)
    owned = {lin.tensor(s) for lin in linears.values() for s in (ct_format.PACKED, ct_format.SCALE, ct_format.SHAPE, ct_format.ZERO)}
    state = {name: folder.read(name).clone() for name in folder.tensors if name not in owned}
    for module, lin in linears.items():
        codes = ct_format.read_codes(folder, lin, 0, lin.out_features)
        scale, zero = ct_format.read_scale_zero(folder, lin)
        state[module + ".weight"] = grid.dequantize(codes, scale, zero)
    return state
