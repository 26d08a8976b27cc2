"""Values a command computes with: NaN, inf (and, for scales, zero or negative) are refused
with the tensor's name, the count and the first row, inside the pass that reads the values.

One check for every command that transforms weights: quantize (rtn, weighted-rtn) before
rounding, slice on a parent's scales, reorder on the FFN weights it ranks neurons with.
"""

from __future__ import annotations

import numpy as np

from matcli.checkpoint.safetensors_file import NUMPY_FLOATS
from matcli.errors import MatcliError

NON_FINITE = "NaN or infinite value(s)"
BAD_SCALES = "NaN, infinite, zero or negative scale(s)"


def refuse_bad_values(
    bad, name: str, what: str = NON_FINITE, first_row: int = 0, action: str = "quantize"
) -> None:
    """Refuse `name` when the boolean mask `bad` (numpy or a CPU torch tensor, rows first,
    the rows from `first_row` on) marks any value."""
    bad = np.asarray(bad)
    if not bad.any():
        return
    row = first_row + int(np.argmax(bad.reshape(len(bad), -1).any(axis=1))) if bad.ndim else 0
    raise MatcliError(
        f"{name} holds {int(bad.sum())} {what} (the first in row {row}); matcli cannot "
        f"{action} them: repair or re-export the checkpoint"
    )


def check_finite(values, name: str, first_row: int = 0, action: str = "quantize") -> None:
    """Refuse NaN and inf in `values` (a numpy array or a torch tensor, bfloat16 included)."""
    refuse_bad_values(~_finite(values), name, NON_FINITE, first_row, action)


def check_scales(values, name: str) -> None:
    """Refuse scales that are not finite and positive (a numpy array or a torch tensor): a
    slice would turn them into NaN or sign-flipped weights."""
    refuse_bad_values(~(_finite(values) & (values > 0)), name, BAD_SCALES, action="slice with")


def float_values(raw: np.ndarray, dtype: str, name: str) -> np.ndarray:
    """Stored float bits (unsigned integers of the element size, as ModelFolder.read_elements
    gives them) as numpy floats; bfloat16, which numpy lacks, widened to float32."""
    if dtype == "BF16":
        return (raw.astype(np.uint32) << 16).view(np.float32)
    if dtype not in NUMPY_FLOATS:
        raise MatcliError(f"{name} is {dtype}, not a float; repair or re-export the checkpoint")
    return raw.view(NUMPY_FLOATS[dtype])


def _finite(values):
    return values.isfinite() if hasattr(values, "isfinite") else np.isfinite(values)
