"""`matcli quantize`: one entry for every method; each ends in a Plan that writes the parent."""

from __future__ import annotations

from collections.abc import Callable

from matcli.checkpoint.atomic import check_destination
from matcli.checkpoint.plan import Plan
from matcli.data import data_digest
from matcli.quant.parent import CONFIG_KEY, info_from_options
from matcli.options import QuantizeOptions

Progress = Callable[[int, int, dict[int, float]], None]  # (done, total, loss per width)


def plan_quantize(
    options: QuantizeOptions, progress: Progress = lambda d, t, l: None
) -> Plan | None:
    """The parent's plan; training methods train first (None on torchrun ranks other than 0)."""
    from matcli.quant.rtn import plan_rtn

    if options.method in ("rtn", "weighted-rtn"):
        return plan_rtn(options)
    if options.dry_run:
        return _training_dry_run(options)
    check_destination(options.output, options.force, [options.model])  # before hours of training
    if options.method == "qat":
        from matcli.quant import qat

        result = qat.train_qat(options, lambda step, losses: progress(step, options.steps, losses))
        export = qat.export_inputs
    else:
        from matcli.quant import omniquant

        result = omniquant.calibrate(options, progress)
        export = omniquant.export_inputs
    if result is None:
        return None
    qm, _, report = result
    quantized, dense = export(qm)
    report.update({"data": str(options.data), "data_sha256": data_digest(options.data)})
    from matcli.quant.export import plan_parent

    return plan_parent(
        qm.targets, quantized, dense, info_from_options(options, options.method), options, report
    )


def _training_dry_run(options: QuantizeOptions) -> Plan:
    """The parent's layout (shapes do not depend on training) and what training would do."""
    from matcli.quant.rtn import plan_rtn
    from matcli.quant.training import training_windows

    windows = training_windows(options, options.model)
    plan = plan_rtn(options)
    plan.outputs[0].config[CONFIG_KEY] = info_from_options(options, options.method).model_dump()
    if options.method == "qat":
        tokens = options.steps * options.batch_size * options.grad_accum * options.seq_len
        what = {
            "steps": options.steps,
            "tokens_per_step": options.batch_size * options.grad_accum * options.seq_len,
        }
    else:
        tokens = min(options.samples, len(windows)) * options.seq_len * options.epochs
        what = {"samples": min(options.samples, len(windows)), "epochs": options.epochs}
    plan.report = {
        "method": options.method,
        "windows_available": len(windows),
        "tokens_to_train": tokens,
        **what,
    }
    return plan


def finish(options: QuantizeOptions) -> None:
    if options.method == "qat":
        from matcli.quant.qat import finish as finish_qat

        finish_qat(options)
