"""`matcli quantize --method qat`: quantization-aware fine-tuning with the MatQuant objective.

Loss per step (paper Eq. 7): sum over r in R of lambda_r * next-token cross-entropy of the
model whose quantized Linears are S(Q(W, c), r). Q is recomputed from the same weights for
every r of a step, so all widths see one Q. Optional co-distillation (`8->2`, `8->4;2`): the
teacher width's logits (detached) are a target for the students, KL added to their
cross-entropy with equal weight, or replacing it (`--distill-only`). With `--teacher original`
each width's cross-entropy becomes (or is mixed with) the KL to a frozen copy of the dense model,
whose forward runs once per micro-batch for every width (`matcli.train.distill`).

Runs alone or under torchrun (FSDP2 or DDP from torch; NCCL on GPUs, gloo on CPUs): every
rank takes its share of each global batch and rank 0 writes the parent.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from matcli.devices import pick_device
from matcli.errors import MatcliError
from matcli.options import QuantizeOptions, parse_distill
from matcli.quant.widths import widest_first
from matcli.train.distill import (
    OriginalTeacher,
    distillation_loss,
    load_teacher,
    teacher_report,
)
from matcli.train.fakequant import at_bits
from matcli.train.registry import Progress
from matcli.train.training import (
    QuantModel,
    decoder_layers,
    load_quant_model,
    training_windows,
    unwrapped_state,
)

QAT_LR = 1e-5  # paper App. B: linear warmup to 1e-5, then cosine decay
PAPER_WARMUP = 150


class MultiWidthLoss:
    """The MatQuant objective of one micro-batch, width by width.

    Each width's forward is followed at once by its backward, so only one width's autograd
    graph is alive at a time (summing the losses first would keep all of them); the
    gradients add up to those of the summed loss. Under DDP the gradients are all-reduced
    only on the last backward of a step.
    """

    def __init__(
        self,
        qm: QuantModel,
        options: QuantizeOptions,
        model: nn.Module,
        teacher: OriginalTeacher | None = None,
    ):
        self.model = model  # the transformers model, or its DDP wrapper
        self.original = teacher  # --teacher original: the frozen dense model
        self.teacher_weight = options.teacher_weight
        self.wrapped = qm.wrapped
        weight_of = dict(zip(options.train_bits, options.loss_weights))
        self.widths = widest_first(weight_of)
        self.weights = [weight_of[bits] for bits in self.widths]
        self.teacher, self.students = (
            parse_distill(options.distill) if options.distill else (None, [])
        )
        self.distill_only = options.distill_only

    def _logits(self, input_ids: torch.Tensor, bits: int) -> torch.Tensor:
        with at_bits(self.wrapped, bits):
            return self.model(input_ids=input_ids).logits[:, :-1].float()

    def backward(
        self,
        input_ids: torch.Tensor,
        scale: float,
        sync: Callable[[bool], contextlib.AbstractContextManager],
    ) -> dict[int, float]:
        """Accumulate scale * gradient of the objective; return each width's loss.

        `sync(last)` gives the context of each backward: DDP's no_sync unless `last`.
        """
        targets = input_ids[:, 1:].reshape(-1)
        # Once per micro-batch, shared by every width.
        original = self.original.log_probs(input_ids) if self.original is not None else None
        teacher = None
        if self.teacher is not None and self.teacher not in self.widths:
            with torch.no_grad():
                teacher = self._logits(input_ids, self.teacher)
        losses = {}
        for i, (bits, weight) in enumerate(zip(self.widths, self.weights)):
            with sync(i == len(self.widths) - 1):
                logits = self._logits(input_ids, bits)
                flat = logits.reshape(-1, logits.shape[-1])
                loss = self._label_loss(flat, targets, original)
                if bits in self.students and teacher is not None:
                    kl = F.kl_div(
                        F.log_softmax(flat, -1),
                        F.log_softmax(teacher.reshape(flat.shape), -1),
                        log_target=True,
                        reduction="batchmean",
                    )
                    loss = kl if self.distill_only else loss + kl
                if bits == self.teacher:
                    teacher = logits.detach()
                (weight * scale * loss).backward()
            losses[bits] = loss.item()
        return losses

    def _label_loss(
        self, flat: torch.Tensor, targets: torch.Tensor, original: torch.Tensor | None
    ) -> torch.Tensor:
        """Cross-entropy on the labels, mixed with the KL to the original model if given."""
        if original is None:
            return F.cross_entropy(flat, targets)
        return distillation_loss(
            flat, original, targets, self.teacher_weight, self.original.temperature
        )

    def teacher_report(self) -> dict | None:
        """What the run distilled from, for the report (None: no --teacher)."""
        if self.original is None:
            return None
        return teacher_report(self.teacher_weight, self.original.temperature)


def warmup_steps(options: QuantizeOptions) -> int:
    """--warmup-steps, by default the paper's 150 or a fifth of the steps if fewer."""
    if options.warmup_steps is not None:
        return options.warmup_steps
    return min(PAPER_WARMUP, options.steps // 5)


def lr_schedule(options: QuantizeOptions, warmup: int) -> Callable[[int], float]:
    """The learning-rate factor of each step: linear warmup, then cosine decay or constant."""
    cosine = (options.schedule or "cosine") == "cosine"

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if not cosine:
            return 1.0
        progress = (step - warmup) / max(1, options.steps - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor


def state_dir(options: QuantizeOptions) -> Path:
    """Where checkpoints of an unfinished run live: beside the output, removed on success."""
    out = options.output.absolute()
    return out.parent / f"{out.name}.train-state"


def batch_indices(num_windows: int, step: int, global_batch: int, seed: int) -> torch.Tensor:
    """Window indices of one global batch: a fresh seeded permutation every epoch."""
    start = step * global_batch
    out = []
    while len(out) < global_batch:
        epoch, offset = divmod(start + len(out), num_windows)
        order = torch.randperm(
            num_windows, generator=torch.Generator().manual_seed(seed * 100_003 + epoch)
        )
        out += order[offset : offset + global_batch - len(out)].tolist()
    return torch.tensor(out)


def planned_work(options: QuantizeOptions, windows: int) -> dict:
    """What a run would do, for the dry run (one process; torchrun multiplies the batch)."""
    per_step = options.batch_size * options.grad_accum * options.seq_len
    return {
        "tokens_to_train": options.steps * per_step,
        "steps": options.steps,
        "tokens_per_step": per_step,
    }


def train(
    options: QuantizeOptions, progress: Progress = lambda done, total, losses: None
) -> tuple[QuantModel, dict[int, float], dict] | None:
    """Train; return (QuantModel, final losses, report) for export (None on ranks > 0)."""
    run = QatRun(options)
    history = run.steps(progress)
    result = run.result(history)
    if result is not None and options.learn_scales != "off":
        result[2]["learned_scales"] = {"train": options.learn_scales, "lr": options.scale_lr}
    return result


class QatRun:
    """One QAT run on this process: its rank, the model, the data, optimizer and schedule."""

    def __init__(self, options: QuantizeOptions):
        self._join(options)
        # The text first: a bad --data file is refused before the model is loaded.
        self.windows = training_windows(options, options.model)
        self.qm = load_quant_model(options, self.device, shard=self.sharded)
        self._choose_trainable()
        self.model = _distribute(self.qm, options, self.device, self.world)
        # After sharding: this rank's shards.
        self.params = [p for p in self.qm.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(_param_groups(self.qm, options))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lr_schedule(options, warmup_steps(options))
        )
        self.objective = MultiWidthLoss(
            self.qm, options, self.model, load_teacher(options, self.device)
        )
        self.global_batch = options.batch_size * options.grad_accum * self.world

    def _join(self, options) -> None:
        """This process's place in the run (alone, or a torchrun rank) and its seed; also
        the start of `matcli nest`'s run, which subclasses this one."""
        import torch.distributed as dist

        self.options = options
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.device = pick_device(options.device)
        if self.world > 1 and not dist.is_initialized():
            dist.init_process_group(backend="nccl" if self.device.type == "cuda" else "gloo")
        self.rank = dist.get_rank() if self.world > 1 else 0
        self.sharded = self.world > 1 and options.parallel == "fsdp"
        torch.manual_seed(options.seed)

    def _choose_trainable(self) -> None:
        """--trainable's weights; with --learn-scales also every quantized Linear's scales,
        and with `scales` those alone."""
        options = self.options
        if options.gradient_checkpointing:
            self.qm.model.gradient_checkpointing_enable()
        if options.trainable == "quantized" or options.learn_scales == "scales":
            for p in self.qm.model.parameters():
                p.requires_grad_(False)
        if options.trainable == "quantized" and options.learn_scales != "scales":
            for fq in self.qm.wrapped.values():
                fq.linear.weight.requires_grad_(True)
        if options.learn_scales != "off":
            for fq in self.qm.wrapped.values():
                fq.enable_learned_scale()

    def steps(self, progress: Progress) -> dict[int, float]:
        """Every step left; saves the state every --save-every steps and when asked to stop.
        The last step's loss per width."""
        options, history = self.options, {}
        start = self._restore() if options.resume else self._start_afresh()
        with _stop_requests() as stop:
            for step in range(start, options.steps):
                history = self._step(step)
                done = step + 1
                progress(done, options.steps, history)
                stopping = _any_rank(stop.requested, self.world, self.device)
                if stopping or (options.save_every and done % options.save_every == 0):
                    self._save(done)
                if stopping:
                    raise MatcliError(
                        f"interrupted after step {done} of {options.steps}; the training state "
                        f"is in {state_dir(options)}: run the same command with --resume to "
                        "continue",
                        exit_code=130,
                    )
        return history

    def _start_afresh(self) -> int:
        if state_dir(self.options).exists() and self.rank == 0:
            shutil.rmtree(state_dir(self.options))
        return 0

    def _step(self, step: int) -> dict[int, float]:
        """One optimizer step on this rank's share of global batch `step`; its mean loss per
        width."""
        options = self.options
        indices = batch_indices(len(self.windows), step, self.global_batch, options.seed)
        mine = indices.view(options.grad_accum, self.world, options.batch_size)[:, self.rank]
        sums: dict[int, float] = {}
        for micro in range(options.grad_accum):
            with self._autocast():
                losses = self.objective.backward(
                    self.windows[mine[micro]].to(self.device),
                    1 / options.grad_accum,
                    self._sync(last_micro=micro == options.grad_accum - 1),
                )
            for bits, value in losses.items():
                sums[bits] = sums.get(bits, 0.0) + value / options.grad_accum
        torch.nn.utils.clip_grad_norm_(self.params, options.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return sums

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.options.precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _sync(self, last_micro: bool) -> Callable[[bool], contextlib.AbstractContextManager]:
        """The context of each width's backward. DDP all-reduces only on a step's last
        backward; FSDP reduce-scatters every backward (skipping it would keep whole,
        unsharded gradients)."""

        def sync(last_width: bool) -> contextlib.AbstractContextManager:
            if isinstance(self.model, nn.parallel.DistributedDataParallel) and not (
                last_micro and last_width
            ):
                return self.model.no_sync()
            return contextlib.nullcontext()

        return sync

    def result(self, history: dict[int, float]) -> tuple[QuantModel, dict[int, float], dict] | None:
        """Rank 0's (model with the full weights, final losses, report); None elsewhere."""
        import torch.distributed as dist

        if self.sharded:
            self.qm.gathered = _full_model_state(self.qm)
        if self.world > 1:
            dist.barrier()
        if self.rank != 0:
            return None
        options = self.options
        report = {
            "steps": options.steps,
            "global_batch": self.global_batch,
            "tokens_seen": options.steps * self.global_batch * options.seq_len,
            "parallel": f"{options.parallel}, {self.world} processes"
            if self.world > 1
            else "one process",
            "final_losses": {f"int{b}": round(v, 5) for b, v in history.items()},
        }
        if (teacher := self.objective.teacher_report()) is not None:
            report["teacher"] = teacher
        return self.qm, history, report

    def _save(self, step: int) -> None:
        """Trainable weights, optimizer and scheduler state and the step, written atomically
        by rank 0. torch's distributed state-dict API gathers them whole, however they are
        sharded, so a run can resume with any number of processes and either --parallel."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

        weights, optimizer_state = get_state_dict(
            self.qm.model,
            self.optimizer,
            options=StateDictOptions(full_state_dict=True, cpu_offload=True),
        )
        if self.rank != 0:
            return
        trainable = {n for n, p in self.qm.model.named_parameters() if p.requires_grad}
        state = {
            "step": step,
            "params": {n: t for n, t in weights.items() if n in trainable},
            "optimizer": optimizer_state,
            "scheduler": self.scheduler.state_dict(),
            "options": self.options.model_dump(mode="json"),
            "global_batch": self.global_batch,
        }
        folder = state_dir(self.options)
        tmp = folder.with_name(folder.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        torch.save(state, tmp / "state.pt")
        shutil.rmtree(folder, ignore_errors=True)
        tmp.rename(folder)

    def _restore(self) -> int:
        """The saved state loaded into the model, optimizer and schedule; the step to go on
        from."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

        path = state_dir(self.options) / "state.pt"
        if not path.exists():
            raise MatcliError(
                f"--resume: no saved training state at {path}; start without --resume"
            )
        state = torch.load(path, map_location="cpu", weights_only=True)
        _check_resumable(self.options, state, self.global_batch)
        set_state_dict(
            self.qm.model,
            self.optimizer,
            model_state_dict=state["params"],
            optim_state_dict=state["optimizer"],
            options=StateDictOptions(full_state_dict=True, strict=False),
        )
        self.scheduler.load_state_dict(state["scheduler"])
        return int(state["step"])


def _param_groups(qm: QuantModel, options: QuantizeOptions) -> list[dict]:
    """AdamW's groups: the trainable weights (--lr, --weight-decay), and the learned scales'
    log-gains (--scale-lr, no decay: decay would pull them back to the MinMax scale)."""
    weights, gains = [], []
    for name, p in qm.model.named_parameters():
        if p.requires_grad:
            (gains if name.endswith("scale_log_gain") else weights).append(p)
    groups = [{"params": gains, "lr": options.scale_lr, "weight_decay": 0.0}] if gains else []
    if weights:
        groups.insert(
            0, {"params": weights, "lr": options.lr or QAT_LR, "weight_decay": options.weight_decay}
        )
    return groups


def _check_resumable(options: QuantizeOptions, state: dict, global_batch: int) -> None:
    """How the global batch is split (processes, --batch-size, --grad-accum, --parallel) may
    change; the options and the global batch itself (it fixes the data order) may not."""
    free = ("resume", "force", "dry_run", "batch_size", "grad_accum", "parallel")
    saved, now = dict(state["options"]), options.model_dump(mode="json")
    for key in free:
        saved.pop(key, None)
        now.pop(key, None)
    if saved != now:
        changed = sorted(k for k in now if saved.get(k) != now[k])
        raise MatcliError(
            f"--resume: options differ from the interrupted run ({', '.join(changed)}); "
            "use the same command"
        )
    if state["global_batch"] != global_batch:
        raise MatcliError(
            f"--resume: the interrupted run's global batch was {state['global_batch']} "
            f"sequences, now it is {global_batch} (--batch-size x --grad-accum x processes); "
            "keep it the same"
        )


def _any_rank(flag: bool, world: int, device: torch.device) -> bool:
    """True if any rank has the flag. A Ctrl-C reaches the ranks at slightly different moments;
    saving is a collective under FSDP, so every rank must decide to stop at the same step."""
    if world == 1:
        return flag
    import torch.distributed as dist

    value = torch.tensor([float(flag)], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def _distribute(
    qm: QuantModel, options: QuantizeOptions, device: torch.device, world: int
) -> nn.Module:
    """The model every rank runs: itself alone; under torchrun wrapped in DDP, or sharded with
    FSDP2 (one unit per decoder layer, so only one layer is ever whole on a device)."""
    if world == 1:
        return qm.model
    if options.parallel == "ddp":
        return nn.parallel.DistributedDataParallel(
            qm.model, device_ids=[device.index] if device.type == "cuda" else None
        )
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(device.type, (world,))
    for layer in decoder_layers(qm):
        fully_shard(layer, mesh=mesh)
    fully_shard(qm.model, mesh=mesh)
    return qm.model


def _full_model_state(qm: QuantModel) -> dict[str, torch.Tensor]:
    """Every weight gathered from the shards, layer by layer, on rank 0's CPU (empty elsewhere)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(
        qm.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
    )


class _StopFlag:
    requested = False


@contextlib.contextmanager
def _stop_requests():
    """Ctrl-C or SIGTERM during training asks to stop after the current step: the state is
    saved at a step boundary, never halfway through an optimizer update."""
    import signal

    flag = _StopFlag()

    def request(signum, frame):
        flag.requested = True

    previous = {sig: signal.signal(sig, request) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield flag
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def finish(options: QuantizeOptions) -> None:
    """Forget the training state once the parent is written."""
    shutil.rmtree(state_dir(options), ignore_errors=True)


def export_inputs(qm: QuantModel) -> tuple[dict, dict]:
    """(quantized Linears as codes/scale/zero, every other trained tensor) for the parent."""
    if qm.gathered is not None:
        quantized = {
            name: fq.export(
                qm.gathered[name + ".linear.weight"], qm.gathered.get(name + ".scale_log_gain")
            )
            for name, fq in qm.wrapped.items()
        }
    else:
        quantized = {name: fq.export() for name, fq in qm.wrapped.items()}
    state = unwrapped_state(qm)
    dense = {
        n: t
        for n, t in state.items()
        if n in qm.source.tensors and n.removesuffix(".weight") not in quantized
    }
    return quantized, dense
