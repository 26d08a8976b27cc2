"""Perplexity of a dense model, a sliced folder, or a parent sliced in memory."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from matcli.arch import config_section, config_text, families, resolve
from matcli.arch.shapes import check_shapes
from matcli.checkpoint.reader import ModelFolder
from matcli.errors import MatcliError
from matcli.quant import ct_format
from matcli.quant.parent import CONFIG_KEY
from matcli.quant.reference import dequantized_state_dict
from matcli.quant.widths import check_width


def check_model_folder(path: Path) -> None:
    """The model folder checked as every command checks it (shard headers, index, links,
    config.json, shapes against it) before transformers reads a file of it. A family matcli
    does not know is left to transformers, if transformers knows it (eval loads any causal LM).
    """
    from transformers import CONFIG_MAPPING

    with ModelFolder(path) as folder:
        config_section(folder.config, CONFIG_KEY)  # eval reports the widths it records
        model_type = config_text(folder.config, "model_type", default=None)
        if model_type not in {f for family in families().values() for f in family.model_types}:
            if model_type not in CONFIG_MAPPING:
                raise MatcliError(
                    f"{path}: config.json model_type {model_type!r} is not a model transformers "
                    "knows; fix config.json"
                )
            return
        arch = resolve(folder.config, list(folder.tensors))
        text_config = folder.text_config(arch.family.text_config)
        shapes = {name: info.shape for name, info in folder.tensors.items()}
        check_shapes(arch, text_config, arch.num_layers(text_config), shapes)


def load_model(path: Path, bits: int | None = None, extra_precision: bool = False):
    """A float32 causal LM: loaded by stock transformers, or, with `bits`, a parent sliced in
    memory."""
    if bits is None:
        return pretrained(path)
    with ModelFolder(path) as folder:
        linears = ct_format.packed_linears(folder)
        if not linears:
            raise MatcliError(
                f"--bits needs a quantized parent; {path} is dense (evaluate it without --bits)"
            )
        check_width(bits, next(iter(linears.values())).scheme.bits, "--bits")
        config = {k: v for k, v in folder.config.items() if k != "quantization_config"}
        state = dequantized_state_dict(folder, bits, extra_precision)
    return model_from_state(config, state, str(path))


def load_view(
    path: Path,
    bits: int | None = None,
    ffn_config: str | None = None,
    skip_layers: str | None = None,
    extra_precision: bool = False,
):
    """The model eval measures: the folder as it is, its parent sliced to `bits`, or its
    MatFormer submodel `ffn_config` cut in memory."""
    if ffn_config is None:
        return load_model(path, bits, extra_precision)
    from matcli.matformer.inmemory import load_submodel

    return load_submodel(path, ffn_config, skip_layers)


def own_bits(path: Path) -> int | None:
    """The width a folder's config records (a parent's or a slice's), or None for dense."""
    from matcli.inputs import read_json_object

    info = read_json_object(path / "config.json", "config.json").get(CONFIG_KEY) or {}
    return info.get("bits") or info.get("parent_bits")


def pretrained(path: Path):
    """A float32 causal LM loaded by stock transformers, without its loading bar: stderr is
    matcli's (its progress, and an error's one line)."""
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging

    logging.disable_progress_bar()
    try:
        return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    finally:
        logging.enable_progress_bar()


def model_from_state(config: dict, state: dict[str, torch.Tensor], what: str):
    """A float32 causal LM built from a config dict and a complete state dict."""
    from transformers import AutoConfig, AutoModelForCausalLM

    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**config), dtype=torch.float32)
    missing, unexpected = model.load_state_dict(
        {k: v.float() if v.is_floating_point() else v for k, v in state.items()}, strict=False
    )
    tied = {k for k in missing if "lm_head" in k}
    if unexpected or set(missing) - tied:
        raise MatcliError(
            f"{what}: weights do not fit the config (missing {sorted(set(missing) - tied)[:3]}, "
            f"unexpected {unexpected[:3]})"
        )
    model.tie_weights()
    return model.eval()


@torch.no_grad()
def perplexity(
    model, windows: torch.Tensor, batch_size: int = 4, device: torch.device | None = None
) -> float:
    """exp(mean next-token negative log-likelihood) over every predicted token of the windows."""
    if device is not None:
        model = model.to(device)
        windows = windows.to(device)
    total_nll, total_tokens = 0.0, 0
    for batch in windows.split(batch_size):
        total_nll += summed_nll(model(batch).logits, batch)
        total_tokens += batch[:, 1:].numel()
    return math.exp(total_nll / total_tokens)


def summed_nll(logits: torch.Tensor, batch: torch.Tensor) -> float:
    """The negative log-likelihood of every next token of `batch`, summed."""
    logits = logits[:, :-1].float()
    return torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1), reduction="sum"
    ).item()
