"""`matcli truncate-embeddings` for stored embeddings: one pass per need, one chunk in memory.

Planning opens the input and checks every option against it (dimensions, formats, a stored
rotation or int8 ranges), so a dry run reports each problem a real run would meet. Writing
makes these passes over the input: a statistics pass when --pca or --skip-bad-rows needs one
(it finds the rows to skip before anything is written and fits the rotation), a range pass for
--quantize int8 without --ranges (ranges are taken on the final, truncated vectors), and the
write pass, which feeds every requested dimension from the same chunk. Plain truncation is one
pass: a bad row it meets stops it, and the runner deletes the staged outputs, so nothing is left.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from matcli import __version__
from matcli.errors import MatcliError
from matcli.mrl import sources, transform
from matcli.mrl.sources import EmbeddingSource, ParquetSource, SafetensorsSource
from matcli.mrl.writers import EmbeddingWriter, NpyWriter, ParquetWriter, SafetensorsWriter
from matcli.options import TruncateOptions

SUFFIXES = {".safetensors": "safetensors", ".npy": "npy", ".parquet": "parquet"}
# The sizes Matryoshka models are trained for: powers of two (8..4096) and three times a power
# of two (12..3072).
COMMON_DIMS = {2**k for k in range(3, 13)} | {3 * 2**k for k in range(2, 11)}


@dataclass
class Target:
    """One requested dimension and where it goes."""

    dim: int
    path: Path  # final path
    format: str


class Pipeline:
    """The per-row transform shared by every target: pre-norm, rotation, truncation,
    quantization."""

    def __init__(
        self,
        options: TruncateOptions,
        source: EmbeddingSource,
        rotation: transform.Rotation | None,
        ranges: dict[int, transform.Int8Ranges],
    ):
        self.options, self.source, self.rotation = options, source, rotation
        self.ranges = ranges  # int8: per target dimension, from --ranges or the range pass

    @property
    def chunk_rows(self) -> int:
        return sources.rows_per_chunk(self.source.dim, self.options.chunk_size)

    def prepared(self, x: np.ndarray) -> np.ndarray:
        if self.options.pre_norm == "layer_norm":
            x = transform.layer_norm(x)
        if self.rotation is not None:
            x = self.rotation.apply(x)
        return x

    def truncated(self, prepared: np.ndarray, dim: int) -> np.ndarray:
        return transform.truncate(prepared, dim, self.options.renormalize)

    def encode(self, truncated: np.ndarray, dim: int) -> np.ndarray:
        if self.options.quantize == "int8":
            return self.ranges[dim].quantize(truncated)
        if self.options.quantize == "binary":
            return transform.binarize(truncated)
        dtype = self.out_dtype
        if dtype == "bfloat16":
            return transform.to_bfloat16_bits(truncated)
        return truncated.astype(dtype)

    @property
    def out_dtype(self) -> str:
        if self.options.quantize == "int8":
            return "int8"
        if self.options.quantize == "binary":
            return "uint8"
        return self.options.dtype or self.source.dtype

    def width(self, dim: int) -> int:
        return dim // 8 if self.options.quantize == "binary" else dim

    def row_bytes(self, dim: int) -> int:
        """Bytes of one output row of `dim` dimensions."""
        dtype = self.out_dtype
        return self.width(dim) * (2 if dtype == "bfloat16" else np.dtype(dtype).itemsize)


class EmbeddingFilesPlan:
    """What truncate-embeddings writes for an embeddings file, checked against the input: the
    runner's `WritingPlan` (a dry run describes it; a real run writes it into staging)."""

    def __init__(
        self,
        pipeline: Pipeline,
        targets: list[Target],
        rotation_path: Path | None,
        warnings: list[str],
    ):
        self.pipeline, self.targets = pipeline, targets
        self.rotation_path, self.warnings = rotation_path, warnings
        self.bad = np.zeros(0, dtype=np.int64)  # rows skipped by --skip-bad-rows

    @property
    def source(self) -> EmbeddingSource:
        return self.pipeline.source

    def describe(self) -> dict:
        return {
            "input": str(self.pipeline.options.input),
            "rows": self.source.rows,
            "source_dim": self.source.dim,
            "outputs": [
                {"dim": t.dim, "path": str(t.path), "format": t.format} for t in self.targets
            ],
            "warnings": self.warnings,
        }

    def total_bytes(self) -> int:
        return self.source.rows * sum(self.pipeline.row_bytes(t.dim) for t in self.targets)

    def write(self, staging: Path, on_bytes: Callable[[int], None]) -> list[tuple[Path, dict]]:
        """Every target into `staging` under its final name, and the fitted rotation. A folder
        output gets a manifest; a single file carries its provenance in its own metadata."""
        pipeline, options = self.pipeline, self.pipeline.options
        fitted, self.bad = _statistics_pass(options, self.source, pipeline.chunk_rows)
        if fitted is not None:
            pipeline.rotation = fitted
        if options.quantize == "int8" and not pipeline.ranges:
            _range_pass(pipeline, self.targets, self.bad)
        rows = self.source.rows - len(self.bad)
        writers = [
            _writer(t, staging / t.path.name, pipeline, rows, self.bad) for t in self.targets
        ]
        _write_pass(pipeline, list(zip(self.targets, writers)), self.bad, on_bytes)
        for w in writers:
            w.close()
        if self.rotation_path is not None:
            provenance = {"source_header_sha256": self.source.digest()}
            write_rotation(staging / self.rotation_path.name, fitted, options.pre_norm, provenance)
        return [] if len(self.targets) == 1 else [(staging, self._manifest_fields())]

    def _manifest_fields(self) -> dict:
        files = [{"dim": t.dim, "name": t.path.name, "format": t.format} for t in self.targets]
        if self.rotation_path is not None:
            files.append({"name": self.rotation_path.name, "format": "rotation"})
        source = {"path": str(self.source.path), "source_header_sha256": self.source.digest()}
        return {"input": source, "outputs": files, **self._written()}

    def _written(self) -> dict:
        return {
            "rows_written": self.source.rows - len(self.bad),
            "skipped_rows": [int(i) for i in self.bad[:20]],
        }

    def summary(self, destination: Path) -> dict:
        report = {**self.describe(), **self._written()}
        if self.rotation_path:
            report["rotation"] = str(self.rotation_path)
        return report

    def close(self) -> None:
        """Nothing to release: sources open their file for each pass."""


