"""What the training methods (QAT, OmniQuant) share: the model with fake-quantized Linears,
the token windows of --data, and the way a trained model becomes the parent's plan."""

from __future__ import annotations

from dataclasses import dataclass
from importlib import import_module
from pathlib import Path
from typing import Protocol

import torch

from matcli.arch import Architecture
from matcli.checkpoint.plan import Plan
from matcli.checkpoint.reader import ModelFolder
from matcli.checkpoint.safetensors_file import torch_dtype
from matcli.data import data_digest
from matcli.devices import pick_device as pick_device  # re-exported for older imports
from matcli.errors import MatcliError
from matcli.options import QuantizeOptions
from matcli.quant.parent import info_from_options
from matcli.train.fakequant import FakeQuantLinear, wrap_linears
from matcli.train.parent_plan import QuantTargets, quant_targets
from matcli.train.registry import Progress


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


class TrainedMethod(Protocol):
    """What the module of a training method provides (see `registry._trained`)."""

    def train(
        self, options: QuantizeOptions, progress: Progress
    ) -> tuple[QuantModel, dict[int, float], dict] | None:
        """(trained model, final loss per width, report); None on torchrun ranks but 0."""

    def export_inputs(self, qm: QuantModel) -> tuple[dict, dict]:
        """(quantized Linears as codes/scale/zero, dense tensors the training changed)."""

    def planned_work(self, options: QuantizeOptions, windows: int) -> dict:
        """What training would do with `windows` token windows: tokens_to_train and the
        method's own counts, for the dry run's report."""


def plan_trained(
    name: str, module: str, options: QuantizeOptions, progress: Progress
) -> Plan | None:
    """Train with method `name` (its code in `module`), then the plan of the trained parent."""
    from matcli.train.export import plan_parent

    method: TrainedMethod = import_module(module)
    result = method.train(options, progress)
    if result is None:
        return None
    qm, _, report = result
    quantized, dense = method.export_inputs(qm)
    report = {"method": name, **report, "data": str(options.data)}
    report["data_sha256"] = data_digest(options.data)
    info = info_from_options(options, name)
    return plan_parent(qm.targets, quantized, dense, info, options, report)


def dry_run_trained(name: str, module: str, options: QuantizeOptions) -> Plan:
    """The parent's layout (its shapes do not depend on training) and what training would do."""
    from matcli.train.rtn import streamed_plan

    windows = training_windows(options, options.model)
    plan = streamed_plan(options, info_from_options(options, name))
    work = import_module(module).planned_work(options, len(windows))
    plan.report = {"method": name, "windows_available": len(windows), **work}
    return plan


def load_quant_model(
    options: QuantizeOptions, device: torch.device, shard: bool = False
) -> QuantModel:
    """The model in float32 on `device`; on the CPU when it is to be sharded (FSDP places
    each shard on its own device, so no rank ever holds the whole model there)."""
    from transformers import AutoModelForCausalLM

    from matcli.checkpoint.nonfinite import check_finite

    targets = quant_targets(options)
    for module in targets.modules:  # NaN would poison every update: refused before loading
        check_finite(targets.folder.read(module + ".weight"), module + ".weight", 0)
    scale_dtype = torch_dtype(targets.folder.tensors[targets.modules[0] + ".weight"].dtype)
    model = AutoModelForCausalLM.from_pretrained(options.model, dtype=torch.float32)
    if not shard:
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


def decoder_layers(qm: QuantModel) -> torch.nn.ModuleList:
    """The model's list of decoder layers, where the family's layouts put it."""
    for path in qm.arch.layers_modules:
        try:
            layers = qm.model.get_submodule(path)
        except AttributeError:
            continue
        if isinstance(layers, torch.nn.ModuleList):
            return layers
    raise MatcliError(
        f"cannot find the decoder layers of this {qm.arch.name} model "
        f"(tried {qm.arch.layers_modules})"
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
