"""Truncating an embedding model: a sentence-transformers folder that outputs d dimensions.

The model's own files are copied byte for byte and its module list (modules.json) gains, at
the end: an optional LayerNorm (--pre-norm layer_norm), a Dense projection D -> d without
activation (the first d rows of the identity, or of a PCA rotation), and a Normalize module
(unless --no-renormalize). Stock sentence-transformers loads the result and its outputs are
exactly the truncated (rotated, renormalized) outputs of the original model.

The folder follows sentence-transformers' own conventions, so that a re-save by the library
changes nothing: `truncate_dim` is recorded in config_sentence_transformers.json (a loaded
model reports it), the added module folders are named `{idx}_{ClassName}` as `save()` names
them, and modules.json spells each added module's type as the library that saved the input did.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np

from matcli.arch import config_int
from matcli.checkpoint.links import resolve_inside
from matcli.errors import MatcliError
from matcli.inputs import read_json, read_json_object
from matcli.mrl.transform import Rotation
from matcli.mrl.truncate import check_pca_rows, load_rotation, write_rotation
from matcli.mrl.writers import SafetensorsWriter
from matcli.options import TruncateOptions

# The type of each added module in modules.json: (the alias every version imports, the class
# path that sentence-transformers >= 6 writes when it saves). An input saved by a version that
# writes class paths gets class paths, so that a re-save by it rewrites nothing; an older input
# keeps the alias, which the version that loads it knows.
MODULE_TYPES = {
    "Dense": (
        "sentence_transformers.models.Dense",
        "sentence_transformers.base.modules.dense.Dense",
    ),
    "Normalize": (
        "sentence_transformers.models.Normalize",
        "sentence_transformers.base.modules.normalize.Normalize",
    ),
    "LayerNorm": (
        "sentence_transformers.models.LayerNorm",
        "sentence_transformers.sentence_transformer.modules.layer_norm.LayerNorm",
    ),
}
CLASS_PATH_PREFIXES = ("sentence_transformers.base.", "sentence_transformers.sentence_transformer.")
# What sentence-transformers >= 6 adds to the config of a Dense and a Normalize module.
FEATURE_NAMES = {
    "module_input_name": "sentence_embedding",
    "module_output_name": "sentence_embedding",
}
ST_CONFIG = "config_sentence_transformers.json"
FILE_ONLY_OPTIONS = {
    "key": "--key",
    "dtype": "--dtype",
    "format": "--format",
    "skip_bad_rows": "--skip-bad-rows",
    "quantize": "--quantize",
    "ranges": "--ranges",
}
LEGACY_POOLING_FLAGS = (
    "pooling_mode_cls_token",
    "pooling_mode_mean_tokens",
    "pooling_mode_max_tokens",
    "pooling_mode_mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens",
    "pooling_mode_lasttoken",
)


def read_modules(folder: Path) -> list[dict]:
    """modules.json, checked: a non-empty list of objects whose `type` and `path` are strings,
    each path inside the model folder."""
    path = folder / "modules.json"
    if not path.is_file():
        raise MatcliError(
            f"{folder} has no modules.json: matcli truncates sentence-transformers model folders "
            "(save the model with SentenceTransformer.save), or embedding files"
        )
    modules = read_json(resolve_inside(folder, path), "modules.json")
    if not isinstance(modules, list) or not modules:
        raise MatcliError(f"{path} must list the model's modules")
    for module in modules:
        if not isinstance(module, dict) or not all(
            isinstance(module.get(key, ""), str) for key in ("type", "path")
        ):
            raise MatcliError(
                f"{path}: every module must be an object with a string type and path; "
                "fix modules.json"
            )
        relative = module.get("path", "")
        if os.path.isabs(relative) or ".." in Path(relative).parts:
            raise MatcliError(
                f"{path} puts a module at {relative!r}, outside the model folder; refusing to "
                "read it (fix modules.json)"
            )
    return modules


def embedding_dim(folder: Path, modules: list[dict]) -> int:
    """The dimension the module pipeline outputs, from each module's config."""
    dim = None
    for module in modules:
        kind = module.get("type", "").rsplit(".", 1)[-1]
        if kind not in ("Transformer", "Pooling", "Dense"):
            continue
        config_path = resolve_inside(folder, folder / module.get("path", "") / "config.json")
        if not config_path.is_file():
            raise MatcliError(f"{config_path} is missing: the {kind} module needs its config")
        config = read_json_object(config_path, f"the {kind} module's config")
        if kind == "Transformer":
            dim = config_int(config, "hidden_size", 1, default=None) or config_int(
                config, "d_model", 1, default=None
            )
        elif kind == "Pooling":
            dim = _pooling_dim(config)
        else:
            dim = config_int(config, "out_features", 1)
    if not dim:
        raise MatcliError(
            f"cannot tell the embedding dimension of {folder} from its modules; matcli knows "
            "Transformer, Pooling and Dense"
        )
    return dim


