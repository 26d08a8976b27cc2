"""`matcli slice`: cut r-bit models out of a c-bit parent."""

from __future__ import annotations

from matcli.cli.render import writing_command
from matcli.options import SliceOptions


def _slicing(options: SliceOptions):
    from matcli.quant.slicing import plan_slice

    return plan_slice(options)


COMMAND = writing_command(
    "slice",
    "Slice r-bit checkpoints out of a Matryoshka parent, S(q, c, r) of the MatQuant paper, "
    "streamed without a model. One output folder per width (OUT/int4, OUT/int2 when several).",
    SliceOptions,
    _slicing,
)
