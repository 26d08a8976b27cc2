"""`matcli nest`: fine-tune a dense decoder into a MatFormer (nested FFN granularities)."""

from __future__ import annotations

from matcli.cli.generate import Command
from matcli.cli.render import CHECKPOINT
from matcli.options import NestOptions
from matcli.runner import Invocation


def run(options: NestOptions, invocation: Invocation) -> None:
    from matcli.runner import run_writing

    def build(reporter):
        from matcli.matformer.nest import dry_run_nest, plan_nest

        if options.dry_run:
            return dry_run_nest(options)
        with reporter.training("nest", "step") as progress:
            return plan_nest(options, progress)

    if run_writing(options, invocation, build, CHECKPOINT):
        from matcli.train.qat import finish

        finish(options)  # the training state is no longer needed


COMMAND = Command(
    "nest",
    "Fine-tune a dense decoder into a MatFormer: reorder each FFN's neurons by importance, then "
    "distil the original model into every --widths granularity at once (prefix views of the "
    "same weights), so that extract cuts usable submodels. Writes a dense checkpoint that "
    "records its granularities.",
    NestOptions,
    run,
)
