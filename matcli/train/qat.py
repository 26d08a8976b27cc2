"""`matcli quantize --method qat`: quantization-aware fine-tuning with the MatQuant objective.

Loss per step (paper Eq. 7): sum over r in R of lambda_r * next-token cross-entropy of the
model whose quantized Linears are S(Q(W, c), r). Q is recomputed from the same weights for
every r of a step, so all widths see one Q. Optional co-distillation (`8->2`, `8->4;2`): the
teacher width's logits (detached) are a target for the students, KL added to their
cross-entropy with equal weight, or replacing it (`--distill-only`).

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

from matcli.errors import MatcliError
from matcli.quant.fakequant import at_bits
from matcli.quant.training import (
    QuantModel,
    decoder_layers,
    load_quant_model,
    pick_device,
    training_windows,
    unwrapped_state,
)
from matcli.options import QuantizeOptions, parse_distill

QAT_LR = 1e-5  # paper App. B: linear warmup to 1e-5, then cosine decay
PAPER_WARMUP = 150


class MultiWidthLoss:
    """The MatQuant objective of one micro-batch, width by width.

    Each width's forward is followed at once by its backward, so only one width's autograd
    graph is alive at a time (summing the losses first kept three graphs: 3.6x the memory of
    a plain step); the gradients add up to those of the summed loss. Under DDP the
    gradients are all-reduced only on the last backward of a step.
    """

    def __init__(self, qm: QuantModel, options: QuantizeOptions, model: nn.Module):
        self.model = model  # the transformers model, or its DDP wrapper
        self.wrapped = qm.wrapped
        order = sorted(range(len(options.train_bits)), key=lambda i: -options.train_bits[i])
        self.widths = [options.train_bits[i] for i in order]
        self.weights = [options.loss_weights[i] for i in order]
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
        teacher = None
        if self.teacher is not None and self.teacher not in self.widths:
            with torch.no_grad():
                teacher = self._logits(input_ids, self.teacher)
        losses = {}
        for i, (bits, weight) in enumerate(zip(self.widths, self.weights)):
            with sync(i == len(self.widths) - 1):
                logits = self._logits(input_ids, bits)
                flat = logits.reshape(-1, logits.shape[-1])
                loss = F.cross_entropy(flat, targets)
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


def _schedule(options: QuantizeOptions, warmup: int) -> Callable[[int], float]:
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


def _batch_indices(num_windows: int, step: int, global_batch: int, seed: int) -> torch.Tensor:
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


def train_qat(
    options: QuantizeOptions, on_step: Callable[[int, dict[int, float]], None] = lambda s, l: None
):
    """Train; return (QuantModel, final losses, report) for export (None on ranks > 0)."""
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    device = pick_device(options.device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    rank = dist.get_rank() if world > 1 else 0
    torch.manual_seed(options.seed)
    qm = load_quant_model(options, device)
    windows = training_windows(options, options.model)
    if options.gradient_checkpointing:
        qm.model.gradient_checkpointing_enable()
    if options.trainable == "quantized":
        for p in qm.model.parameters():
            p.requires_grad_(False)
        for fq in qm.wrapped.values():
            fq.linear.weight.requires_grad_(True)
    model = _distribute(qm, options, device, world)
    params = [p for p in qm.model.parameters() if p.requires_grad]  # after sharding: the shards
    optimizer = torch.optim.AdamW(
        params, lr=options.lr or QAT_LR, weight_decay=options.weight_decay
    )
    warmup = (
        options.warmup_steps
        if options.warmup_steps is not None
        else min(PAPER_WARMUP, options.steps // 5)
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _schedule(options, warmup))
    objective = MultiWidthLoss(qm, options, model)
    global_batch = options.batch_size * options.grad_accum * world
    start = _restore(options, qm, optimizer, scheduler, global_batch) if options.resume else 0
    if not options.resume and state_dir(options).exists() and rank == 0:
        shutil.rmtree(state_dir(options))
    autocast = (
        torch.autocast(device.type, dtype=torch.bfloat16)
        if options.precision == "bf16"
        else contextlib.nullcontext()
    )
    history: dict[int, float] = {}
    with _stop_requests() as stop:
        for step in range(start, options.steps):
            indices = _batch_indices(len(windows), step, global_batch, options.seed)
            mine = indices.view(options.grad_accum, world, options.batch_size)[:, rank]
            sums: dict[int, float] = {}
            for micro in range(options.grad_accum):
                last_micro = micro == options.grad_accum - 1

                def sync(last_width: bool, last_micro=last_micro):
                    # DDP all-reduces only on a step's last backward. FSDP reduce-scatters
                    # every backward: skipping it would keep whole, unsharded gradients.
                    if isinstance(model, nn.parallel.DistributedDataParallel) and not (
                        last_micro and last_width
                    ):
                        return model.no_sync()
                    return contextlib.nullcontext()

                with autocast:
                    losses = objective.backward(
                        windows[mine[micro]].to(device), 1 / options.grad_accum, sync
                    )
                for bits, value in losses.items():
                    sums[bits] = sums.get(bits, 0.0) + value / options.grad_accum
            torch.nn.utils.clip_grad_norm_(params, options.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            history = sums
            on_step(step + 1, sums)
            done = step + 1
            stopping = _any_rank(stop.requested, world, device)
            if stopping or (options.save_every and done % options.save_every == 0):
                _save(options, qm, optimizer, scheduler, done, rank, global_batch)
            if stopping:
                raise MatcliError(
                    f"interrupted after step {done} of {options.steps}; the training state is in {state_dir(options)}: "
                    "run the same command with --resume to continue",
                    exit_code=130,
                )
    if world > 1 and options.parallel == "fsdp":
        qm.gathered = _full_model_state(qm)
    if world > 1:
        dist.barrier()
    if rank != 0:
        return None
    report = {
        "method": "qat",
        "steps": options.steps,
        "global_batch": global_batch,
        "tokens_seen": options.steps * global_batch * options.seq_len,
        "parallel": f"{options.parallel}, {world} processes" if world > 1 else "one process",
        "final_losses": {f"int{b}": round(v, 5) for b, v in history.items()},
    }
    return qm, history, report


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


def _save(
    options: QuantizeOptions,
    qm: QuantModel,
    optimizer,
    scheduler,
    step: int,
    rank: int,
    global_batch: int,
) -> None:
    """Trainable weights, optimizer and scheduler state and the step, written atomically by
    rank 0. torch's distributed state-dict API gathers them whole, however they are sharded,
    so a run can resume with any number of processes and either --parallel."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    weights, optimizer_state = get_state_dict(
        qm.model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
    )
    if rank != 0:
        return
    trainable = {n for n, p in qm.model.named_parameters() if p.requires_grad}
    folder = state_dir(options)
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    state = {
        "step": step,
        "params": {n: t for n, t in weights.items() if n in trainable},
        "optimizer": optimizer_state,
        "scheduler": scheduler.state_dict(),
        "options": options.model_dump(mode="json"),
        "global_batch": global_batch,
    }
    torch.save(state, tmp / "state.pt")
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)


