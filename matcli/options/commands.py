"""The options of every command: one pydantic model each, holding every default, help text
and constraint. The command line is generated from these fields (`matcli/cli/generate.py`),
and a `--recipe` YAML file loads into the same models, so an option is written once."""

from __future__ import annotations

import re
from pathlib import Path
from typing import ClassVar, Literal

from pydantic import field_validator, model_validator

from matcli.devices import DEVICE_HELP, check_device
from matcli.errors import MatcliError
from matcli.options.base import (
    FloatList,
    IntList,
    Options,
    OutputOptions,
    ShardOptions,
    StreamOptions,
    WriteOptions,
    option,
)
from matcli.quant.widths import (
    DEFAULT_WIDTHS,
    MAX_WIDTH,
    check_widths,
    default_widths,
    widest_first,
)
from matcli.train.registry import METHODS, get_method

MIX_N_MATCH_STRATEGIES = ("pyramid", "reverse-pyramid", "increasing", "decreasing")
PAPER_LOSS_WEIGHTS = {DEFAULT_WIDTHS: [0.1, 0.1, 1.0]}  # MatQuant App. B, every Gemma run


def _widths(
    widths: list[int] | None, parent_bits: int = MAX_WIDTH, what: str = "width"
) -> list[int] | None:
    """Pydantic's spelling of `check_widths`: its message becomes the option's error."""
    if widths is None:
        return None
    try:
        return check_widths(widths, parent_bits, what)
    except MatcliError as e:
        raise ValueError(str(e)) from None


def _known_method(name: str) -> str:
    if name not in METHODS:
        raise ValueError(f"{name!r} is not a method: use {', '.join(METHODS)}")
    return name


class DistillationOptions(Options):
    """How a student's loss mixes the KL to its teacher's logits with the labels (quantize
    --teacher original, nest)."""

    teacher_weight: float = option(
        1.0,
        "The KL to the teacher's logits as a share of each loss, the rest cross-entropy on the "
        "labels (1: KL only, as LLM-QAT; 0.5: Hinton's even mix).",
        ge=0,
        le=1,
    )
    teacher_temperature: float = option(
        1.0, "Softmax temperature T of teacher and student (the KL is scaled by T^2).", gt=0
    )


class TrainingLoopOptions(Options):
    """The training loop that `quantize --method qat|omniquant` and `nest` share: data
    windows, batches, optimizer schedule, precision, devices, seeds and resumable state."""

    text_field: str = option("text", "Field/column holding the text in .jsonl/.parquet/datasets.")
    max_tokens: int | None = option(None, "Use at most this many tokens of --data.", gt=0)
    seq_len: int = option(512, "Tokens per sequence.", gt=1)
    batch_size: int = option(4, "Sequences per micro-batch (per process under torchrun).", gt=0)
    grad_accum: int = option(1, "Micro-batches per optimizer step.", gt=0)
    warmup_steps: int | None = option(
        None, "Linear warmup steps (default min(150, steps / 5)).", ge=0
    )
    schedule: Literal["cosine", "constant"] | None = option(
        None, "cosine (the default) or constant after the warmup."
    )
    weight_decay: float = option(0.0, "AdamW weight decay.", ge=0)
    max_grad_norm: float = option(1.0, "Gradients are clipped to this global norm.", gt=0)
    precision: Literal["fp32", "bf16"] = option("fp32", "fp32 or bf16 (autocast).")
    gradient_checkpointing: bool = option(False, "Trade compute for activation memory.")
    device: str = option("auto", f"{DEVICE_HELP}.")
    parallel: Literal["fsdp", "ddp"] = option(
        "fsdp",
        "Under torchrun (qat, nest): fsdp (FSDP2: weights, gradients and optimizer state "
        "sharded; for models that do not fit one device) or ddp (replicated; faster when the "
        "model fits).",
    )
    seed: int = option(0, "Seed of the data order and initialisation.")
    save_every: int = option(
        0, "qat, nest: save the training state every N steps (it is also saved on Ctrl-C).", ge=0
    )
    resume: bool = option(False, "qat, nest: continue from the saved training state.")

    _device = field_validator("device")(lambda cls, v: check_device(v))