def plan_truncation(options: TruncateOptions) -> EmbeddingFilesPlan:
    """Open the input and check everything against it: the outputs, and the files given by
    earlier runs (--rotation, --ranges), so that a dry run reports their problems too."""
    source = sources.open_source(options.input, options.key)
    targets, rotation_path, warnings = plan_targets(options, source)
    rotation = (
        load_rotation(options.rotation, source.dim, options.pre_norm) if options.rotation else None
    )
    ranges = (
        {options.dims[0]: load_ranges(options.ranges, options.dims[0])} if options.ranges else {}
    )
    pipeline = Pipeline(options, source, rotation, ranges)
    return EmbeddingFilesPlan(pipeline, targets, rotation_path, warnings)


def plan_targets(
    options: TruncateOptions, source: EmbeddingSource
) -> tuple[list[Target], Path | None, list[str]]:
    """Check options and dims against the input; name the outputs. Returns the targets, the
    rotation's path and warnings."""
    warnings = _check_dims(options, source)
    _check_file_options(options, source)
    default = "parquet" if isinstance(source, ParquetSource) else "safetensors"
    targets, rotation = _name_outputs(options, default)
    _check_int8_format(options, targets)
    warnings += _passthrough_lost(source, targets, default)
    if any(t.format == "parquet" for t in targets) and importlib.util.find_spec("pyarrow") is None:
        raise MatcliError("writing .parquet needs pyarrow: pip install 'matcli[parquet]'")
    return targets, rotation, warnings


def _check_int8_format(options: TruncateOptions, targets: list[Target]) -> None:
    if options.quantize == "int8" and any(t.format != "safetensors" for t in targets):
        fix = "end -o in .safetensors" if len(targets) == 1 else "add --format safetensors"
        raise MatcliError(
            "--quantize int8 stores the per-dimension ranges (tensor int8_ranges) that decode "
            f"the codes, and only .safetensors holds them beside the codes; {fix}"
        )


def _passthrough_lost(source: EmbeddingSource, targets: list[Target], default: str) -> list[str]:
    """A warning when the input's other tensors or columns cannot travel into an output."""
    extra = list(source.passthrough.tensors) + list(source.passthrough.columns)
    carried = {
        "safetensors": bool(source.passthrough.tensors),
        "parquet": bool(source.passthrough.columns),
        "npy": False,
    }
    lost = sorted({t.format for t in targets if extra and not carried[t.format]})
    if not lost:
        return []
    return [
        f"{', '.join(extra[:5])} cannot be carried into {'/'.join(lost)} output and are left "
        f"out; write {default} to keep them"
    ]