def _restore(
    options: QuantizeOptions, qm: QuantModel, optimizer, scheduler, global_batch: int
) -> int:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

    path = state_dir(options) / "state.pt"
    if not path.exists():
        raise MatcliError(f"--resume: no saved training state at {path}; start without --resume")
    state = torch.load(path, map_location="cpu", weights_only=True)
    # How the global batch is split (processes, --batch-size, --grad-accum, --parallel) may
    # change; the global batch itself fixes the data order, so it may not.
    free = ("resume", "force", "dry_run", "batch_size", "grad_accum", "parallel")
    saved, now = dict(state["options"]), options.model_dump(mode="json")
    for key in free:
        saved.pop(key, None)
        now.pop(key, None)
    if saved != now:
        changed = sorted(k for k in now if saved.get(k) != now[k])
        raise MatcliError(
            f"--resume: options differ from the interrupted run ({', '.join(changed)}); use the same command"
        )
    saved_batch = state.get("global_batch", global_batch)  # states saved before it was recorded
    if saved_batch != global_batch:
        raise MatcliError(
            f"--resume: the interrupted run's global batch was {saved_batch} sequences, now it is {global_batch} "
            "(--batch-size x --grad-accum x processes); keep it the same"
        )
    set_state_dict(
        qm.model,
        optimizer,
        model_state_dict=state["params"],
        optim_state_dict=state["optimizer"],
        options=StateDictOptions(full_state_dict=True, strict=False),
    )
    scheduler.load_state_dict(state["scheduler"])
    return int(state["step"])


def finish(options: QuantizeOptions) -> None:
    """Forget the training state once the parent is written."""
    shutil.rmtree(state_dir(options), ignore_errors=True)


def export_inputs(qm: QuantModel) -> tuple[dict, dict]:
    """(quantized Linears as codes/scale/zero, every other trained tensor) for the parent."""
    if qm.gathered is not None:
        quantized = {
            name: fq.export(qm.gathered[name + ".linear.weight"]) for name, fq in qm.wrapped.items()
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