class QuantizeOptions(
    WriteOptions, ShardOptions, StreamOptions, TrainingLoopOptions, DistillationOptions
):
    model: Path = option(..., "Dense Hugging Face model folder.", argument=True)
    method: str = option(
        "rtn",
        "; ".join(f"{m.name}: {m.help}" for m in METHODS.values()) + ".",
        metavar="|".join(METHODS),
    )
    bits: int = option(8, "Parent bit-width c (the paper uses 8).", ge=2, le=MAX_WIDTH)
    scheme: Literal["symmetric", "asymmetric"] = option(
        "symmetric",
        "symmetric (slices load exactly as compressed-tensors) or asymmetric (paper Eq. 1).",
    )
    group_size: int | None = option(
        None, "Input columns per scale; default: one scale per output channel.", gt=0
    )
    layers: str = option(
        "ffn", "Which Linears: ffn (paper default), attention, ffn,attention, all, or re:REGEX."
    )
    # --- the MatQuant objective ---------------------------------------------------------
    train_bits: IntList | None = option(
        None, "Widths R of the MatQuant loss, e.g. 8,4,2 (default: 8,4,2 below --bits, and --bits)."
    )
    loss_weights: FloatList | None = option(
        None,
        "lambda per --train-bits width (default: the paper's 0.1,0.1,1 for 8,4,2; else all 1).",
    )
    extra_precision: bool = option(
        False, "Train/optimize the slices without the clamp (2^r + 1 levels)."
    )
    distill: str | None = option(
        None, "Co-distillation TEACHER->STUDENT[;STUDENT], e.g. 8->2 or 8->4;2 (qat)."
    )
    distill_only: bool = option(False, "Students learn from the teacher alone (no labels).")
    teacher: Literal["original"] | None = option(
        None,
        "Distil every width from the dense model being quantized (original): KL divergence to "
        "its logits, computed once per batch.",
    )
    # --- data and loop (qat, omniquant) -------------------------------------------------
    data: Path | None = option(
        None, "Training/calibration text: .txt, .jsonl, .parquet, or a cached HF dataset name."
    )
    steps: int = option(100, "QAT optimizer steps.", gt=0)
    lr: float | None = option(
        None, "Learning rate (qat default 1e-5 with warmup + cosine; omniquant LWC 1e-2).", gt=0
    )
    trainable: Literal["all", "quantized"] = option(
        "all", "qat: all parameters (paper) or only the quantized weights."
    )
    learn_scales: Literal["off", "scales", "scales+weights"] = option(
        "off",
        "Learn the parent's per-group scales (LSQ, STE; symmetric scheme): off, scales (every "
        "weight frozen) or scales+weights (with the --trainable weights).",
    )
    scale_lr: float = option(
        1e-3, "--learn-scales: learning rate of log(scale) (a relative change per step).", gt=0
    )
    # --- OmniQuant ----------------------------------------------------------------------
    epochs: int = option(2, "omniquant: passes over the calibration samples per block.", gt=0)
    samples: int = option(32, "omniquant: calibration sequences.", gt=0)
    let: bool = option(True, "omniquant: learnable equivalent transformation (scale) on the FFN.")
    let_lr: float = option(5e-3, "omniquant: LET learning rate.", gt=0)

    # A flag that overrides a recipe's value also resets the recipe's values that belong to
    # it: a recipe's lambda are weights of its own widths.
    RESETS: ClassVar[dict[str, tuple[str, ...]]] = {"train_bits": ("loss_weights",)}

    _method = field_validator("method")(lambda cls, v: _known_method(v))

    @model_validator(mode="after")
    def _objective(self) -> QuantizeOptions:
        if self.train_bits is None:
            self.train_bits = default_widths(self.bits)
        _widths(self.train_bits, self.bits, "--train-bits width")
        if self.loss_weights is None:
            self.loss_weights = paper_loss_weights(self.train_bits)
        if len(self.loss_weights) != len(self.train_bits):
            raise ValueError(
                f"--loss-weights gives {len(self.loss_weights)} weights for "
                f"{len(self.train_bits)} --train-bits widths"
            )
        if get_method(self.method).needs_data and self.data is None:
            raise ValueError(
                f"--method {self.method} trains on text: add --data FILE (.txt, .jsonl or .parquet)"
            )
        _check_teacher(self)
        _check_learned_scales(self)
        if self.distill is not None:
            teacher, students = parse_distill(self.distill)
            if teacher > self.bits or any(s not in self.train_bits for s in students):
                raise ValueError(
                    f"--distill {self.distill}: the teacher must be a width up to {self.bits} "
                    "and every student one of --train-bits"
                )
        return self


