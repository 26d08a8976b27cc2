"""`matcli truncate-embeddings` for stored embeddings: one pass per need, one chunk in memory.

Passes over the input: a statistics pass when --pca or --skip-bad-rows needs one (it finds
the rows to skip before anything is written and fits the rotation), a range pass for
--quantize int8 without --ranges (ranges are taken on the final, truncated vectors), and the
write pass, which feeds every requested dimension from the same chunk. Plain truncation is one
pass: a bad row it meets stops it, and the staged outputs are deleted, so nothing is left.
"""

from __future__ import annotations

import contextlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from matcli import __version__
from matcli.checkpoint.atomic import check_destination, staged_file, staged_folder
from matcli.errors import MatcliError
from matcli.mrl import transform
from matcli.mrl.sources import (
    EmbeddingSource,
    ParquetSource,
    SafetensorsSource,
    bad_rows_message,
    open_source,
    rows_per_chunk,
)
from matcli.mrl.writers import EmbeddingWriter, NpyWriter, ParquetWriter, SafetensorsWriter
from matcli.options import TruncateOptions

SUFFIXES = {".safetensors": "safetensors", ".npy": "npy", ".parquet": "parquet"}
COMMON_DIMS = {
    8,
    12,
    16,
    24,
    32,
    48,
    64,
    96,
    128,
    192,
    256,
    384,
    512,
    768,
    1024,
    1536,
    2048,
    3072,
    4096,
}


@dataclass
class Target:
    """One requested dimension and where it goes."""

    dim: int
    path: Path  # final path
    format: str


def plan_targets(
    options: TruncateOptions, source: EmbeddingSource
) -> tuple[list[Target], Path | None, list[str]]:
    """Check options and dims against the input; name the outputs. Returns targets, rotation path, warnings."""
    warnings = _check_dims(options, source)
    _check_file_options(options, source)
    if options.output.absolute().resolve() == options.input.absolute().resolve():
        raise MatcliError(
            f"-o {options.output} is the input file; write the truncated embeddings somewhere else"
        )
    default = "parquet" if isinstance(source, ParquetSource) else "safetensors"
    targets, rotation = _name_outputs(options, default)
    if options.quantize == "int8" and any(t.format != "safetensors" for t in targets):
        fix = "end -o in .safetensors" if len(targets) == 1 else "add --format safetensors"
        raise MatcliError(
            f"--quantize int8 stores the per-dimension ranges (tensor int8_ranges) that decode the codes, and only .safetensors holds them beside the codes; {fix}"
        )
    extra = list(source.passthrough.tensors) + list(source.passthrough.columns)
    carried = {
        "safetensors": bool(source.passthrough.tensors),
        "parquet": bool(source.passthrough.columns),
        "npy": False,
    }
    lost = sorted({t.format for t in targets if extra and not carried[t.format]})
    if lost:
        warnings.append(
            f"{', '.join(extra[:5])} cannot be carried into {'/'.join(lost)} output and are left out; write {default} to keep them"
        )
    if any(t.format == "parquet" for t in targets) and importlib.util.find_spec("pyarrow") is None:
        raise MatcliError("writing .parquet needs pyarrow: pip install 'matcli[parquet]'")
    return targets, rotation, warnings


def _check_file_options(options: TruncateOptions, source: EmbeddingSource) -> None:
    if options.data is not None:
        raise MatcliError(
            "--data gives the texts a model folder's --pca is fitted on; an embeddings file is fitted on its own rows, so drop --data"
        )
    if options.pca:
        check_pca_rows(source.rows, max(options.dims), options.pca_center, str(source.path))


def check_pca_rows(rows: int, kept: int, center: bool, what: str) -> None:
    """Refuse a PCA fit on too few rows: some of the kept components would be arbitrary."""
    needed = transform.pca_rows_needed(kept, center)
    if rows < needed:
        raise MatcliError(
            f"--pca needs at least {needed} rows to fit the leading {kept} components{' (centred)' if center else ''}, "
            f"but {what} has {rows}; fit it on a larger sample and apply it here with --rotation FILE"
        )


def _check_dims(options: TruncateOptions, source: EmbeddingSource) -> list[str]:
    for d in options.dims:
        if d > source.dim:
            raise MatcliError(
                f"--dims {d} is larger than the input's {source.dim} dimensions; choose 1..{source.dim}"
            )
        if options.quantize == "binary" and d % 8:
            raise MatcliError(
                f"--dims {d} with --quantize binary: packed bits need a multiple of 8 dimensions; use {d - d % 8 or 8} or {d + 8 - d % 8}"
            )
    odd = [d for d in options.dims if d not in COMMON_DIMS and d != source.dim]
    if odd:
        return [
            f"dims {odd} are not among the sizes Matryoshka models are usually trained for; check the model's matryoshka_dimensions"
        ]
    return []


