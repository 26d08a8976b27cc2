"""`matcli quantize`: make a c-bit Matryoshka parent from a dense model."""

from __future__ import annotations

from matcli.cli.generate import Command
from matcli.cli.render import CHECKPOINT
from matcli.options import QuantizeOptions
from matcli.runner import Invocation


def run(options: QuantizeOptions, invocation: Invocation) -> None:
    from matcli.runner import run_writing
    from matcli.train.registry import get_method

    method = get_method(options.method)

    def build(reporter):
        if options.dry_run:
            return method.dry_run(options)
        tokens = method.tokens_per_unit(options) if method.tokens_per_unit else None
        with reporter.training(options.method, method.progress_unit, tokens) as progress:
            return method.plan(options, progress)

    if run_writing(options, invocation, build, CHECKPOINT):
        method.finish(options)


COMMAND = Command(
    "quantize",
    "Make a c-bit Matryoshka parent (compressed-tensors pack-quantized) from a dense model. "
    "rtn / weighted-rtn: streamed, no data. qat: MatQuant quantization-aware fine-tuning. "
    "omniquant: MatQuant block-wise calibration (LWC + LET), weights frozen.",
    QuantizeOptions,
    run,
)
