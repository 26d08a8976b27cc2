"""What QAT and OmniQuant share: devices, the model with fake-quantized Linears, data, export."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from matcli.arch import Architecture
from matcli.checkpoint.reader import ModelFolder
from matcli.checkpoint.safetensors_file import torch_dtype
from matcli.errors import MatcliError
from matcli.quant.fakequant import FakeQuantLinear, wrap_linears
from matcli.quant.parent_plan import QuantTargets, quant_targets
from matcli.options import QuantizeOptions


def pick_device(name: str) -> torch.device:
    """`auto` takes the local GPU under torchrun (LOCAL_RANK), else the first, else the CPU."""
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?|mps", name):
        raise MatcliError(f"--device {name!r} is not a device: use auto, cpu, cuda, cuda:N or mps")
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        return torch.device("cpu")
    if name.startswith("cuda"):
        index = int(name.partition(":")[2] or 0)
        if not torch.cuda.is_available() or index >= torch.cuda.device_count():
            found = torch.cuda.device_count() if torch.cuda.is_available() else 0
            raise MatcliError(
                f"--device {name}: this machine has {found} CUDA device(s); use --device cpu or auto"
            )
    if name == "mps" and not torch.backends.mps.is_available():
        raise MatcliError("--device mps: no Apple GPU here; use --device cpu or auto")
    return torch.device(name)


@dataclass
class QuantModel:
    """A transformers model whose chosen Linears are FakeQuantLinear."""

    model: torch.nn.Module
    targets: QuantTargets
    wrapped: dict[str, FakeQuantLinear]
    # After sharded (FSDP) training: the full weights gathered on rank 0, which the live
    # model only holds in shards. None: read the weights from `model`.
    gathered: dict[str, torch.Tensor] | None = None

    @property
    def arch(self) -> Architecture:
        return self.targets.arch

    @property
    def source(self) -> ModelFolder:
        return self.targets.folder


def load_quant_model(options: QuantizeOptions, device: torch.device) -> QuantModel:
    """The model in float32 on `device`; on the CPU when it is to be sharded (FSDP places
    each shard on its own device, so no rank ever holds the whole model there)."""
    from transformers import AutoModelForCausalLM

    targets = quant_targets(options)
    scale_dtype = torch_dtype(targets.folder.tensors[targets.modules[0] + ".weight"].dtype)
    model = AutoModelForCausalLM.from_pretrained(options.model, dtype=torch.float32)
    if not will_shard(options):
        model = model.to(device)
    model.config.use_cache = False
    wrapped = wrap_linears(
        model, targets.modules, targets.scheme, scale_dtype, options.extra_precision
    )
    if len(wrapped) != len(targets.modules):
        missing = sorted(set(targets.modules) - set(wrapped))
        raise MatcliError(
            f"{missing[0]} is not an nn.Linear in the transformers model; check --layers"
        )
    return QuantModel(model, targets, wrapped)


def will_shard(options: QuantizeOptions) -> bool:
    return (
        options.method == "qat"
        and options.parallel == "fsdp"
        and int(os.environ.get("WORLD_SIZE", "1")) > 1
    )


def decoder_layers(qm: QuantModel) -> torch.nn.ModuleList:
    """The model's list of decoder layers, found from the family's layer templates."""
    for template in qm.arch.family.layers:
        try:
            layers = qm.model.get_submodule(template.split(".{layer}.")[0])
        except AttributeError:
            continue
        if isinstance(layers, torch.nn.ModuleList):
            return layers
    raise MatcliError(
        f"cannot find the decoder layers of this {qm.arch.name} model (tried {list(qm.arch.family.layers)})"
    )


def training_windows(options: QuantizeOptions, tokenizer_path: Path) -> torch.Tensor:
    from transformers import AutoTokenizer

    from matcli.data import read_texts, token_windows

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)
    return token_windows(
        tokenizer, read_texts(options.data, options.text_field), options.seq_len, options.max_tokens
    )


def unwrapped_state(qm: QuantModel) -> dict[str, torch.Tensor]:
    """The model's tensors under the checkpoint's names (the FakeQuantLinear level removed)."""
    state = {}
    full = qm.gathered if qm.gathered is not None else qm.model.state_dict()
    for name, tensor in full.items():
        parts = name.split(".")
        for i, part in enumerate(parts):
            if part == "linear" and ".".join(parts[:i]) in qm.wrapped:
                parts.pop(i)
                break
        state[".".join(parts)] = tensor
    return state