def _check_teacher(options: QuantizeOptions) -> None:
    """--teacher needs a method that trains; its weight and temperature need a logit loss."""
    use = get_method(options.method).teacher_use
    if options.teacher is not None and use is None:
        raise ValueError(
            f"--teacher: --method {options.method} does not train, so it has nothing to "
            "distil; use --method " + " or ".join(m.name for m in METHODS.values() if m.teacher_use)
        )
    fields = type(options).model_fields
    tuned = {
        name
        for name in ("teacher_weight", "teacher_temperature")
        if getattr(options, name) != fields[name].default
    }
    if tuned and (options.teacher is None or use != "logits"):
        flag = "--" + sorted(tuned)[0].replace("_", "-")
        raise ValueError(
            f"{flag} weighs a KL loss on logits: add --teacher original with --method "
            + " or ".join(m.name for m in METHODS.values() if m.teacher_use == "logits")
        )


def _check_learned_scales(options: QuantizeOptions) -> None:
    """--learn-scales needs a method that trains scales, and a layout whose scale is all of
    the grid (symmetric: the zero point is fixed at 2^(c-1))."""
    if options.learn_scales == "off":
        if options.scale_lr != type(options).model_fields["scale_lr"].default:
            raise ValueError(
                "--scale-lr is the learning rate of learned scales: add --learn-scales"
            )
        return
    if not get_method(options.method).learns_scales:
        raise ValueError(
            f"--learn-scales: --method {options.method} cannot learn scales; use --method "
            + " or ".join(m.name for m in METHODS.values() if m.learns_scales)
        )
    if options.scheme != "symmetric":
        raise ValueError(
            "--learn-scales learns the scale of the symmetric grid (zero point 2^(c-1)); an "
            "asymmetric parent's zero point would need learning too: use --scheme symmetric"
        )


def paper_loss_weights(widths: list[int]) -> list[float]:
    """The paper's lambda for its widths (in the order given), else all 1."""
    order = widest_first(widths)
    weights = PAPER_LOSS_WEIGHTS.get(tuple(order), [1.0] * len(widths))
    by_width = dict(zip(order, weights))
    return [by_width[w] for w in widths]


def parse_distill(spec: str) -> tuple[int, list[int]]:
    """`8->2` -> (8, [2]); `8->4;2` -> (8, [4, 2])."""
    m = re.fullmatch(r"\s*(\d)\s*->\s*(\d(?:\s*;\s*\d)*)\s*", spec)
    if not m:
        raise ValueError(
            f"--distill {spec!r} is not TEACHER->STUDENT[;STUDENT], e.g. 8->2 or 8->4;2"
        )
    teacher = int(m.group(1))
    students = [int(x) for x in m.group(2).split(";")]
    if any(s >= teacher for s in students):
        raise ValueError(f"--distill {spec!r}: a student must be narrower than its teacher")
    return teacher, students


