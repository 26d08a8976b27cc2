"""The dense baseline of docs/results.md: plain fine-tuning with QAT's exact loop and data.

    python scripts/finetune_dense.py MODEL OUT --data FILE --steps N --seq-len L \
        --batch-size B --lr X

Same optimizer (AdamW), schedule (linear warmup + cosine), clipping, seed and batch order as
`matcli quantize --method qat`, without quantization, so that the cost of quantization is
not hidden by what fine-tuning on the same text alone does to perplexity.
"""

from __future__ import annotations

import argparse
import os
import shutil
from pathlib import Path

import torch
import torch.nn.functional as F

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    from transformers import AutoModelForCausalLM

    from matcli.options import QuantizeOptions
    from matcli.train.qat import QAT_LR, batch_indices, lr_schedule, warmup_steps
    from matcli.train.training import training_windows

    parser = argparse.ArgumentParser()
    parser.add_argument("model", type=Path)
    parser.add_argument("output", type=Path)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--lr", type=float, default=QAT_LR)
    parser.add_argument("--warmup-steps", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    options = QuantizeOptions(
        model=args.model,
        output=args.output,
        method="qat",
        data=args.data,
        steps=args.steps,
        seq_len=args.seq_len,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        warmup_steps=args.warmup_steps,
    )
    torch.manual_seed(options.seed)
    windows = training_windows(options, options.model)
    model = AutoModelForCausalLM.from_pretrained(options.model, dtype=torch.float32)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=options.lr, weight_decay=options.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_schedule(options, warmup_steps(options))
    )
    for step in range(options.steps):
        batch = windows[batch_indices(len(windows), step, options.batch_size, options.seed)]
        logits = model(input_ids=batch).logits[:, :-1].float()
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, options.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        print(f"step {step + 1}/{options.steps} loss {loss.item():.4f}", flush=True)
    staging = args.output.with_name(
        args.output.name + ".tmp"
    )  # the folder appears complete or not at all
    shutil.rmtree(staging, ignore_errors=True)
    model.to(torch.bfloat16).save_pretrained(staging)
    for name in (
        "tokenizer.json",
        "tokenizer_config.json",
        "chat_template.jinja",
        "generation_config.json",
    ):
        if (args.model / name).exists():
            shutil.copyfile(args.model / name, staging / name)
    shutil.rmtree(args.output, ignore_errors=True)
    staging.rename(args.output)


if __name__ == "__main__":
    main()