def _pooling_dim(config: dict) -> int:
    """Token dim x number of pooling modes; both the legacy (pooling_mode_* flags,
    word_embedding_dimension) and the current (pooling_mode, embedding_dimension) configs."""
    token_dim = config_int(config, "embedding_dimension", 1, default=None) or config_int(
        config, "word_embedding_dimension", 1
    )
    mode = config.get("pooling_mode")
    if mode is not None:
        if not isinstance(mode, (str, list)) or not mode:
            raise MatcliError(
                f"pooling config: pooling_mode must be a mode or a list of modes, not {mode!r}"
            )
        return token_dim * (1 if isinstance(mode, str) else len(mode))
    return token_dim * (sum(bool(config.get(m)) for m in LEGACY_POOLING_FLAGS) or 1)


class ModelTruncationPlan:
    """What truncate-embeddings writes for a model folder: one model per --dims (the folder
    itself for one, d{dim} subfolders for several), and with --pca the rotation; the runner's
    `WritingPlan`. A --pca rotation is fitted when writing: it encodes every --data text."""

    def __init__(
        self,
        options: TruncateOptions,
        modules: list[dict],
        dim: int,
        rotation: Rotation | None,
        texts: list[str],
        st_config: dict,
    ):
        self.options, self.modules, self.dim = options, modules, dim
        self.st_config = st_config  # config_sentence_transformers.json, gaining truncate_dim
        self.rotation = rotation  # from --rotation; --pca fits it on `texts` when writing
        self.texts = texts
        self.warnings: list[str] = []
        self.names = {d: "" if len(options.dims) == 1 else f"d{d}" for d in options.dims}
        self.copied_bytes = _copied_bytes(options.input)

    def describe(self) -> dict:
        return self._report(self.options.output)

    def summary(self, destination: Path) -> dict:
        return self._report(destination)

    def _report(self, root: Path) -> dict:
        outputs = [
            {"dim": d, "path": str(root / n if n else root), "format": "sentence-transformers"}
            for d, n in self.names.items()
        ]
        report = {
            "input": str(self.options.input),
            "source_dim": self.dim,
            "outputs": outputs,
            "warnings": self.warnings,
        }
        if self.options.pca:  # stored embeddings of the original model need the same transform
            report["rotation"] = str(root / "rotation.safetensors")
        return report

    def total_bytes(self) -> int:
        return sum(self.copied_bytes + 4 * d * self.dim for d in self.names)

    def write(self, staging: Path, on_bytes: Callable[[int], None]) -> list[tuple[Path, dict]]:
        """Each model into its folder under `staging`; their manifest fields."""
        options = self.options
        rotation = _fit_rotation(options, self.dim, self.texts) if options.pca else self.rotation
        written = []
        for d, name in self.names.items():
            target = staging / name if name else staging
            written.append((target, self._write_model(target, d, rotation)))
            on_bytes(self.copied_bytes + 4 * d * self.dim)
        if options.pca:
            fitted_on = {"fitted_on": f"the outputs of {options.input} for --data {options.data}"}
            write_rotation(staging / "rotation.safetensors", rotation, options.pre_norm, fitted_on)
        return written

    def _write_model(self, target: Path, d: int, rotation: Rotation | None) -> dict:
        """Copy the model, append the modules, record truncate_dim; the manifest fields."""
        options, dim = self.options, self.dim
        shutil.copytree(
            options.input, target, dirs_exist_ok=True, ignore=shutil.ignore_patterns(".*")
        )
        class_paths = saved_with_class_paths(self.modules)
        added = []
        if options.pre_norm == "layer_norm":
            added.append(("LayerNorm", lambda p: _layer_norm_module(p, dim)))
        added.append(("Dense", lambda p: _dense_module(p, dim, d, rotation, class_paths)))
        if options.renormalize:
            added.append(("Normalize", lambda p: _normalize_module(p, class_paths)))
        new_modules = list(self.modules)
        for kind, write in added:
            idx = len(new_modules)
            path = f"{idx}_{kind}"  # as SentenceTransformer.save names a module's folder
            write(target / path)
            module_type = MODULE_TYPES[kind][class_paths]
            new_modules.append({"idx": idx, "name": str(idx), "path": path, "type": module_type})
        # Formatted as SentenceTransformer.save writes these two files.
        (target / "modules.json").write_text(json.dumps(new_modules, indent=2))
        st_config = self.st_config | {"truncate_dim": d}
        (target / ST_CONFIG).write_text(json.dumps(st_config, indent=2, sort_keys=True))
        return {
            "input": str(options.input),
            "source_dim": dim,
            "dim": d,
            "renormalized": options.renormalize,
            "pre_norm": options.pre_norm,
            "rotation": "pca" if rotation is not None else None,
        }

    def close(self) -> None:
        """Nothing is held open."""


def plan_model_truncation(options: TruncateOptions) -> ModelTruncationPlan:
    """Check the options against the model folder and load a --rotation (or the texts a --pca
    rotation is fitted on), so that a dry run reports every problem a real run would meet."""
    _refuse_file_options(options)
    modules = read_modules(options.input)
    dim = embedding_dim(options.input, modules)
    for d in options.dims:
        if d > dim:
            raise MatcliError(
                f"--dims {d} is larger than the model's {dim} dimensions; choose 1..{dim}"
            )
    rotation = load_rotation(options.rotation, dim, options.pre_norm) if options.rotation else None
    texts = _pca_texts(options) if options.pca else []
    st_config = _read_st_config(options.input)
    return ModelTruncationPlan(options, modules, dim, rotation, texts, st_config)