class SliceOptions(WriteOptions, ShardOptions, StreamOptions):
    parent: Path = option(..., "Parent folder made by matcli quantize.", argument=True)
    bits: IntList | None = option(None, "Width(s) to slice, e.g. 2 or 4,2.")
    bits_config: str | None = option(
        None,
        "Per-layer widths (Mix'n'Match): a YAML/JSON file, or "
        + ", ".join(MIX_N_MATCH_STRATEGIES)
        + ".",
    )
    target_bits: float | None = option(
        None, "Budget for a named --bits-config: average bits per quantized weight.", gt=0
    )
    extra_precision: bool = option(False, "No clamp: 2^r + 1 levels, stored with r + 1 bits.")
    format: Literal["compressed-tensors", "dense", "gguf"] = option(
        "compressed-tensors",
        "compressed-tensors (pack-quantized at r bits), dense (dequantized) or gguf "
        "(one llama.cpp file, -o NAME.gguf: Q8_0/Q4_0 from a symmetric group-32 parent).",
    )
    dtype: Literal["bfloat16", "float16", "float32"] | None = option(
        None, "Dense weights dtype: bfloat16, float16 or float32 (default: the model's)."
    )
    requantize: bool = option(
        False,
        "--format gguf: re-quantize Linears with no exact ggml type to Q8_0/Q4_0 "
        "(reports the added weight error) instead of refusing.",
    )

    _bits = field_validator("bits")(lambda cls, v: _widths(v))

    @model_validator(mode="after")
    def _one_way_to_choose_widths(self) -> SliceOptions:
        if (self.bits is None) == (self.bits_config is None):
            raise ValueError(
                "give either --bits (e.g. 4,2) or --bits-config (a file or one of "
                + ", ".join(MIX_N_MATCH_STRATEGIES)
                + ")"
            )
        if self.target_bits is not None and self.bits_config not in MIX_N_MATCH_STRATEGIES:
            raise ValueError(
                "--target-bits needs --bits-config " + "|".join(MIX_N_MATCH_STRATEGIES)
            )
        if self.dtype is not None and self.format != "dense":
            raise ValueError("--dtype applies to --format dense only")
        for problem, message in self._gguf_conflicts():
            if problem:
                raise ValueError(message)
        return self

    def _gguf_conflicts(self) -> list[tuple[bool, str]]:
        gguf = self.format == "gguf"
        return [
            (self.requantize and not gguf, "--requantize applies to --format gguf only"),
            (
                gguf and self.output.suffix != ".gguf",
                f"--format gguf writes one file: give -o a path ending in .gguf, "
                f"not {self.output.name!r}",
            ),
            (
                gguf and self.bits is not None and len(self.bits) > 1,
                "--format gguf writes one file: give one width (e.g. --bits 4), "
                "and run slice once per width",
            ),
        ]

    def writes_file(self) -> bool:
        """A GGUF slice is one file; the other formats are folders."""
        return self.format == "gguf"


class CalibrationOptions(Options):
    """Text a model is run on to measure neuron importance or a submodel's loss."""

    seq_len: int = option(256, "Tokens per calibration window.", gt=1)
    max_tokens: int = option(16384, "Calibration tokens to use at most.", gt=1)


class ExtractOptions(WriteOptions, ShardOptions, StreamOptions, CalibrationOptions):
    model: Path = option(..., "Dense Hugging Face model folder.", argument=True)
    ffn_config: str | None = option(
        None,
        "Widths of the kept layers: 8192 | 0.5 | s,m,l,xl | a list 8192,16384,... | "
        'FILE.yaml/json | configs.csv:"ROW NAME".',
    )
    skip_layers: str | None = option(None, "Original layer indices to drop, e.g. 20-24.")
    budget: str | None = option(
        None, "Largest submodel: parameters (2.5e9, 900M, 2B) or bytes (4GB, 3GiB)."
    )
    budget_of: Literal["total", "effective"] | None = option(
        None,
        "What --budget counts: total (every tensor, the default) or effective (the parameter "
        "report's effective count; Gemma 3n: Google's E2B/E4B figure).",
    )
    reorder: bool = option(
        False, "Keep each layer's most important neurons (measured on --data), not the first ones."
    )
    data: Path | None = option(
        None, "Calibration text for --reorder and --rank-by-loss (.txt or .jsonl)."
    )
    rank_by_loss: bool = option(
        False, "With --budget: pick the candidate with the lowest loss on --data."
    )

    @model_validator(mode="after")
    def _consistent(self) -> ExtractOptions:
        if (self.ffn_config is None) == (self.budget is None):
            raise ValueError("give either --ffn-config (widths) or --budget (a size to fit)")
        if self.budget_of is not None and self.budget is None:
            raise ValueError("--budget-of says what --budget counts: add --budget N")
        if (self.reorder or self.rank_by_loss) and self.data is None:
            raise ValueError(
                "--reorder and --rank-by-loss measure on calibration text: add --data FILE"
            )
        return self


