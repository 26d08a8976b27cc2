"""Plan, then stream: the shared shape of every model-free command.

A command turns headers and config into a `Plan` (every output tensor with dtype, shape and
how to produce it; config edits; files to copy; shards). Every validation error is raised
while planning, before a byte is written. `--dry-run` renders the plan; `execute` streams it
into a staging folder and renames it into place.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from matcli import __version__
from matcli.checkpoint.aux_files import copy_aux_files
from matcli.checkpoint.defaults import DEFAULT_CHUNK_BYTES, DEFAULT_MAX_SHARD_BYTES
from matcli.checkpoint.manifest import describe_input, source_digest
from matcli.checkpoint.reader import ModelFolder
from matcli.checkpoint.writer import (
    CheckpointWriter,
    OutputTensor,
    ShardLayout,
    write_in_lockstep,
)

# Measured resident size of a matcli process before any tensor work: with torch imported
# (quantize, slice --format dense), and without it (extract and slice move bytes with numpy).
PROCESS_BASE_BYTES = 250 * 1024 * 1024
PROCESS_BASE_BYTES_WITHOUT_TORCH = 80 * 1024 * 1024
# Bytes of working memory per byte of input chunk: the chunk, its decoded codes and the
# transformed output (benchmarks/*_benchmark.py measure ~3.5 for slice and extract).
WORKING_SET_PER_CHUNK_BYTE = 4
# Chunks the reader keeps while writing several outputs in lockstep: a Linear's codes, scale
# and zero point, plus one spare; each later output finds them instead of re-reading.
LOCKSTEP_CACHE_ENTRIES = 4


@dataclass
class OutputCheckpoint:
    """One model folder the plan writes (several when slicing to several widths)."""

    name: str  # folder inside the destination; "" means the destination itself
    config: dict
    tensors: list[OutputTensor]
    metadata: dict[str, str] = field(default_factory=dict)
    # Config entries known only once the tensors are written (e.g. the share of weights in
    # the extra-precision bucket): {section: {key: value}}, merged into those config sections.
    measured: Callable[[], dict[str, dict]] = dict


@dataclass
class Plan:
    command: str
    source: ModelFolder
    outputs: list[OutputCheckpoint]
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES
    chunk_bytes: int = DEFAULT_CHUNK_BYTES
    warnings: list[str] = field(default_factory=list)
    # Command-specific facts for the dry run and the final summary (e.g. parameter counts).
    report: dict = field(default_factory=dict)
    uses_torch: bool = True

    def layout(self, output: OutputCheckpoint) -> ShardLayout:
        return ShardLayout.plan(output.tensors, self.max_shard_bytes)

    @property
    def lockstep(self) -> bool:
        """Whether the outputs can be written chunk by chunk together (same tensor list)."""
        names = [[t.name for t in o.tensors] for o in self.outputs]
        return len(self.outputs) > 1 and all(n == names[0] for n in names)

    def peak_memory_estimate(self) -> int:
        cached = LOCKSTEP_CACHE_ENTRIES if self.lockstep else 0
        base = PROCESS_BASE_BYTES if self.uses_torch else PROCESS_BASE_BYTES_WITHOUT_TORCH
        return base + (WORKING_SET_PER_CHUNK_BYTE + cached) * self.chunk_bytes

    def total_bytes(self) -> int:
        return sum(t.nbytes for o in self.outputs for t in o.tensors)

    def write(self, staging: Path, on_bytes: Callable[[int], None]) -> list[tuple[Path, dict]]:
        return _write(self, staging, on_bytes)

    def summary(self, destination: Path) -> dict:
        """One row per output folder, from its final config."""
        rows = []
        for o in self.outputs:
            folder = destination / o.name if o.name else destination
            size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
            rows.append(
                {"path": str(folder), "size_bytes": size, "matcli": o.config.get("matcli", {})}
            )
        return {
            "command": self.command,
            "outputs": rows,
            "warnings": self.warnings,
            "report": self.report,
        }

    def close(self) -> None:
        self.source.close()

    def describe(self) -> dict:
        """The plan as JSON-able data: what --dry-run prints."""
        outputs = []
        for o in self.outputs:
            layout = self.layout(o)
            transforms: dict[str, dict] = {}
            for t in o.tensors:
                entry = transforms.setdefault(t.transform, {"tensors": 0, "bytes": 0})
                entry["tensors"] += 1
                entry["bytes"] += t.nbytes
            outputs.append(
                {
                    "folder": o.name,
                    "tensors": len(o.tensors),
                    "bytes": sum(layout.shard_bytes()),
                    "shards": dict(zip(layout.file_names(), layout.shard_bytes())),
                    "transforms": transforms,
                    "config_changes": config_diff(self.source.config, o.config),
                    "tensor_list": [
                        {
                            "name": t.name,
                            "dtype": t.dtype,
                            "shape": list(t.shape),
                            "transform": t.transform,
                        }
                        for t in o.tensors
                    ],
                }
            )
        return {
            "command": self.command,
            "input": str(self.source.path),
            "outputs": outputs,
            "copied_files": [p.as_posix() for p in self.source.aux],
            "estimated_peak_memory_bytes": self.peak_memory_estimate(),
            "warnings": self.warnings,
            "report": self.report,
        }


def copy_tensor(folder: ModelFolder, name: str, new_name: str | None = None) -> OutputTensor:
    """An output tensor that is the input tensor, byte for byte (copied by the kernel)."""
    info = folder.tensors[name]

    def chunks():
        yield folder.byte_range(name, 0, info.nbytes)

    label = "copy" if new_name in (None, name) else "copy (renamed)"
    return OutputTensor(new_name or name, info.dtype, info.shape, chunks, label)


def config_diff(before: dict, after: dict, prefix: str = "") -> list[dict]:
    """Changed keys as {key, before, after}; nested objects are compared key by key."""
    changes = []
    for key in sorted(set(before) | set(after)):
        path = f"{prefix}{key}"
        b, a = before.get(key, _ABSENT), after.get(key, _ABSENT)
        if isinstance(b, dict) and isinstance(a, dict):
            changes += config_diff(b, a, path + ".")
        elif b != a:
            changes.append({"key": path, "before": _show(b), "after": _show(a)})
    return changes


_ABSENT = object()


def _show(value: object) -> object:
    return "(absent)" if value is _ABSENT else value


def write_config(folder: Path, config: dict) -> None:
    (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def _write(plan: Plan, staging: Path, on_bytes: Callable[[int], None]) -> list[tuple[Path, dict]]:
    """Stream every output into its folder under `staging`; the manifest fields of each."""
    if plan.lockstep:
        plan.source.cache_entries = LOCKSTEP_CACHE_ENTRIES
    folders = [staging / o.name for o in plan.outputs]
    provenance = {
        "format": "pt",
        "matcli.version": __version__,
        "matcli.command": plan.command,
        "matcli.source_sha256": source_digest(plan.source),
    }
    writers = []
    for folder, output in zip(folders, plan.outputs):
        folder.mkdir(parents=True, exist_ok=True)
        metadata = {**provenance, **output.metadata}
        writers.append(CheckpointWriter(folder, plan.layout(output), metadata, on_bytes))
    if plan.lockstep:
        write_in_lockstep(writers, [o.tensors for o in plan.outputs])
    else:
        for writer, output in zip(writers, plan.outputs):
            for tensor in output.tensors:
                writer.write_tensor(tensor)
    return [_finish(plan, w, f, o) for w, f, o in zip(writers, folders, plan.outputs)]


def _finish(
    plan: Plan, writer: CheckpointWriter, folder: Path, output: OutputCheckpoint
) -> tuple[Path, dict]:
    """Close the shards, write config and auxiliary files; the folder's manifest fields."""
    writer.finish()
    for section, entries in output.measured().items():
        output.config[section] = {**output.config.get(section, {}), **entries}
    write_config(folder, output.config)
    copy_aux_files(plan.source.path, folder, plan.source.aux)
    written = [
        {"name": w.name, "size": w.size, "header_sha256": w.header_sha256} for w in writer.written
    ]
    fields = {"input": describe_input(plan.source)}
    if plan.report:
        fields["report"] = plan.report
    fields["output"] = {"folder": output.name, "files": written}
    return folder, fields