def _name_outputs(options: TruncateOptions, default: str) -> tuple[list[Target], Path | None]:
    """One file (its format from the -o suffix), or a folder of d{dim} files."""
    out = options.output
    if len(options.dims) == 1:
        fmt = SUFFIXES.get(out.suffix.lower())
        if fmt is None:
            raise MatcliError(
                f"-o {out}: a single dimension is written to a file; end it in .safetensors, .npy or .parquet"
            )
        if options.format and options.format != fmt:
            # Writing npy bytes into a .safetensors file would make a file nothing can read.
            raise MatcliError(
                f"--format {options.format} contradicts -o {out} ({fmt}); drop --format, or end -o in .{options.format}"
            )
        rotation = (
            out.with_name(out.name.removesuffix(out.suffix) + ".rotation.safetensors")
            if options.pca
            else None
        )
        return [Target(options.dims[0], out, fmt)], rotation
    if out.suffix.lower() in SUFFIXES:
        raise MatcliError(
            f"-o {out}: several dimensions are written to a folder (one file each); give a folder path"
        )
    fmt = options.format or default
    targets = [Target(d, out / f"d{d}.{fmt}", fmt) for d in options.dims]
    return targets, (out / "rotation.safetensors" if options.pca else None)


class Pipeline:
    """The per-row transform shared by every target: pre-norm, rotation, truncation, quantization."""

    def __init__(
        self,
        options: TruncateOptions,
        source: EmbeddingSource,
        rotation: transform.Rotation | None,
        ranges: dict[int, transform.Int8Ranges],
    ):
        self.options, self.source, self.rotation = options, source, rotation
        self.ranges = ranges  # int8: per target dimension, from --ranges or the range pass

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
    # Files given by earlier runs are checked now, so a dry run reports their problems too.
    rotation = (
        load_rotation(options.rotation, source.dim, options.pre_norm) if options.rotation else None
    )
    ranges = (
        {options.dims[0]: load_ranges(options.ranges, options.dims[0])} if options.ranges else {}
    )
    chunk_rows = rows_per_chunk(source.dim, options.chunk_size)
    report = {
        "input": str(options.input),
        "rows": source.rows,
        "source_dim": source.dim,
        "outputs": [{"dim": t.dim, "path": str(t.path), "format": t.format} for t in targets],
        "warnings": warnings,
    }
    problem = _destination_problem(options, targets)
    if problem and not options.dry_run:
        raise MatcliError(problem)
    if options.dry_run:
        if problem:
            warnings.append(f"a real run would stop here: {problem}")
        return report
    fitted, bad = _statistics_pass(options, source, chunk_rows)
    pipeline = Pipeline(options, source, fitted or rotation, ranges)
    if options.quantize == "int8" and not ranges:
        _range_pass(pipeline, targets, chunk_rows, bad)
    keep_rows = source.rows - len(bad)
    with contextlib.ExitStack() as stack:
        staged = _stage_outputs(stack, options, targets, rotation_path)
        writers = [_writer(t, staged[t.path], pipeline, keep_rows, bad) for t in targets]
        _write_pass(pipeline, targets, writers, chunk_rows, bad)
        for w in writers:
            w.close()
        if rotation_path is not None:
            write_rotation(
                staged[rotation_path],
                fitted,
                options.pre_norm,
                {"source_header_sha256": source.digest()},
            )
    report["rows_written"] = keep_rows
    report["skipped_rows"] = [int(i) for i in bad[:20]]
    if rotation_path:
        report["rotation"] = str(rotation_path)
    return report


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
    check_pca_rows(
        fit.count,
        max(options.dims),
        options.pca_center,
        f"{source.path} without its {len(bad)} skipped rows",
    )
    return fit.finish(center=options.pca_center)[0], bad


def _bad_rows_error(source: EmbeddingSource, rows: np.ndarray) -> MatcliError:
    return MatcliError(
        f"{bad_rows_message(source, rows)}; fix them, or drop them with --skip-bad-rows"
    )


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


