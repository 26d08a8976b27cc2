"""`matcli slice`: cut r-bit models out of a c-bit parent."""

from __future__ import annotations

from matcli.cli.generate import Command
from matcli.cli.render import CHECKPOINT
from matcli.options import SliceOptions


def run(options: SliceOptions, invocation) -> None:
    from matcli.quant.slicing import plan_slice
    from matcli.runner import run_writing

    run_writing(options, invocation, lambda reporter: plan_slice(options), CHECKPOINT)


COMMAND = Command(
    "slice",
    "Slice r-bit checkpoints out of a Matryoshka parent, S(q, c, r) of the MatQuant paper, "
    "streamed without a model. One output folder per width (OUT/int4, OUT/int2 when several).",
    SliceOptions,
    run,
)
