"""`matcli quantize`: make a c-bit Matryoshka parent from a dense model."""

from __future__ import annotations

from pathlib import Path

import typer

from matcli.cli import common

HELP = (
    "Make a c-bit Matryoshka parent (compressed-tensors pack-quantized) from a dense model. "
    "rtn / weighted-rtn: streamed, no data. qat: MatQuant quantization-aware fine-tuning. "
    "omniquant: MatQuant block-wise calibration (LWC + LET), weights frozen."
)


def quantize(
    ctx: typer.Context,
    model: Path = typer.Argument(..., help="Dense Hugging Face model folder."),
    output: Path = common.OUTPUT,
    method: str = typer.Option("rtn", "--method", help="rtn | weighted-rtn | qat | omniquant."),
    bits: int = typer.Option(8, "--bits", help="Parent bit-width c (the paper uses 8)."),
    scheme: str = typer.Option(
        "symmetric",
        "--scheme",
        help="symmetric (slices load exactly as compressed-tensors) or asymmetric (paper Eq. 1).",
    ),
    group_size: int | None = typer.Option(
        None, "--group-size", help="Input columns per scale; default: one scale per output channel."
    ),
    layers: str = typer.Option(
        "ffn",
        "--layers",
        help="Which Linears: ffn (paper default), attention, ffn,attention, all, or re:REGEX.",
    ),
    train_bits: str | None = typer.Option(
        None,
        "--train-bits",
        help="Widths R of the MatQuant loss, e.g. 8,4,2 (default: 8,4,2 below --bits, and --bits).",
    ),
    loss_weights: str | None = typer.Option(
        None,
        "--loss-weights",
        help="lambda per --train-bits width (default: the paper's 0.1,0.1,1 for 8,4,2; else all 1).",
    ),
    extra_precision: bool = typer.Option(
        False,
        "--extra-precision",
        help="Train/optimize the slices without the clamp (2^r + 1 levels).",
    ),
    distill: str | None = typer.Option(
        None,
        "--distill",
        help="Co-distillation TEACHER->STUDENT[;STUDENT], e.g. 8->2 or 8->4;2 (qat).",
    ),
    distill_only: bool = typer.Option(
        False, "--distill-only", help="Students learn from the teacher alone (no labels)."
    ),
    data: Path | None = typer.Option(
        None,
        "--data",
        help="Training/calibration text: .txt, .jsonl, .parquet, or a cached HF dataset name.",
    ),
    text_field: str = typer.Option(
        "text", "--text-field", help="Field/column holding the text in .jsonl/.parquet/datasets."
    ),
    max_tokens: int | None = typer.Option(
        None, "--max-tokens", help="Use at most this many tokens of --data."
    ),
    steps: int = typer.Option(100, "--steps", help="QAT optimizer steps."),
    seq_len: int = typer.Option(512, "--seq-len", help="Tokens per sequence."),
    batch_size: int = typer.Option(
        4, "--batch-size", help="Sequences per micro-batch (per process under torchrun)."
    ),
    grad_accum: int = typer.Option(1, "--grad-accum", help="Micro-batches per optimizer step."),
    lr: float | None = typer.Option(
        None,
        "--lr",
        help="Learning rate (qat default 1e-5 with warmup + cosine; omniquant LWC 1e-2).",
    ),
    warmup_steps: int | None = typer.Option(
        None, "--warmup-steps", help="Linear warmup steps (default min(150, steps / 5))."
    ),
    schedule: str | None = typer.Option(
        None, "--schedule", help="cosine (qat default) or constant."
    ),
    weight_decay: float = typer.Option(0.0, "--weight-decay"),
    trainable: str = typer.Option(
        "all", "--trainable", help="qat: all parameters (paper) or only the quantized weights."
    ),
    precision: str = typer.Option("fp32", "--precision", help="fp32 or bf16 (autocast)."),
    gradient_checkpointing: bool = typer.Option(
        False, "--gradient-checkpointing", help="Trade compute for activation memory."
    ),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda | cuda:N."),
    parallel: str = typer.Option(
        "fsdp",
        "--parallel",
        help="qat under torchrun: fsdp (FSDP2: weights, gradients and optimizer state sharded; for models that do not fit one device) or ddp (replicated; faster when the model fits).",
    ),
    seed: int = typer.Option(0, "--seed"),
    save_every: int = typer.Option(
        0,
        "--save-every",
        help="qat: save the training state every N steps (it is also saved on Ctrl-C).",
    ),
    resume: bool = typer.Option(
        False, "--resume", help="qat: continue from the saved training state."
    ),
    epochs: int = typer.Option(
        2, "--epochs", help="omniquant: passes over the calibration samples per block."
    ),
    samples: int = typer.Option(32, "--samples", help="omniquant: calibration sequences."),
    let: bool = typer.Option(
        True,
        "--let/--no-let",
        help="omniquant: learnable equivalent transformation (scale) on the FFN.",
    ),
    let_lr: float = typer.Option(5e-3, "--let-lr", help="omniquant: LET learning rate."),
    max_shard_size: str = common.MAX_SHARD_SIZE,
    chunk_size: str = common.CHUNK_SIZE,
    force: bool = common.FORCE,
    dry_run: bool = common.DRY_RUN,
    json_output: bool = common.JSON_OUTPUT,
    quiet: bool = common.QUIET,
    recipe: Path | None = common.RECIPE,
) -> None:
    from matcli.options import QuantizeOptions, build_options, merge_recipe

    flags = common.option_values(
        ctx,
        train_bits=common.parse_int_list(train_bits, "--train-bits")
        if train_bits is not None
        else None,
        loss_weights=_floats(loss_weights) if loss_weights is not None else None,
    )
    given = common.given_flags(ctx)
    values = merge_recipe(recipe, flags, given)
    if "train_bits" in given and "loss_weights" not in given:
        values["loss_weights"] = (
            None  # a recipe's lambda belong to its own widths: use the defaults of the new ones
        )
    options = build_options(QuantizeOptions, **values)
    with common.training_progress(options, quiet or json_output) as progress:
        from matcli.quant.methods import finish, plan_quantize

        plan = plan_quantize(options, progress)
    if plan is None:  # a torchrun rank other than 0: rank 0 writes
        return
    common.run_plan(plan, options.output, options.force, options.dry_run, json_output, quiet)
    if not options.dry_run:
        finish(options)
        common.report_written(plan, options.output, json_output, quiet)


def _floats(text: str) -> list[float]:
    from matcli.errors import MatcliError

    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError as e:
        raise MatcliError(
            f"--loss-weights {text!r} must be numbers separated by commas, e.g. 0.1,0.1,1"
        ) from e