def _check_file_options(options: TruncateOptions, source: EmbeddingSource) -> None:
    if options.data is not None:
        raise MatcliError(
            "--data gives the texts a model folder's --pca is fitted on; an embeddings file is "
            "fitted on its own rows, so drop --data"
        )
    if options.pca:
        check_pca_rows(source.rows, max(options.dims), options.pca_center, str(source.path))


def check_pca_rows(rows: int, kept: int, center: bool, what: str) -> None:
    """Refuse a PCA fit on too few rows: some of the kept components would be arbitrary."""
    needed = transform.pca_rows_needed(kept, center)
    if rows < needed:
        centred = " (centred)" if center else ""
        raise MatcliError(
            f"--pca needs at least {needed} rows to fit the leading {kept} components{centred}, "
            f"but {what} has {rows}; fit it on a larger sample and apply it here with "
            "--rotation FILE"
        )


def _check_dims(options: TruncateOptions, source: EmbeddingSource) -> list[str]:
    for d in options.dims:
        if d > source.dim:
            raise MatcliError(
                f"--dims {d} is larger than the input's {source.dim} dimensions; "
                f"choose 1..{source.dim}"
            )
        if options.quantize == "binary" and d % 8:
            raise MatcliError(
                f"--dims {d} with --quantize binary: packed bits need a multiple of 8 "
                f"dimensions; use {d - d % 8 or 8} or {d + 8 - d % 8}"
            )
    odd = [d for d in options.dims if d not in COMMON_DIMS and d != source.dim]
    if odd:
        return [
            f"dims {odd} are not among the sizes Matryoshka models are usually trained for; "
            "check the model's matryoshka_dimensions"
        ]
    return []


def _name_outputs(options: TruncateOptions, default: str) -> tuple[list[Target], Path | None]:
    """One file (its format from the -o suffix), or a folder of d{dim} files."""
    out = options.output
    if len(options.dims) == 1:
        return _name_file(options)
    if out.suffix.lower() in SUFFIXES:
        raise MatcliError(
            f"-o {out}: several dimensions are written to a folder (one file each); "
            "give a folder path"
        )
    fmt = options.format or default
    targets = [Target(d, out / f"d{d}.{fmt}", fmt) for d in options.dims]
    return targets, (out / "rotation.safetensors" if options.pca else None)


def _name_file(options: TruncateOptions) -> tuple[list[Target], Path | None]:
    out = options.output
    fmt = SUFFIXES.get(out.suffix.lower())
    if fmt is None:
        raise MatcliError(
            f"-o {out}: a single dimension is written to a file; "
            "end it in .safetensors, .npy or .parquet"
        )
    if options.format and options.format != fmt:
        # Writing npy bytes into a .safetensors file would make a file nothing can read.
        raise MatcliError(
            f"--format {options.format} contradicts -o {out} ({fmt}); drop --format, "
            f"or end -o in .{options.format}"
        )
    rotation = out.with_name(out.name.removesuffix(out.suffix) + ".rotation.safetensors")
    return [Target(options.dims[0], out, fmt)], (rotation if options.pca else None)


def _statistics_pass(options: TruncateOptions, source: EmbeddingSource, chunk_rows: int):
    """With --skip-bad-rows, the bad rows (found before anything is written); with --pca, the
    rotation fitted on the good rows. Returns (rotation or None, bad row numbers)."""
    bad = np.zeros(0, dtype=np.int64)
    if not (options.pca or options.skip_bad_rows):
        return None, bad
    fit = transform.PcaFit(source.dim) if options.pca else None
    found = []
    for start, x in source.chunks(chunk_rows):
        rows = transform.non_finite_rows(x)
        if len(rows):
            if not options.skip_bad_rows:
                raise _bad_rows_error(source, rows + start)
            found.append(rows + start)
            x = np.delete(x, rows, axis=0)
        if fit is not None:
            fit.add(x if options.pre_norm != "layer_norm" else transform.layer_norm(x))
    if found:
        bad = np.concatenate(found)
    if fit is None:
        return None, bad
    without = f"{source.path} without its {len(bad)} skipped rows"
    check_pca_rows(fit.count, max(options.dims), options.pca_center, without)
    return fit.finish(center=options.pca_center)[0], bad


