"""Settings of every command as pydantic models (extra="forbid": a misspelt key is an error,
never silently ignored). CLI flags and YAML recipes both load into these models."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from matcli.checkpoint.writer import DEFAULT_CHUNK_BYTES, DEFAULT_MAX_SHARD_BYTES
from matcli.errors import MatcliError

MIX_N_MATCH_STRATEGIES = ("pyramid", "reverse-pyramid", "increasing", "decreasing")

_UNITS = {
    "": 1,
    "B": 1,
    "KB": 10**3,
    "MB": 10**6,
    "GB": 10**9,
    "TB": 10**12,
    "KIB": 2**10,
    "MIB": 2**20,
    "GIB": 2**30,
    "TIB": 2**40,
}


def parse_size(text: str | int) -> int:
    """'5GB' (decimal), '2GiB' (binary) or a plain number of bytes -> bytes."""
    if isinstance(text, int):
        return text
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", text)
    unit = m.group(2).upper() if m else None
    if not m or unit not in _UNITS:
        raise MatcliError(f"size {text!r} is not a number of bytes like 5000000000, 5GB or 2GiB")
    return int(float(m.group(1)) * _UNITS[unit])


class Options(BaseModel):
    model_config = ConfigDict(extra="forbid")


class WriteOptions(Options):
    output: Path
    force: bool = False
    dry_run: bool = False
    max_shard_size: int = Field(DEFAULT_MAX_SHARD_BYTES, gt=0, description="bytes per output shard")
    chunk_size: int = Field(DEFAULT_CHUNK_BYTES, gt=0, description="bytes read per chunk")

    @field_validator("max_shard_size", "chunk_size", mode="before")
    @classmethod
    def _sizes(cls, value: object) -> object:
        return parse_size(value) if isinstance(value, str) else value


PAPER_LOSS_WEIGHTS = {(8, 4, 2): [0.1, 0.1, 1.0]}  # MatQuant App. B, every Gemma run
TRAINING_METHODS = ("qat", "omniquant")


class QuantizeOptions(WriteOptions):
    model: Path
    method: Literal["rtn", "weighted-rtn", "qat", "omniquant"] = "rtn"
    bits: int = Field(8, ge=2, le=8, description="parent bit-width c")
    scheme: Literal["symmetric", "asymmetric"] = "symmetric"
    group_size: int | None = Field(None, gt=0)
    layers: str = "ffn"
    # --- MatQuant objective -------------------------------------------------------------
    train_bits: list[int] | None = None  # default: the paper's {8, 4, 2}, below c, plus c
    loss_weights: list[float] | None = None
    extra_precision: bool = False
    distill: str | None = None  # "8->2" or "8->4;2": a wider slice's logits as a target
    distill_only: bool = False  # the students learn from the teacher alone, no labels
    # --- data and loop (qat, omniquant) ---------------------------------------------------
    data: Path | None = None
    text_field: str = "text"
    max_tokens: int | None = Field(None, gt=0)
    steps: int = Field(100, gt=0)
    seq_len: int = Field(512, gt=1)
    batch_size: int = Field(4, gt=0)
    grad_accum: int = Field(1, gt=0)
    lr: float | None = Field(None, gt=0)
    warmup_steps: int | None = Field(None, ge=0)
    schedule: Literal["cosine", "constant"] | None = None
    weight_decay: float = Field(0.0, ge=0)
    max_grad_norm: float = Field(1.0, gt=0)
    trainable: Literal["all", "quantized"] = "all"
    precision: Literal["fp32", "bf16"] = "fp32"
    gradient_checkpointing: bool = False
    device: str = "auto"
    parallel: Literal["fsdp", "ddp"] = "fsdp"  # under torchrun: shard (FSDP2) or replicate (DDP)
    seed: int = 0
    save_every: int = Field(0, ge=0)
    resume: bool = False
    # --- OmniQuant ------------------------------------------------------------------------
    epochs: int = Field(2, gt=0)
    samples: int = Field(32, gt=0)
    let: bool = True
    let_lr: float = Field(5e-3, gt=0)

    @field_validator("device")
    @classmethod
    def _device(cls, device: str) -> str:
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?|mps", device):
            raise ValueError(f"{device!r} is not a device: use auto, cpu, cuda or cuda:N")
        return device

    @model_validator(mode="after")
    def _objective(self) -> QuantizeOptions:
        if self.train_bits is None:
            self.train_bits = sorted(
                {self.bits} | {w for w in (8, 4, 2) if w < self.bits}, reverse=True
            )
        for r in self.train_bits:
            if not 1 <= r <= self.bits:
                raise ValueError(
                    f"--train-bits {r} is not a width of an int{self.bits} parent (1..{self.bits})"
                )
        if len(set(self.train_bits)) != len(self.train_bits):
            raise ValueError("--train-bits repeats a width")
        if self.loss_weights is None:
            key = tuple(sorted(self.train_bits, reverse=True))
            self.loss_weights = list(PAPER_LOSS_WEIGHTS.get(key, [1.0] * len(self.train_bits)))
            if key != tuple(self.train_bits) and key in PAPER_LOSS_WEIGHTS:
                order = sorted(range(len(self.train_bits)), key=lambda i: -self.train_bits[i])
                weights = [0.0] * len(order)
                for rank, i in enumerate(order):
                    weights[i] = self.loss_weights[rank]
                self.loss_weights = weights
        if len(self.loss_weights) != len(self.train_bits):
            raise ValueError(
                f"--loss-weights gives {len(self.loss_weights)} weights for {len(self.train_bits)} --train-bits widths"
            )
        if self.method in TRAINING_METHODS and self.data is None:
            raise ValueError(
                f"--method {self.method} trains on text: add --data FILE (.txt, .jsonl or .parquet)"
            )
        if self.distill is not None:
            teacher, students = parse_distill(self.distill)
            if teacher > self.bits or any(s not in self.train_bits for s in students):
                raise ValueError(
                    f"--distill {self.distill}: the teacher must be a width up to {self.bits} and every student one of --train-bits"
                )
        return self


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


class SliceOptions(WriteOptions):
    parent: Path
    bits: list[int] | None = None
    bits_config: str | None = None
    target_bits: float | None = Field(None, gt=0)
    extra_precision: bool = False
    format: Literal["compressed-tensors", "dense"] = "compressed-tensors"
    dtype: Literal["bfloat16", "float16", "float32"] | None = None

    @field_validator("bits")
    @classmethod
    def _bits_in_range(cls, bits: list[int] | None) -> list[int] | None:
        if bits is not None:
            if not bits:
                raise ValueError("give at least one width, e.g. --bits 2 or --bits 4,2")
            for r in bits:
                if not 1 <= r <= 8:
                    raise ValueError(f"width {r} is out of range: widths are 1 to 8 bits")
            if len(set(bits)) != len(bits):
                raise ValueError("a width is repeated")
        return bits

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
        return self


class ExtractOptions(WriteOptions):
    model: Path
    ffn_config: str | None = None
    skip_layers: str | None = None
    budget: str | None = None
    budget_of: Literal["total", "effective"] | None = None  # None: total
    reorder: bool = False
    data: Path | None = None
    seq_len: int = Field(256, gt=1)
    max_tokens: int = Field(16384, gt=1)
    rank_by_loss: bool = False

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


class ReorderOptions(WriteOptions):
    model: Path
    data: Path
    seq_len: int = Field(256, gt=1)
    max_tokens: int = Field(16384, gt=1)


class TruncateOptions(Options):
    input: Path
    output: Path
    dims: list[int]
    key: str | None = None
    renormalize: bool = True
    pre_norm: Literal["layer_norm"] | None = None
    pca: bool = False
    pca_center: bool = False
    rotation: Path | None = None
    quantize: Literal["int8", "binary"] | None = None
    ranges: Path | None = None
    dtype: Literal["float16", "bfloat16", "float32"] | None = None
    format: Literal["safetensors", "npy", "parquet"] | None = None
    skip_bad_rows: bool = False
    data: Path | None = None
    force: bool = False
    dry_run: bool = False
    chunk_size: int = Field(DEFAULT_CHUNK_BYTES, gt=0)

    @field_validator("chunk_size", mode="before")
    @classmethod
    def _size(cls, value: object) -> object:
        return parse_size(value) if isinstance(value, str) else value

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
        if self.pca and self.rotation is not None:
            raise ValueError(
                "--pca fits a new rotation and --rotation applies a stored one; give one of them"
            )
        if self.quantize and self.dtype:
            raise ValueError("--dtype does not apply to quantized output (--quantize)")
        # Options that would otherwise be silently ignored.
        if self.pca_center and not self.pca:
            raise ValueError(
                "--pca-center only changes how --pca fits its rotation; add --pca or drop --pca-center"
            )
        if self.data is not None and not self.pca:
            raise ValueError(
                "--data gives the texts a model's --pca rotation is fitted on; add --pca or drop --data"
            )
        if self.ranges is not None and self.quantize != "int8":
            raise ValueError(
                "--ranges gives the ranges of --quantize int8; add --quantize int8 or drop --ranges"
            )
        if self.ranges is not None and len(self.dims) != 1:
            raise ValueError(
                "--ranges holds the int8 ranges of one dimension; give a single --dims"
            )
        return self


class InspectOptions(Options):
    path: Path
    json_output: bool = False


M = TypeVar("M", bound=Options)


def read_recipe(path: Path) -> dict:
    """A YAML recipe: a flat mapping of option names (dashes or underscores) to values."""
    import yaml

    try:
        data = yaml.safe_load(path.read_text())
    except OSError as e:
        raise MatcliError(f"cannot read --recipe {path}: {e.strerror}") from e
    except yaml.YAMLError as e:
        raise MatcliError(f"--recipe {path} is not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise MatcliError(f"--recipe {path} must be a mapping of option names to values")
    return {str(k).replace("-", "_"): v for k, v in data.items()}


def merge_recipe(
    recipe: Path | None, flags: dict[str, object], given: set[str]
) -> dict[str, object]:
    """Recipe values, overridden by the flags given on the command line (not by defaults)."""
    if recipe is None:
        return flags
    merged = {k: v for k, v in flags.items() if k in given}
    return {**{k: v for k, v in flags.items() if k not in given}, **read_recipe(recipe), **merged}


def build_options(options_type: type[M], **values: object) -> M:
    """Validate settings; the first problem becomes one MatcliError line."""
    try:
        return options_type(**values)
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "options"
        msg = err["msg"].removeprefix("Value error, ")
        flag = "--" + str(err["loc"][0]).replace("_", "-") if err["loc"] else where
        raise MatcliError(f"invalid {flag}: {msg}" if err["loc"] else msg) from e
