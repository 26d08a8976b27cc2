"""`matcli nest`: fine-tune a dense decoder into a MatFormer, so `extract` cuts usable models.

1. Reorder: each FFN's neurons sorted by importance on --data (`importance.neuron_ranking`,
   what `matcli reorder` writes), in memory.
2. Train every granularity together (docs/architecture.md, decision 28): per micro-batch the
   original model's logits are computed once (no grad) and every granularity of the student,
   whose FFNs are prefix views of the same weights (`nested.NestedFfn`), is pulled towards
   them: loss_g = w_g * (a * T^2 KL(teacher_T || student_T) + (1 - a) * CE(labels)). Each
   granularity's backward follows its forward, so one autograd graph is alive at a time.
3. Write a dense checkpoint of the same family, its config.json recording the granularities
   per layer (`granularities.NestedInfo`), which extract, --budget and inspect read.

The loop (steps, seeds, data order, save/--resume, Ctrl-C, torchrun DDP/FSDP2) is QAT's
(`matcli.train.qat.QatRun`); this module supplies the model and the objective.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from matcli.arch import Architecture, resolve
from matcli.checkpoint.plan import OutputCheckpoint, Plan, copy_tensor
from matcli.checkpoint.reader import ModelFolder
from matcli.checkpoint.safetensors_file import torch_dtype
from matcli.checkpoint.writer import OutputTensor
from matcli.data import data_digest
from matcli.errors import MatcliError
from matcli.matformer.granularities import NestedInfo, layer_widths
from matcli.matformer.nested import NestedFfn, permute_neurons
from matcli.matformer.source import read_source
from matcli.options import NestOptions
from matcli.quant.parent import CONFIG_KEY
from matcli.train.distill import OriginalTeacher, distillation_loss, load_original, teacher_report
from matcli.train.export import _in_memory
from matcli.train.qat import QatRun, _distribute, lr_schedule, warmup_steps
from matcli.train.registry import Progress
from matcli.train.training import training_windows

NEST_LR = 1e-4
TRAINED_LABEL = "nest (trained)"


@dataclass
class NestInput:
    """The checked source: its folder, family and each layer's width per granularity."""

    folder: ModelFolder
    arch: Architecture
    widths: list[list[int]]


def checked_input(options: NestOptions) -> NestInput:
    """Everything about the source checked before a model is loaded or a byte written."""
    folder = ModelFolder(options.model)
    arch = resolve(folder.config, list(folder.tensors))
    if not any(arch.linear_kind(n.removesuffix(".weight")) == "ffn" for n in folder.tensors):
        ffn = arch.family.ffn
        raise MatcliError(
            f"{options.model} has no FFN for nest to nest: the {arch.name} family data names "
            f"{ffn.up} and {ffn.down} (matcli/arch/families/{arch.name}.yaml), and no tensor "
            "matches them"
        )
    if arch.family.lm_head is None:
        raise MatcliError(
            f"nest distils a causal language model's logits; {arch.name} models have no "
            "language-model head"
        )
    source = read_source(folder)  # dense, config and FFN weights consistent
    return NestInput(folder, arch, layer_widths(options.widths, source.full_widths))


def label(fraction: float) -> str:
    """A granularity's name in progress lines and reports: ffn0.25, ffn1."""
    return f"ffn{fraction:g}"


class NestedDistillation:
    """The objective of one micro-batch, granularity by granularity (the `backward` that
    QatRun's step calls)."""

    def __init__(self, nested: NestedFfn, teacher: OriginalTeacher, model: nn.Module, options):
        self.nested, self.teacher, self.model = nested, teacher, model
        self.labels = [label(f) for f in options.widths]
        self.weights = options.loss_weights or [1.0] * len(options.widths)
        self.teacher_weight, self.temperature = options.teacher_weight, options.teacher_temperature

    def teacher_report(self) -> dict:
        """nest always distils from the original model."""
        return teacher_report(self.teacher_weight, self.temperature)

    def backward(
        self,
        input_ids: torch.Tensor,
        scale: float,
        sync: Callable[[bool], contextlib.AbstractContextManager],
    ) -> dict[str, float]:
        """Accumulate scale * gradient of the summed granularity losses; each one's loss."""
        labels = input_ids[:, 1:].reshape(-1)
        target = self.teacher.log_probs(input_ids)  # once per batch, for every granularity
        losses = {}
        for g in reversed(range(len(self.labels))):  # the full width first
            with sync(g == 0), self.nested.at(g):
                logits = self.model(input_ids=input_ids).logits[:, :-1].float().flatten(0, 1)
                loss = distillation_loss(
                    logits, target, labels, self.teacher_weight, self.temperature
                )
                (self.weights[g] * scale * loss).backward()
            losses[self.labels[g]] = loss.item()
        return losses


@dataclass
class NestedModel:
    """The student as QatRun's helpers see it: the model, its family, and after FSDP the
    full weights gathered on rank 0."""

    model: nn.Module
    arch: Architecture
    gathered: dict[str, torch.Tensor] | None = None


