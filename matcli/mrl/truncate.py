"""`matcli truncate-embeddings` for stored embeddings: one pass per need, one chunk in memory.

Passes over the input: a statistics pass when --pca or --skip-bad-rows needs one (it finds
bad rows before anything is written and fits the rotation), a range pass for --quantize int8
(ranges are taken on the final, truncated vectors), and the write pass, which feeds every
requested dimension from the same chunk. Plain truncation is one pass.
"""

from __future__ import annotations

import contextlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from matcli import __version__
from matcli.checkpoint.atomic import staged_file, staged_folder
from matcli.errors import MatcliError
from matcli.mrl import transform
from matcli.mrl.sources import EmbeddingSource, ParquetSource, SafetensorsSource, open_source, rows_per_chunk
from matcli.mrl.writers import EmbeddingWriter, NpyWriter, ParquetWriter, SafetensorsWriter
from matcli.recipe import TruncateOptions

SUFFIXES = {".safetensors": "safetensors", ".npy": "npy", ".parquet": "parquet"}
COMMON_DIMS = {8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048, 3072, 4096}


@dataclass
class Target:
    """One requested dimension and where it goes."""

    dim: int
    path: Path  # final path
    format: str


def _format_of(path: Path, default: str) -> str:
    return SUFFIXES.get(path.suffix.lower(), default)


def plan_targets(options: TruncateOptions, source: EmbeddingSource) -> tuple[list[Target], Path | None, list[str]]:
    """Check dims against the input; name the outputs. Returns targets, rotation path, warnings."""
    warnings = []
    for d in options.dims:
        if d > source.dim:
            raise MatcliError(f"--dims {d} is larger than the input's {source.dim} dimensions; choose 1..{source.dim}")
        if options.quantize == "binary" and d % 8:
            raise MatcliError(f"--dims {d} with --quantize binary: packed bits need a multiple of 8 dimensions; use {d - d % 8 or 8} or {d + 8 - d % 8}")
    odd = [d for d in options.dims if d not in COMMON_DIMS and d != source.dim]
    if odd:
        warnings.append(f"dims {odd} are not among the sizes Matryoshka models are usually trained for; check the model's matryoshka_dimensions")
    default = "parquet" if isinstance(source, ParquetSource) else "safetensors"
    out = options.output
    if out.absolute().resolve() == options.input.absolute().resolve():
        raise MatcliError(f"-o {out} is the input file; write the truncated embeddings somewhere else")
    if len(options.dims) == 1:
        fmt = options.format or _format_of(out, default)
        if out.suffix.lower() not in SUFFIXES:
            raise MatcliError(f"-o {out}: a single dimension is written to a file; end it in .safetensors, .npy or .parquet")
        targets = [Target(options.dims[0], out, fmt)]
        rotation = out.with_name(out.name.removesuffix(out.suffix) + ".rotation.safetensors") if options.pca else None
    else:
        if out.suffix.lower() in SUFFIXES:
            raise MatcliError(f"-o {out}: several dimensions are written to a folder (one file each); give a folder path")
        fmt = options.format or default
        ext = {"safetensors": ".safetensors", "npy": ".npy", "parquet": ".parquet"}[fmt]
        targets = [Target(d, out / f"d{d}{ext}", fmt) for d in options.dims]
        rotation = out / "rotation.safetensors" if options.pca else None
    extra = list(source.passthrough.tensors) + list(source.passthrough.columns)
    carried = {"safetensors": bool(source.passthrough.tensors), "parquet": bool(source.passthrough.columns), "npy": False}
    lost = sorted({t.format for t in targets if extra and not carried[t.format]})
    if lost:
        warnings.append(f"{', '.join(extra[:5])} cannot be carried into {'/'.join(lost)} output and are left out; write {default} to keep them")
    if any(t.format == "parquet" for t in targets) and importlib.util.find_spec("pyarrow") is None:
        raise MatcliError("writing .parquet needs pyarrow: pip install 'matcli[parquet]'")
    return targets, rotation, warnings