class ReorderOptions(WriteOptions, ShardOptions, StreamOptions, CalibrationOptions):
    model: Path = option(..., "Dense Hugging Face model folder.", argument=True)
    data: Path = option(..., "Calibration text (.txt or .jsonl).")


class NestOptions(
    WriteOptions, ShardOptions, StreamOptions, TrainingLoopOptions, DistillationOptions
):
    model: Path = option(..., "Dense Hugging Face causal language model folder.", argument=True)
    data: Path = option(..., "Training text: .txt, .jsonl, .parquet, or a cached HF dataset name.")
    widths: FloatList = option(
        [0.25, 0.5, 0.75, 1.0],
        "Granularities trained together: fractions of each layer's FFN width, increasing, "
        "ending at 1 (each must give whole neurons).",
    )
    loss_weights: FloatList | None = option(
        None, "Weight of each granularity's loss, one per --widths entry (default: all 1)."
    )
    calibration_tokens: int = option(
        16384, "Tokens of --data the neuron importance (the reorder) is measured on.", gt=1
    )
    steps: int = option(100, "Optimizer steps (0: the reordered model, untrained).", ge=0)
    lr: float | None = option(
        None, "Peak learning rate (default 1e-4, with warmup and cosine decay).", gt=0
    )

    RESETS: ClassVar[dict[str, tuple[str, ...]]] = {"widths": ("loss_weights",)}

    @field_validator("widths")
    @classmethod
    def _granularities(cls, widths: list[float]) -> list[float]:
        from matcli.matformer.granularities import check_fractions

        return check_fractions(widths)

    @model_validator(mode="after")
    def _one_weight_per_width(self) -> NestOptions:
        if self.loss_weights is not None and len(self.loss_weights) != len(self.widths):
            raise ValueError(
                f"--loss-weights gives {len(self.loss_weights)} weights for "
                f"{len(self.widths)} --widths granularities"
            )
        return self


class TruncateOptions(WriteOptions, StreamOptions):
    input: Path = option(
        ...,
        "Embeddings file (.npy, .safetensors, .parquet) or sentence-transformers model folder.",
        argument=True,
    )
    output: Path = option(..., "A file for one dimension, a folder for several.", short="-o")
    dims: IntList = option(..., "Dimension(s) to keep, e.g. 256 or 768,256,64.")
    key: str | None = option(
        None, "The tensor (.safetensors) or column (.parquet) holding the embeddings."
    )
    renormalize: bool = option(True, "L2-normalize each row after truncation.")
    pre_norm: Literal["layer_norm"] | None = option(
        None, "layer_norm: normalize the full vector first (nomic-embed-text-v1.5)."
    )
    pca: bool = option(
        False,
        "Rotate by PCA first (fitted on the input), so non-MRL embeddings truncate gracefully.",
    )
    pca_center: bool = option(
        False,
        "Centre before the PCA rotation (default: rotate only, which keeps full-dimension "
        "similarities unchanged).",
    )
    rotation: Path | None = option(
        None, "Apply a rotation saved by an earlier --pca run (e.g. to queries)."
    )
    quantize: Literal["int8", "binary"] | None = option(
        None, "int8 (per-dimension ranges, .safetensors output) or binary (packed bits)."
    )
    ranges: Path | None = option(
        None,
        "With --quantize int8: use the int8_ranges of an earlier run's .safetensors "
        "(e.g. the corpus's, for queries).",
    )
    dtype: Literal["float16", "bfloat16", "float32"] | None = option(
        None, "Output float dtype: float16, bfloat16 or float32 (default: the input's)."
    )
    format: Literal["safetensors", "npy", "parquet"] | None = option(
        None, "safetensors, npy or parquet (default: from the -o suffix, or the input's)."
    )
    skip_bad_rows: bool = option(False, "Drop rows with NaN or inf instead of refusing the input.")
    data: Path | None = option(
        None, "Model folder with --pca: texts to fit the rotation on (.txt lines or .jsonl)."
    )

    def writes_file(self) -> bool:
        """One dimension of an embeddings file is one file; a model is always a folder."""
        return len(self.dims) == 1 and not self.input.is_dir()

    @field_validator("dims")
    @classmethod
    def _dims(cls, dims: list[int]) -> list[int]:
        if not dims:
            raise ValueError("give at least one dimension, e.g. --dims 256 or --dims 768,256,64")
        for d in dims:
            if d < 1:
                raise ValueError(f"dimension {d} must be at least 1")
        if len(set(dims)) != len(dims):
            raise ValueError("a dimension is repeated")
        return dims

    @model_validator(mode="after")
    def _consistent(self) -> TruncateOptions:
        for problem, message in self._conflicts():
            if problem:
                raise ValueError(message)
        return self

    def _conflicts(self) -> list[tuple[bool, str]]:
        """Options that contradict each other, or would otherwise be silently ignored."""
        return [
            (
                self.pca and self.rotation is not None,
                "--pca fits a new rotation and --rotation applies a stored one; give one of them",
            ),
            (
                bool(self.quantize and self.dtype),
                "--dtype does not apply to quantized output (--quantize)",
            ),
            (
                self.pca_center and not self.pca,
                "--pca-center only changes how --pca fits its rotation; "
                "add --pca or drop --pca-center",
            ),
            (
                self.data is not None and not self.pca,
                "--data gives the texts a model's --pca rotation is fitted on; "
                "add --pca or drop --data",
            ),
            (
                self.ranges is not None and self.quantize != "int8",
                "--ranges gives the ranges of --quantize int8; "
                "add --quantize int8 or drop --ranges",
            ),
            (
                self.ranges is not None and len(self.dims) != 1,
                "--ranges holds the int8 ranges of one dimension; give a single --dims",
            ),
        ]