def _range_pass(
    pipeline: Pipeline, targets: list[Target], chunk_rows: int, bad: np.ndarray
) -> None:
    pipeline.ranges = {t.dim: transform.Int8Ranges(t.dim) for t in targets}
    for _, x in _good_chunks(pipeline.source, chunk_rows, bad, pipeline.options.skip_bad_rows):
        prepared = pipeline.prepared(x)
        for t in targets:
            pipeline.ranges[t.dim].add(pipeline.truncated(prepared, t.dim))


def _write_pass(
    pipeline: Pipeline,
    targets: list[Target],
    writers: list[EmbeddingWriter],
    chunk_rows: int,
    bad: np.ndarray,
) -> None:
    source = pipeline.source
    columns = (
        _passthrough_batches(source, chunk_rows)
        if any(t.format == "parquet" for t in targets)
        else None
    )
    for start, x in _good_chunks(source, chunk_rows, bad, pipeline.options.skip_bad_rows):
        batch = next(columns) if columns is not None else None
        if batch is not None and len(bad):
            keep = np.setdiff1d(np.arange(start, start + batch.num_rows), bad) - start
            batch = batch.take(keep)
        prepared = pipeline.prepared(x)
        for target, writer in zip(targets, writers):
            writer.write(
                pipeline.encode(pipeline.truncated(prepared, target.dim), target.dim), batch
            )


def _passthrough_batches(source: EmbeddingSource, chunk_rows: int):
    if isinstance(source, ParquetSource) and source.passthrough.columns:
        yield from source.batches(chunk_rows, source.passthrough.columns)
    while True:
        yield None


def _destination_problem(options: TruncateOptions, targets: list[Target]) -> str | None:
    """Why writing the outputs would fail or lose data, checked before the passes over the input."""
    if len(targets) > 1:
        try:
            check_destination(options.output, options.force, [options.input])
        except MatcliError as e:
            return str(e)
        return None
    path = targets[0].path.absolute()
    if path.is_dir():
        return f"output {path} is a folder; give a file path for one dimension"
    if path.exists() and not options.force:
        return f"output file {path} exists; choose another -o, or pass --force to replace it"
    return None


def _stage_outputs(
    stack: contextlib.ExitStack,
    options: TruncateOptions,
    targets: list[Target],
    rotation_path: Path | None,
) -> dict[Path, Path]:
    """Temporary paths for every final path; all appear together, or none."""
    paths = [t.path for t in targets] + ([rotation_path] if rotation_path else [])
    if len(targets) == 1:
        return {p: stack.enter_context(staged_file(p, options.force)) for p in paths}
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
            # A tensor with one entry per embedding row loses the skipped rows: as [rows, row bytes].
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
    rotation_file = _stored_tensor(
        path, "rotation", "--rotation", "the rotation.safetensors written by --pca"
    )
    if (
        rotation_file.dim != dim
        or rotation_file.rows != dim
        or "mean" not in rotation_file.passthrough.tensors
    ):
        raise MatcliError(
            f"--rotation {path} is for {rotation_file.rows}-d inputs with a mean vector; the input has {dim} dimensions"
        )
    fitted, wanted = rotation_file.header.metadata.get("pre_norm", "none"), pre_norm or "none"
    if fitted != wanted:
        # The rotation only fits vectors prepared the way its own fit saw them.
        fix = f"add --pre-norm {fitted}" if wanted == "none" else f"remove --pre-norm {wanted}"
        raise MatcliError(
            f"--rotation {path} was fitted with {_pre_norm_flag(fitted)} but this run has {_pre_norm_flag(wanted)}; {fix}"
        )
    matrix = np.concatenate([x for _, x in rotation_file.chunks(dim)])
    mean = np.frombuffer(rotation_file.read_tensor_bytes("mean"), dtype=np.float32)
    return transform.Rotation(matrix, mean)


def _pre_norm_flag(value: str) -> str:
    return "no --pre-norm" if value == "none" else f"--pre-norm {value}"


def load_ranges(path: Path, dim: int) -> transform.Int8Ranges:
    """int8 ranges written by an earlier --quantize int8 run (e.g. the corpus's, for queries)."""
    ranges_file = _stored_tensor(
        path,
        "int8_ranges",
        "--ranges",
        "the .safetensors written by an earlier --quantize int8 run",
    )
    if (ranges_file.rows, ranges_file.dim) != (2, dim):
        raise MatcliError(
            f"--ranges {path} holds int8_ranges of shape [{ranges_file.rows}, {ranges_file.dim}], not [2, {dim}]: "
            f"it was written for --dims {ranges_file.dim}; use that dimension, or the ranges of a --dims {dim} run"
        )
    return transform.Int8Ranges.from_array(next(ranges_file.chunks(2))[1])