def _bad_rows_error(source: EmbeddingSource, rows: np.ndarray) -> MatcliError:
    return MatcliError(
        f"{sources.bad_rows_message(source, rows)}; fix them, or drop them with --skip-bad-rows"
    )


def _good_chunks(pipeline: Pipeline, bad: np.ndarray):
    """(first row, chunk) without the skipped rows; a bad row stops a run that skips none."""
    source = pipeline.source
    for start, x in source.chunks(pipeline.chunk_rows):
        if pipeline.options.skip_bad_rows:
            drop = bad[(bad >= start) & (bad < start + len(x))] - start
            if len(drop):
                x = np.delete(x, drop, axis=0)
        else:
            rows = transform.non_finite_rows(x)
            if len(rows):
                raise _bad_rows_error(source, rows + start)
        yield start, x


def _range_pass(pipeline: Pipeline, targets: list[Target], bad: np.ndarray) -> None:
    pipeline.ranges = {t.dim: transform.Int8Ranges(t.dim) for t in targets}
    for _, x in _good_chunks(pipeline, bad):
        prepared = pipeline.prepared(x)
        for t in targets:
            pipeline.ranges[t.dim].add(pipeline.truncated(prepared, t.dim))


def _write_pass(
    pipeline: Pipeline,
    outputs: list[tuple[Target, EmbeddingWriter]],
    bad: np.ndarray,
    on_bytes: Callable[[int], None],
) -> None:
    """Every target fed from the same chunk (with its parquet columns, rows skipped alike)."""
    parquet = any(t.format == "parquet" for t, _ in outputs)
    columns = _passthrough_batches(pipeline) if parquet else None
    for start, x in _good_chunks(pipeline, bad):
        batch = next(columns) if columns is not None else None
        if batch is not None and len(bad):
            keep = np.setdiff1d(np.arange(start, start + batch.num_rows), bad) - start
            batch = batch.take(keep)
        prepared = pipeline.prepared(x)
        for target, writer in outputs:
            encoded = pipeline.encode(pipeline.truncated(prepared, target.dim), target.dim)
            writer.write(encoded, batch)
            on_bytes(encoded.nbytes)


def _passthrough_batches(pipeline: Pipeline):
    source = pipeline.source
    if isinstance(source, ParquetSource) and source.passthrough.columns:
        yield from source.batches(pipeline.chunk_rows, source.passthrough.columns)
    while True:
        yield None


def _metadata(pipeline: Pipeline, dim: int) -> dict[str, str]:
    o = pipeline.options
    meta = {
        "format": "matcli-embeddings",
        "matcli.version": __version__,
        "source_dim": str(pipeline.source.dim),
        "dim": str(dim),
        "renormalized": str(o.renormalize).lower(),
        "pre_norm": o.pre_norm or "none",
        "rotation": "pca" if (o.pca or o.rotation) else "none",
        "quantization": o.quantize or "none",
        "source_header_sha256": pipeline.source.digest(),
    }
    if o.quantize == "int8":
        measured = f"taken from {o.ranges}" if o.ranges else "measured on these vectors"
        meta["int8_ranges"] = f"tensor int8_ranges: [2, dim] min and max per dimension, {measured}"
    return meta


def _writer(
    target: Target, path: Path, pipeline: Pipeline, rows: int, bad: np.ndarray
) -> EmbeddingWriter:
    source, dtype, width = pipeline.source, pipeline.out_dtype, pipeline.width(target.dim)
    meta = _metadata(pipeline, target.dim)
    if target.format == "npy":
        return NpyWriter(path, rows, width, dtype)
    if target.format == "parquet":
        schema = None
        if isinstance(source, ParquetSource) and source.passthrough.columns:
            full = source.file.schema_arrow
            schema = [full.field(c) for c in source.passthrough.columns]
        column = source.column if isinstance(source, ParquetSource) else "embedding"
        return ParquetWriter(path, column, width, dtype, meta, schema)
    key = source.key if isinstance(source, SafetensorsSource) else "embeddings"
    extras = _passthrough_tensors(source, bad)
    if pipeline.options.quantize == "int8":
        ranges = pipeline.ranges[target.dim].as_array()
        extras.append(("int8_ranges", "F32", tuple(ranges.shape), ranges.tobytes()))
    return SafetensorsWriter(path, key, (rows, width), dtype, meta, extras)