class Pipeline:
    """The per-row transform shared by every target: pre-norm, rotation, truncation, quantization."""

    def __init__(self, options: TruncateOptions, source: EmbeddingSource, rotation: transform.Rotation | None):
        self.options, self.source, self.rotation = options, source, rotation
        self.ranges: dict[int, transform.Int8Ranges] = {}

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


def truncate_embeddings(options: TruncateOptions) -> dict:
    source = open_source(options.input, options.key)
    targets, rotation_path, warnings = plan_targets(options, source)
    chunk_rows = rows_per_chunk(source.dim, options.chunk_size)
    report = {
        "input": str(options.input),
        "rows": source.rows,
        "source_dim": source.dim,
        "outputs": [{"dim": t.dim, "path": str(t.path), "format": t.format} for t in targets],
        "warnings": warnings,
    }
    if options.dry_run:
        return report
    rotation, bad = _statistics_pass(options, source, chunk_rows)
    pipeline = Pipeline(options, source, rotation)
    if options.quantize == "int8":
        _range_pass(pipeline, targets, chunk_rows, bad)
    keep_rows = source.rows - len(bad)
    with contextlib.ExitStack() as stack:
        staged = _stage_outputs(stack, options, targets, rotation_path)
        writers = [_writer(t, staged[t.path], pipeline, keep_rows, bad) for t in targets]
        _write_pass(pipeline, targets, writers, chunk_rows, bad)
        for w in writers:
            w.close()
        if rotation_path is not None:
            _write_rotation(staged[rotation_path], rotation, source, options)
    report["rows_written"] = keep_rows
    report["skipped_rows"] = [int(i) for i in bad[:20]]
    if rotation_path:
        report["rotation"] = str(rotation_path)
    return report


def _statistics_pass(options: TruncateOptions, source: EmbeddingSource, chunk_rows: int):
    """Bad rows and, with --pca, the fitted rotation; or the rotation loaded from --rotation."""
    bad = np.zeros(0, dtype=np.int64)
    rotation = load_rotation(options.rotation, source.dim) if options.rotation else None
    if not (options.pca or options.skip_bad_rows):
        return rotation, bad
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
    if fit is not None:
        rotation, _ = fit.finish(center=options.pca_center)
    return rotation, bad


def _bad_rows_error(source: EmbeddingSource, rows: np.ndarray) -> MatcliError:
    shown = ", ".join(str(int(r)) for r in rows[:5]) + (" ..." if len(rows) > 5 else "")
    return MatcliError(f"{source.path}: rows {shown} hold NaN or inf; fix them, or drop them with --skip-bad-rows")


def _good_chunks(source: EmbeddingSource, chunk_rows: int, bad: np.ndarray, skip: bool):
    for start, x in source.chunks(chunk_rows):
        if skip:
            drop = bad[(bad >= start) & (bad < start + len(x))] - start
            if len(drop):
                x = np.delete(x, drop, axis=0)
        else:
            rows = transform.non_finite_rows(x)
            if len(rows):
                raise _bad_rows_error(source, rows + start)
        yield start, x


def _range_pass(pipeline: Pipeline, targets: list[Target], chunk_rows: int, bad: np.ndarray) -> None:
    pipeline.ranges = {t.dim: transform.Int8Ranges(t.dim) for t in targets}
    for _, x in _good_chunks(pipeline.source, chunk_rows, bad, pipeline.options.skip_bad_rows):
        prepared = pipeline.prepared(x)
        for t in targets:
            pipeline.ranges[t.dim].add(pipeline.truncated(prepared, t.dim))