def _refuse_file_options(options: TruncateOptions) -> None:
    given = [flag for name, flag in FILE_ONLY_OPTIONS.items() if getattr(options, name)]
    if given:
        verb, pronoun = ("apply", "them") if len(given) > 1 else ("applies", "it")
        raise MatcliError(
            f"{', '.join(given)} {verb} to embeddings files, not to a model folder (its outputs "
            f"are float vectors); drop {pronoun}"
        )


def saved_with_class_paths(modules: list[dict]) -> bool:
    """Whether the input's modules.json spells types as class paths (saved by
    sentence-transformers >= 6) rather than as `sentence_transformers.models.X` aliases."""
    return any(str(m.get("type", "")).startswith(CLASS_PATH_PREFIXES) for m in modules)


def _read_st_config(folder: Path) -> dict:
    """The model-level config (prompts, similarity function, versions), or {} for a folder saved
    before sentence-transformers 2 wrote one."""
    path = folder / ST_CONFIG
    if not path.is_file():
        return {}
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise MatcliError(f"{path} is not valid JSON: {e}") from e
    if not isinstance(config, dict):
        raise MatcliError(f"{path} must hold a JSON object")
    return config


def _copied_bytes(folder: Path) -> int:
    """Bytes of the model's own files, which each output copies (hidden entries are not)."""
    files = [p for p in folder.rglob("*") if p.is_file()]
    visible = [p for p in files if not any(s.startswith(".") for s in p.relative_to(folder).parts)]
    return sum(p.stat().st_size for p in visible)


def _pca_texts(options: TruncateOptions) -> list[str]:
    """The non-empty lines of --data, enough of them to fit the kept components."""
    if options.data is None:
        raise MatcliError(
            "--pca on a model fits the rotation on its embeddings of texts: add --data FILE "
            "(or --rotation from stored embeddings)"
        )
    from matcli.data import read_texts

    texts = [
        line for text in read_texts(options.data) for line in text.splitlines() if line.strip()
    ]
    what = f"--data {options.data} (non-empty lines)"
    check_pca_rows(len(texts), max(options.dims), options.pca_center, what)
    return texts


def _fit_rotation(options: TruncateOptions, dim: int, texts: list[str]) -> Rotation:
    """PCA of the model's embeddings of `texts` (layer-normalized first with --pre-norm)."""
    from sentence_transformers import SentenceTransformer

    from matcli.mrl.transform import PcaFit, layer_norm

    model = SentenceTransformer(str(options.input), device="cpu")
    embeddings = model.encode(texts, convert_to_numpy=True)
    fit = PcaFit(dim)
    fit.add(layer_norm(embeddings) if options.pre_norm == "layer_norm" else embeddings)
    return fit.finish(center=options.pca_center)[0]


def _dense_module(
    path: Path, dim: int, d: int, rotation: Rotation | None, class_paths: bool
) -> None:
    """y = W x + b with W = the first d columns of the rotation, transposed (the first d rows
    of the identity without a rotation)."""
    path.mkdir()
    if rotation is None:
        weight = np.eye(dim, dtype=np.float32)[:d]
        bias = None
    else:
        weight = np.ascontiguousarray(rotation.rotation[:, :d].T, dtype=np.float32)
        bias = (
            (-(rotation.mean @ rotation.rotation[:, :d])).astype(np.float32)
            if np.any(rotation.mean)
            else None
        )
    config = {
        "in_features": dim,
        "out_features": d,
        "bias": bias is not None,
        "activation_function": "torch.nn.modules.linear.Identity",
    } | (FEATURE_NAMES if class_paths else {})
    _module_config(path, config)
    extras = [("linear.bias", "F32", (d,), bias.tobytes())] if bias is not None else []
    writer = SafetensorsWriter(
        path / "model.safetensors", "linear.weight", (d, dim), "float32", {"format": "pt"}, extras
    )
    writer.write(weight)
    writer.close()


def _layer_norm_module(path: Path, dim: int) -> None:
    """LayerNorm over the full vector with unit gain and zero bias (what nomic v1.5 does)."""
    path.mkdir()
    _module_config(path, {"dimension": dim})
    extras = [("norm.bias", "F32", (dim,), np.zeros(dim, dtype=np.float32).tobytes())]
    writer = SafetensorsWriter(
        path / "model.safetensors", "norm.weight", (dim,), "float32", {"format": "pt"}, extras
    )
    writer.write(np.ones(dim, dtype=np.float32))
    writer.close()


def _normalize_module(path: Path, class_paths: bool) -> None:
    """No weights; sentence-transformers >= 6 saves the feature names it reads and writes."""
    path.mkdir()
    if class_paths:
        _module_config(path, FEATURE_NAMES)


def _module_config(path: Path, config: dict) -> None:
    """A module's config.json, formatted as sentence-transformers' Module.save_config writes it."""
    (path / "config.json").write_text(json.dumps(config, indent=4))