class InspectOptions(OutputOptions):
    path: Path = option(..., "Model folder.", argument=True)


class EvalOptions(OutputOptions):
    model: Path = option(..., "Model folder: dense, parent or slice.", argument=True)
    data: Path = option(..., "Evaluation text: .txt, or .jsonl with a text field.")
    bits: IntList | None = option(None, "Parent only: widths to slice in memory, e.g. 8,6,4,3,2.")
    extra_precision: bool = option(False, "Slice without the clamp.")
    ffn_config: str | None = option(
        None, "Evaluate a MatFormer submodel cut in memory (same forms as extract)."
    )
    skip_layers: str | None = option(None, "With --ffn-config: original layers to drop.")
    seq_len: int = option(512, "Tokens per window.", gt=1)
    max_tokens: int = option(32768, "Evaluate at most this many tokens.", gt=1)
    batch_size: int = option(4, "Windows per forward pass.", gt=0)
    device: str = option("auto", f"{DEVICE_HELP} (auto: the first GPU if there is one).")
    plot: Path | None = option(None, "Write a PNG of perplexity against bits (needs matplotlib).")
    # --- a speculative draft (transformers' assisted generation) -----------------------------
    draft: Path | None = option(
        None,
        "Measure this smaller model as the speculative draft of MODEL: acceptance, tokens/s, "
        "identical greedy outputs, consistency (the same folder with --draft-bits or "
        "--draft-ffn-config drafts with a slice or a submodel of it).",
    )
    draft_bits: int | None = option(None, "The draft is its parent sliced in memory to this width.")
    draft_ffn_config: str | None = option(
        None, "The draft is a MatFormer submodel of --draft cut in memory (same forms as extract)."
    )
    draft_skip_layers: str | None = option(
        None, "With --draft-ffn-config: original layers to drop."
    )
    prompts: int = option(8, "With --draft: held-out prompts cut from --data.", gt=0)
    prompt_tokens: int = option(64, "With --draft: tokens per prompt.", gt=0)
    new_tokens: int = option(32, "With --draft: greedy tokens generated per prompt.", gt=0)

    _bits = field_validator("bits")(lambda cls, v: _widths(v))
    _draft_bits = field_validator("draft_bits")(
        lambda cls, v: None if v is None else _widths([v], what="--draft-bits")[0]
    )
    _device = field_validator("device")(lambda cls, v: check_device(v))

    @model_validator(mode="after")
    def _one_kind(self) -> EvalOptions:
        for prefix, bits in (("", self.bits), ("draft-", self.draft_bits)):
            if getattr(self, prefix.replace("-", "_") + "ffn_config") is not None and bits:
                raise ValueError(
                    f"--{prefix}ffn-config and --{prefix}bits cannot be combined: extract first, "
                    "then quantize and slice"
                )
        if self.draft_skip_layers is not None and self.draft_ffn_config is None:
            raise ValueError("--draft-skip-layers needs --draft-ffn-config")
        return self._draft_options()

    def _draft_options(self) -> EvalOptions:
        """--draft measures one target against one draft; options of the other mode are refused
        rather than ignored."""
        fields = type(self).model_fields
        draft_only = ("draft_bits", "draft_ffn_config", "prompts", "prompt_tokens", "new_tokens")
        given = [f for f in draft_only if getattr(self, f) != fields[f].default]
        if self.draft is None and given:
            flags = ", ".join("--" + f.replace("_", "-") for f in given)
            raise ValueError(f"{flags} apply to --draft DRAFT; add it or drop them")
        if self.draft is not None and self.bits and len(self.bits) > 1:
            raise ValueError("--draft measures one target: give one --bits width")
        if self.draft is not None and self.plot is not None:
            raise ValueError("--plot draws perplexity against --bits; drop it with --draft")
        return self