class NestRun(QatRun):
    """A QAT run whose model is the nested student and whose objective is the nested
    distillation; stepping, saving, resuming and the torchrun modes are QatRun's."""

    def __init__(self, options: NestOptions, source: NestInput):
        self._join(options)
        self.windows = training_windows(options, options.model)  # bad text: refused first
        student, teacher = self._models(source)
        self.qm = NestedModel(student, source.arch)
        self.model = _distribute(self.qm, options, self.device, self.world)
        self.params = [p for p in student.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(
            self.params, lr=options.lr or NEST_LR, weight_decay=options.weight_decay
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lr_schedule(options, warmup_steps(options))
        )
        self.objective = NestedDistillation(self.nested, teacher, self.model, options)
        self.global_batch = options.batch_size * options.grad_accum * self.world

    def _models(self, source: NestInput) -> tuple[nn.Module, OriginalTeacher]:
        """The student (reordered, nested; on the CPU when FSDP is to shard it) and the
        frozen original as the teacher."""
        from transformers import AutoModelForCausalLM

        options = self.options
        student = AutoModelForCausalLM.from_pretrained(options.model, dtype=torch.float32)
        student.config.use_cache = False
        self.nested = NestedFfn(student, source.widths)
        if not options.resume:  # a resumed run loads its trained (reordered) weights
            permute_neurons(self.nested, self._ranking())
        if options.gradient_checkpointing:
            student.gradient_checkpointing_enable()
        if not self.sharded:
            student.to(self.device)
        return student, load_original(options.model, self.device, options.teacher_temperature)

    def _ranking(self) -> dict[int, list[int]]:
        """Each layer's neurons by importance, measured by rank 0 and shared, so every rank
        permutes alike."""
        from matcli.matformer.importance import neuron_ranking

        options = self.options
        ranking = None
        if self.rank == 0:
            ranking = neuron_ranking(
                options.model, options.data, options.seq_len, options.calibration_tokens
            )
        if self.world > 1:
            import torch.distributed as dist

            if self.device.type == "cuda":
                torch.cuda.set_device(self.device)
            shared = [ranking]
            dist.broadcast_object_list(shared, src=0)
            ranking = shared[0]
        return ranking

    def result(self, history: dict) -> tuple[NestedModel, dict, dict] | None:
        out = super().result(history)
        if out is None:
            return None
        model, history, report = out
        report["final_losses"] = {name: round(v, 5) for name, v in history.items()}
        return model, history, report


def nested_config(options: NestOptions, source: NestInput) -> dict:
    """The source's config.json with the nested model's record under `matcli`."""
    how = "all granularities every step" + (
        f", KL x {options.teacher_weight:g} + labels x {1 - options.teacher_weight:g}"
        if options.teacher_weight < 1
        else ", KL"
    )
    info = NestedInfo(
        granularities=options.widths,
        trained_ffn_widths=source.widths,
        reordered=True,
        method=f"nest: {how}",
        teacher="original",
    )
    return {**source.folder.config, CONFIG_KEY: info.model_dump()}


def output_tensors(source: NestInput, state: dict[str, torch.Tensor] | None) -> list[OutputTensor]:
    """Every tensor of the source, trained (from `state`, in the source's dtype) where the
    model has it; `state` None: the layout only (the dry run)."""
    tensors = []
    for name, info in sorted(source.folder.tensors.items()):
        if state is None:
            tensors.append(
                OutputTensor(name, info.dtype, info.shape, lambda: iter(()), TRAINED_LABEL)
            )
        elif name in state:
            tensors.append(_in_memory(name, state[name].to(torch_dtype(info.dtype)), TRAINED_LABEL))
        elif source.arch.linear_kind(name.removesuffix(".weight")) == "ffn":
            raise MatcliError(
                f"the trained model has no {name}; its weights cannot be written back under "
                "the checkpoint's names",
                exit_code=1,
            )
        else:  # not a parameter of the loaded model (a tied or unused tensor): as it was
            tensors.append(copy_tensor(source.folder, name))
    return tensors


def nest_plan(options: NestOptions, source: NestInput, tensors, report: dict) -> Plan:
    output = OutputCheckpoint(
        name="",
        config=nested_config(options, source),
        tensors=tensors,
        metadata={"matcli.role": "nested"},
    )
    return Plan(
        command="nest",
        source=source.folder,
        outputs=[output],
        max_shard_bytes=options.max_shard_size,
        chunk_bytes=options.chunk_size,
        report=report,
    )


def plan_nest(options: NestOptions, progress: Progress) -> Plan | None:
    """Reorder, train, then the plan of the nested checkpoint (None on ranks but 0)."""
    source = checked_input(options)
    run = NestRun(options, source)
    result = run.result(run.steps(progress))
    if result is None:
        return None
    trained, _, report = result
    state = trained.gathered if trained.gathered is not None else trained.model.state_dict()
    report = {
        "granularities": options.widths,
        **report,
        "data": str(options.data),
        "data_sha256": data_digest(options.data),
    }
    return nest_plan(options, source, output_tensors(source, state), report)


def dry_run_nest(options: NestOptions) -> Plan:
    """The output's layout and config, and what training would do; nothing is trained."""
    source = checked_input(options)
    windows = training_windows(options, options.model)
    per_step = options.batch_size * options.grad_accum * options.seq_len
    report = {
        "granularities": options.widths,
        "windows_available": len(windows),
        "steps": options.steps,
        "tokens_per_step": per_step,
        "tokens_to_train": options.steps * per_step,
        "granularity_forwards_per_step": len(options.widths),
    }
    return nest_plan(options, source, output_tensors(source, None), report)
