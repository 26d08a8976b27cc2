"""matcli's own dequantized weights of a compressed-tensors checkpoint, in memory.

This is the reference side of the loadability invariant: the model transformers builds from
a sliced folder must produce the logits of a plain model that carries these weights.
"""

from __future__ import annotations

import torch

from matcli.checkpoint.reader import ModelFolder
from matcli.quant import ct_format, grid


def dequantized_state_dict(
    folder: ModelFolder,
    bits: int | dict[str, int] | None = None,
    extra_precision: bool = False,
    scale_dtype: torch.dtype | None = None,
) -> dict[str, torch.Tensor]:
    """Every tensor of the checkpoint, each quantized Linear replaced by its dense weight.

    With `bits` (one width, or a width per module), each Linear is first sliced to r,
    S(q, c, r), as `matcli slice` would. With `scale_dtype` (e.g. float32, as ggml computes
    d * q) the product is rounded in that dtype instead of the stored scale's.
    """
    linears = ct_format.packed_linears(folder)
    owned = set().union(*(lin.tensor_names() for lin in linears.values()))
    state = {name: folder.read(name).clone() for name in folder.tensors if name not in owned}
    for module, lin in linears.items():
        c = lin.scheme.bits
        r = c if bits is None else bits if isinstance(bits, int) else bits[module]
        codes = ct_format.read_codes(folder, lin, 0, lin.out_features)
        sliced = grid.slice_codes(codes, c, r, extra_precision)
        scale, zero = ct_format.read_scale_zero(folder, lin)
        if scale_dtype is not None:
            scale = scale.to(scale_dtype)
        state[module + ".weight"] = grid.dequantize(
            grid.codes_on_parent_grid(sliced, c, r), scale, zero
        )
    return state