class EvalRetrievalOptions(OutputOptions):
    corpus: Path = option(..., "Corpus embeddings (.npy, .safetensors, .parquet).")
    queries: Path = option(..., "Query embeddings, same dimension.")
    qrels: Path | None = option(
        None,
        "Relevance labels: TSV/CSV query_id,doc_id[,relevance] or JSON {query: {doc: rel}}.",
    )
    dims: IntList | None = option(
        None, "Dimensions to evaluate (default: full, then halving down to 16)."
    )
    k: int = option(10, "Cut-off for recall@k (1 up to the corpus size).")
    funnel: list[str] = option(
        [],
        "Shortlist-then-rerank stages DIM:KEEP,..., e.g. 32:200,384:10 (repeatable).",
        repeat=True,
    )
    key: str | None = option(None, "Tensor (.safetensors) or column (.parquet) of the embeddings.")
    plot: Path | None = option(
        None, "Write a plot of quality against dimension, .png/.svg/.pdf (needs matplotlib)."
    )
    # --- the funnel's approximate first stage (faiss) ---------------------------------------
    index: Literal["hnsw", "ivf"] | None = option(
        None,
        "Shortlist each --funnel's first stage with an approximate index on its prefix: hnsw or "
        "ivf (faiss; pip install 'matcli[ann]'); later stages rerank exactly.",
    )
    hnsw_m: int = option(32, "HNSW: neighbours per node (faiss M).", ge=2, le=512)
    hnsw_ef_construction: int = option(
        64, "HNSW: candidates kept while building (higher: better graph, slower build).", ge=1
    )
    hnsw_ef_search: int = option(
        256, "HNSW: candidates kept while searching (at least the shortlist is used).", ge=1
    )
    ivf_nlist: int | None = option(
        None, "IVF: clusters (default: 4 sqrt(N), at most N/39; at most N).", ge=1
    )
    ivf_nprobe: int = option(
        64, "IVF: clusters searched per query (at most --ivf-nlist are).", ge=1
    )

    @model_validator(mode="after")
    def _index_options(self) -> EvalRetrievalOptions:
        if self.index and not self.funnel:
            raise ValueError(
                "--index builds the first stage of a funnel: add --funnel DIM:KEEP,..., "
                "e.g. --funnel 64:200,384:10"
            )
        fields = type(self).model_fields
        for kind in ("hnsw", "ivf"):
            # A recipe may list every field at its default; another value would be ignored.
            given = sorted(
                f
                for f in self.model_fields_set
                if f.startswith(kind + "_") and getattr(self, f) != fields[f].default
            )
            if given and self.index != kind:
                flags = ", ".join("--" + f.replace("_", "-") for f in given)
                raise ValueError(f"{flags} apply to --index {kind}; add it or drop them")
        return self


class DemoOptions(Options):
    output: Path = option(
        Path("matcli-demo"), "Folder for the demo's models (replaced if it exists).", short="-o"
    )