def _passthrough_tensors(
    source: EmbeddingSource, bad: np.ndarray
) -> list[tuple[str, str, tuple[int, ...], bytes]]:
    """Other tensors of a safetensors input, row-filtered when rows were skipped."""
    if not isinstance(source, SafetensorsSource):
        return []
    extras = []
    for name, (code, shape) in sorted(source.passthrough.tensors.items()):
        data = source.read_tensor_bytes(name)
        if len(bad) and shape and shape[0] == source.rows:
            # A tensor with one entry per embedding row loses the skipped rows, as
            # [rows, row bytes].
            data = np.delete(data.reshape(shape[0], data.size // shape[0]), bad, axis=0)
            shape = (len(data), *shape[1:])
        extras.append((name, code, shape, data.tobytes()))
    return extras


def write_rotation(
    path: Path, rotation: transform.Rotation, pre_norm: str | None, provenance: dict[str, str]
) -> None:
    """The rotation (columns = components) and mean, with what it was fitted on."""
    dim = len(rotation.mean)
    metadata = {
        "format": "matcli-rotation",
        "matcli.version": __version__,
        "source_dim": str(dim),
        "centered": str(bool(np.any(rotation.mean))).lower(),
        "pre_norm": pre_norm or "none",
        **provenance,
    }
    extras = [("mean", "F32", (dim,), rotation.mean.tobytes())]
    writer = SafetensorsWriter(path, "rotation", (dim, dim), "float32", metadata, extras)
    writer.write(rotation.rotation)
    writer.close()


def _stored_tensor(path: Path, key: str, flag: str, what: str) -> SafetensorsSource:
    """A tensor of a .safetensors file written by an earlier run, every problem one line."""
    if not path.is_file():
        raise MatcliError(f"{flag} {path} does not exist; give {what}")
    if path.suffix.lower() != ".safetensors":
        raise MatcliError(f"{flag} {path} is not a .safetensors file; give {what}")
    try:
        return SafetensorsSource(path, key)
    except MatcliError as e:
        raise MatcliError(f"{flag} {e}; give {what}") from e


def load_rotation(path: Path, dim: int, pre_norm: str | None) -> transform.Rotation:
    """A rotation written by --pca, checked against the input's dimension and --pre-norm."""
    what = "the rotation.safetensors written by --pca"
    rotation_file = _stored_tensor(path, "rotation", "--rotation", what)
    shape = (rotation_file.rows, rotation_file.dim)
    if shape != (dim, dim) or "mean" not in rotation_file.passthrough.tensors:
        raise MatcliError(
            f"--rotation {path} is for {rotation_file.rows}-d inputs with a mean vector; "
            f"the input has {dim} dimensions"
        )
    fitted, wanted = rotation_file.header.metadata.get("pre_norm", "none"), pre_norm or "none"
    if fitted != wanted:
        # The rotation only fits vectors prepared the way its own fit saw them.
        fix = f"add --pre-norm {fitted}" if wanted == "none" else f"remove --pre-norm {wanted}"
        raise MatcliError(
            f"--rotation {path} was fitted with {_pre_norm_flag(fitted)} but this run has "
            f"{_pre_norm_flag(wanted)}; {fix}"
        )
    matrix = np.concatenate([x for _, x in rotation_file.chunks(dim)])
    mean = np.frombuffer(rotation_file.read_tensor_bytes("mean"), dtype=np.float32)
    return transform.Rotation(matrix, mean)


def _pre_norm_flag(value: str) -> str:
    return "no --pre-norm" if value == "none" else f"--pre-norm {value}"


def load_ranges(path: Path, dim: int) -> transform.Int8Ranges:
    """int8 ranges written by an earlier --quantize int8 run (e.g. the corpus's, for queries)."""
    what = "the .safetensors written by an earlier --quantize int8 run"
    ranges_file = _stored_tensor(path, "int8_ranges", "--ranges", what)
    rows, found = ranges_file.rows, ranges_file.dim
    if (rows, found) != (2, dim):
        raise MatcliError(
            f"--ranges {path} holds int8_ranges of shape [{rows}, {found}], not [2, {dim}]: "
            f"it was written for --dims {found}; use that dimension, or the ranges of a "
            f"--dims {dim} run"
        )
    return transform.Int8Ranges.from_array(next(ranges_file.chunks(2))[1])
