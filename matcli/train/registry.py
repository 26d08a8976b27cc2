"""The ways `matcli quantize` makes a parent: one entry per method, nothing else knows them.

An entry says what the command line needs (help, whether it reads --data, what its progress
counts) and holds the callables that plan, dry-run and finish the method. Importing this module
imports neither torch nor transformers: the callables import their modules when called, so
`matcli --help` and option checks stay fast. A new method is one more entry in `METHODS`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from importlib import import_module
from typing import TYPE_CHECKING

from matcli.errors import MatcliError

if TYPE_CHECKING:
    from matcli.checkpoint.plan import Plan
    from matcli.options import QuantizeOptions

Progress = Callable[[int, int, dict[int, float]], None]  # (done, total, loss per width)


def _no_finish(options: QuantizeOptions) -> None:
    """Nothing is left behind to clean up."""


@dataclass(frozen=True)
class Method:
    """One way of making a parent: what the command line shows of it, and the callables that
    do its work."""

    name: str  # "rtn", "weighted-rtn", "qat", "omniquant"
    help: str  # one line for --help
    needs_data: bool  # trains or calibrates on --data text
    progress_unit: str | None  # what `Progress` counts; None: the writer shows progress
    # Train if the method trains, then the parent's Plan; None on torchrun ranks other than 0.
    plan: Callable[[QuantizeOptions, Progress], Plan | None]
    # The parent's layout and what training would do (the report); nothing is trained.
    dry_run: Callable[[QuantizeOptions], Plan]
    # After the output is written (qat removes its training state).
    finish: Callable[[QuantizeOptions], None] = _no_finish
    # What `--teacher original` distils: "logits" (KL of every width's logits to the dense
    # model's), "blocks" (the dense model's block outputs, the method's own target: the option
    # changes nothing); None: the method does not train and refuses a teacher.
    teacher_use: str | None = None
    # Whether `--learn-scales` can train its per-group scales (LSQ); False: refused.
    learns_scales: bool = False
    # Tokens one progress unit processes (for tokens/s in the progress lines); None: unknown.
    tokens_per_unit: Callable[[QuantizeOptions], int] | None = None


def _lazy(module: str, function: str) -> Callable:
    """`module.function`, its module imported when it is called."""

    def call(*args, **kwargs):
        return getattr(import_module(module), function)(*args, **kwargs)

    return call


def _streamed(name: str, help_text: str, planner: str) -> Method:
    """A method that streams the parent from the source without a model or data: its plan
    is built at once, and the dry run is that plan. `planner` is a function of
    `matcli.train.rtn` taking (name, options)."""
    plan = partial(_lazy("matcli.train.rtn", planner), name)
    return Method(
        name,
        help_text,
        needs_data=False,
        progress_unit=None,
        plan=lambda o, _: plan(o),
        dry_run=plan,
    )


def _trained(name: str, help_text: str, progress_unit: str, module: str, **fields) -> Method:
    """A method that trains a model in memory on --data and exports it; `module` is a
    `matcli.train.training.TrainedMethod` (train, export_inputs, planned_work)."""
    return Method(
        name,
        help_text,
        needs_data=True,
        progress_unit=progress_unit,
        plan=partial(_lazy("matcli.train.training", "plan_trained"), name, module),
        dry_run=partial(_lazy("matcli.train.training", "dry_run_trained"), name, module),
        **fields,
    )


METHODS: dict[str, Method] = {
    method.name: method
    for method in (
        _streamed("rtn", "round to nearest, streamed; no data, no training", "plan_rtn"),
        _streamed(
            "weighted-rtn",
            "streamed; each code minimises the lambda-weighted error of the --train-bits slices",
            "plan_weighted_rtn",
        ),
        _trained(
            "qat",
            "MatQuant quantization-aware fine-tuning on --data (every weight trains)",
            "step",
            "matcli.train.qat",
            finish=_lazy("matcli.train.qat", "finish"),
            teacher_use="logits",
            learns_scales=True,
            tokens_per_unit=lambda o: (
                o.batch_size * o.grad_accum * o.seq_len * int(os.environ.get("WORLD_SIZE", "1"))
            ),
        ),
        _trained(
            "omniquant",
            "MatQuant block-wise calibration on --data (clipping + LET learnt, weights frozen)",
            "block",
            "matcli.train.omniquant",
            teacher_use="blocks",
            tokens_per_unit=lambda o: o.samples * o.seq_len * o.epochs,
        ),
    )
}


def get_method(name: str) -> Method:
    method = METHODS.get(name)
    if method is None:
        raise MatcliError(f"unknown --method {name!r}; matcli knows {', '.join(METHODS)}")
    return method