def _write_pass(pipeline: Pipeline, targets: list[Target], writers: list[EmbeddingWriter], chunk_rows: int, bad: np.ndarray) -> None:
    source = pipeline.source
    columns = _passthrough_batches(source, chunk_rows) if any(t.format == "parquet" for t in targets) else None
    for start, x in _good_chunks(source, chunk_rows, bad, pipeline.options.skip_bad_rows):
        batch = next(columns) if columns is not None else None
        if batch is not None and len(bad):
            keep = np.setdiff1d(np.arange(start, start + batch.num_rows), bad) - start
            batch = batch.take(keep)
        prepared = pipeline.prepared(x)
        for target, writer in zip(targets, writers):
            writer.write(pipeline.encode(pipeline.truncated(prepared, target.dim), target.dim), batch)


def _passthrough_batches(source: EmbeddingSource, chunk_rows: int):
    if isinstance(source, ParquetSource) and source.passthrough.columns:
        yield from source.batches(chunk_rows, source.passthrough.columns)
    while True:
        yield None


def _stage_outputs(stack: contextlib.ExitStack, options: TruncateOptions, targets: list[Target], rotation_path: Path | None) -> dict[Path, Path]:
    """Temporary paths for every final path; all appear together, or none."""
    paths = [t.path for t in targets] + ([rotation_path] if rotation_path else [])
    if len(targets) == 1:
        return {p: stack.enter_context(staged_file(p, options.force)) for p in paths}
    from matcli.checkpoint.atomic import check_destination

    check_destination(options.output, options.force, [options.input])
    folder = stack.enter_context(staged_folder(options.output, options.force))
    return {p: folder / p.name for p in paths}


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
        "source_sha256": pipeline.source.digest(),
    }
    if o.quantize == "int8":
        meta["int8_ranges"] = "tensor int8_ranges: [2, dim] min and max per dimension"
    return meta


def _writer(target: Target, path: Path, pipeline: Pipeline, rows: int, bad: np.ndarray) -> EmbeddingWriter:
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


def _passthrough_tensors(source: EmbeddingSource, bad: np.ndarray) -> list[tuple[str, str, tuple[int, ...], bytes]]:
    """Other tensors of a safetensors input, row-filtered when rows were skipped."""
    if not isinstance(source, SafetensorsSource):
        return []
    extras = []
    for name, (code, shape) in sorted(source.passthrough.tensors.items()):
        data = bytes(source.read_tensor_bytes(name))
        if len(bad) and shape and shape[0] == source.rows:
            row_bytes = len(data) // shape[0]
            keep = np.setdiff1d(np.arange(shape[0]), bad)
            data = b"".join(data[i * row_bytes : (i + 1) * row_bytes] for i in keep)
            shape = (len(keep), *shape[1:])
        extras.append((name, code, shape, data))
    return extras


def _write_rotation(path: Path, rotation: transform.Rotation, source: EmbeddingSource, options: TruncateOptions) -> None:
    metadata = {
        "format": "matcli-rotation",
        "matcli.version": __version__,
        "source_dim": str(source.dim),
        "centered": str(bool(np.any(rotation.mean))).lower(),
        "pre_norm": options.pre_norm or "none",
        "source_sha256": source.digest(),
    }
    extras = [("mean", "F32", (source.dim,), rotation.mean.tobytes())]
    writer = SafetensorsWriter(path, "rotation", (source.dim, source.dim), "float32", metadata, extras)
    writer.write(rotation.rotation)
    writer.close()


def load_rotation(path: Path, dim: int) -> transform.Rotation:
    """A rotation written by --pca, checked against the input's dimension."""
    rotation_file = SafetensorsSource(path, "rotation")
    if rotation_file.dim != dim or rotation_file.rows != dim or "mean" not in rotation_file.passthrough.tensors:
        raise MatcliError(f"--rotation {path} is for {rotation_file.rows}-d inputs with a mean vector; the input has {dim} dimensions")
    matrix = np.concatenate([x for _, x in rotation_file.chunks(dim)])
    mean = np.frombuffer(rotation_file.read_tensor_bytes("mean"), dtype=np.float32)
    return transform.Rotation(matrix, mean)

