"""`eval --draft`: a smaller model (a MatQuant slice, a MatFormer submodel) as the speculative
draft of its target, measured with transformers' own assisted generation (no decoding loop of
ours), and the MatFormer paper's consistency of the two on held-out text.

How acceptance is counted (transformers returns neither number): greedy assisted generation
adds, per target forward pass, the draft tokens the target accepted plus one token of the
target's own (`_assisted_decoding`: `n_matches + 1`, also when cut at EOS or the length limit).
So over a generation, accepted = new tokens - target forward passes. The draft proposes one
token per forward pass of its own (`AssistedCandidateGenerator` calls the draft's `generate`,
which runs one forward per token), so proposed = draft forward passes. Both are counted with
forward hooks on the two models, during the assisted runs only.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from matcli.errors import MatcliError


@dataclass
class ForwardCount:
    """Forward passes of a module, counted by a hook while registered."""

    module: torch.nn.Module
    calls: int = 0
    _handle: object = field(default=None, repr=False)

    def __enter__(self) -> ForwardCount:
        self._handle = self.module.register_forward_hook(self._count)
        return self

    def __exit__(self, *exc) -> None:
        self._handle.remove()

    def _count(self, *args) -> None:
        self.calls += 1


def parameter_bytes(model: torch.nn.Module) -> int:
    """Bytes of the model's parameters, each tensor once (tied weights are one)."""
    return sum(p.numel() * p.element_size() for p in model.parameters())


def parameter_count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def share_weights(draft: torch.nn.Module, target: torch.nn.Module) -> int:
    """Make every draft parameter that equals the leading block of the target's parameter of the
    same name a view of it: what a slice leaves unquantized (embeddings, norms) and what a
    MatFormer submodel shares with its full model (attention, and the FFN prefix `[:m]` /
    `[:, :m]` when cut in memory) is then stored once. Returns the bytes shared."""
    targets = dict(target.named_parameters())
    shared = 0
    for name, p in draft.named_parameters():
        t = targets.get(name)
        if t is None or t.dtype != p.dtype or t.dim() != p.dim():
            continue
        if any(n > m for n, m in zip(p.shape, t.shape)):
            continue
        view = t.data[tuple(slice(0, n) for n in p.shape)]
        if view.device == p.device and torch.equal(view, p.data):
            p.data = view  # the same Parameter object, so tied weights stay tied
            shared += p.numel() * p.element_size()
    return shared


def check_same_vocabulary(target_tokenizer, draft_tokenizer, draft: Path) -> None:
    """Assisted generation compares token ids: the draft must speak the target's vocabulary."""
    mine, theirs = target_tokenizer.get_vocab(), draft_tokenizer.get_vocab()
    if mine != theirs:
        differ = len(set(mine.items()) ^ set(theirs.items()))
        raise MatcliError(
            f"--draft {draft}: its tokenizer differs from the target's ({len(theirs):,} vs "
            f"{len(mine):,} tokens, {differ:,} token/id pairs not in both); give a draft made "
            "from the same model (a slice or a submodel of it)"
        )
    if target_tokenizer.eos_token_id != draft_tokenizer.eos_token_id:
        raise MatcliError(
            f"--draft {draft}: its end-of-text token differs from the target's "
            f"({draft_tokenizer.eos_token_id} vs {target_tokenizer.eos_token_id}); give a draft "
            "made from the same model"
        )


def check_smaller(target, draft, target_bits: int | None, draft_bits: int | None) -> None:
    """A draft must cost less than its target: fewer parameters, or as many at fewer bits."""
    rows = [m.get_output_embeddings().weight.shape[0] for m in (target, draft)]
    if rows[0] != rows[1]:
        raise MatcliError(
            f"--draft predicts {rows[1]:,} tokens and the target {rows[0]:,}; give a draft made "
            "from the same model"
        )
    sizes = [parameter_count(target), parameter_count(draft)]
    bits = [math.inf if b is None else b for b in (target_bits, draft_bits)]
    if (sizes[1], bits[1]) >= (sizes[0], bits[0]):
        width = {math.inf: "dense"}
        raise MatcliError(
            f"--draft is not smaller than the target ({sizes[1]:,} parameters at "
            f"{width.get(bits[1], bits[1])} bits vs {sizes[0]:,} at "
            f"{width.get(bits[0], bits[0])}); give a slice with fewer bits (--draft-bits) or a "
            "submodel (--draft-ffn-config)"
        )


def held_out_prompts(tokenizer, texts: list[str], count: int, length: int) -> list[torch.Tensor]:
    """`count` prompts of `length` tokens, spread evenly over the text."""
    from matcli.data import token_windows

    windows = token_windows(tokenizer, texts, length, None)
    if len(windows) < count:
        raise MatcliError(
            f"--data holds {len(windows)} prompts of {length} tokens, fewer than --prompts "
            f"{count}; give more text, fewer --prompts or fewer --prompt-tokens"
        )
    picks = torch.linspace(0, len(windows) - 1, count).round().long()
    return [windows[i : i + 1] for i in picks.tolist()]


def _generate(model, prompt: torch.Tensor, new_tokens: int, draft=None):
    """Greedy new tokens of `model` (assisted by `draft`) and the seconds they took."""
    from transformers.utils import logging

    # transformers warns, from inside its own assisted generation, about the arguments it
    # passes the draft; matcli's stderr is for its own lines.
    level = logging.get_verbosity()
    logging.set_verbosity_error()
    try:
        start = time.perf_counter()
        out = model.generate(
            prompt,
            attention_mask=torch.ones_like(prompt),
            assistant_model=draft,
            do_sample=False,
            max_new_tokens=new_tokens,
            pad_token_id=model.generation_config.eos_token_id,
        )
        return out[0, prompt.shape[1] :], time.perf_counter() - start
    finally:
        logging.set_verbosity(level)


@torch.no_grad()
def assisted_generation(target, draft, prompts: list[torch.Tensor], new_tokens: int) -> dict:
    """Each prompt generated greedily without and with the draft (alternating, so both see the
    same machine load): tokens/s (median over prompts), identical outputs, acceptance."""
    draft.generation_config.num_assistant_tokens_schedule = "constant"  # no state across calls
    _generate(target, prompts[0], 2), _generate(target, prompts[0], 2, draft)  # warm-up
    plain_rates, assisted_rates = [], []
    identical = new = steps = 0
    with ForwardCount(target) as target_calls, ForwardCount(draft) as proposed:
        for prompt in prompts:
            plain, seconds = _generate(target, prompt, new_tokens)
            before = target_calls.calls  # the plain run's forwards are not target steps
            assisted, assisted_seconds = _generate(target, prompt, new_tokens, draft)
            steps += target_calls.calls - before
            new += len(assisted)
            identical += int(torch.equal(plain, assisted))
            plain_rates.append(len(plain) / seconds)
            assisted_rates.append(len(assisted) / assisted_seconds)
    plain_rate, assisted_rate = statistics.median(plain_rates), statistics.median(assisted_rates)
    accepted = new - steps
    return {
        "prompts": len(prompts),
        "identical_outputs": identical,
        "generated_tokens": new,
        "target_steps": steps,
        "proposed": proposed.calls,
        "accepted": accepted,
        "acceptance_rate": round(accepted / proposed.calls, 4) if proposed.calls else None,
        "accepted_per_step": round(accepted / steps, 4),
        "tokens_per_s_target": round(plain_rate, 2),
        "tokens_per_s_assisted": round(assisted_rate, 2),
        "speedup": round(assisted_rate / plain_rate, 3),
    }


@torch.no_grad()
def consistency(target, draft, windows: torch.Tensor, batch_size: int) -> dict:
    """The MatFormer paper's consistency, teacher-forced on held-out windows: the share of
    positions where the draft's greedy next token is the target's; and both perplexities."""
    from matcli.evaluate import summed_nll

    matches, nll = 0, [0.0, 0.0]
    for batch in windows.split(batch_size):
        logits = [model(batch).logits for model in (target, draft)]
        guesses = [x[:, :-1].argmax(-1) for x in logits]
        matches += (guesses[0] == guesses[1]).sum().item()
        nll = [total + summed_nll(x, batch) for total, x in zip(nll, logits)]
    positions = windows[:, 1:].numel()
    return {
        "positions": positions,
        "matches": matches,
        "consistency": round(matches / positions, 4),
        "perplexity": [round(math.exp(total / positions), 4) for total in nll],
    }


def _role(path: Path, bits: int | None, ffn_config: str | None, model) -> dict:
    return {
        "model": str(path),
        "bits": bits,
        "ffn_config": ffn_config,
        "parameters": parameter_count(model),
    }


def load_pair(options, device: torch.device | None):
    """The target and the draft that the options name, checked (same vocabulary, draft smaller)
    and with the weights they share stored once; and what each is."""
    from transformers import AutoTokenizer

    from matcli.evaluate import check_model_folder, load_view, own_bits

    draft_path = options.draft
    check_model_folder(draft_path)
    tokenizer = AutoTokenizer.from_pretrained(options.model)
    if draft_path.resolve() != options.model.resolve():
        check_same_vocabulary(tokenizer, AutoTokenizer.from_pretrained(draft_path), draft_path)
    target_bits = options.bits[0] if options.bits else None
    target = load_view(
        options.model, target_bits, options.ffn_config, options.skip_layers, options.extra_precision
    )
    draft = load_view(
        draft_path,
        options.draft_bits,
        options.draft_ffn_config,
        options.draft_skip_layers,
        options.extra_precision,
    )
    roles = [
        _role(options.model, target_bits or own_bits(options.model), options.ffn_config, target),
        _role(
            draft_path, options.draft_bits or own_bits(draft_path), options.draft_ffn_config, draft
        ),
    ]
    check_smaller(target, draft, roles[0]["bits"], roles[1]["bits"])
    if device is not None:
        target, draft = target.to(device), draft.to(device)
    shared = share_weights(draft, target)
    memory = {
        "target_bytes": parameter_bytes(target),
        "draft_bytes": parameter_bytes(draft),
        "shared_bytes": shared,
    }
    return tokenizer, target, draft, roles, memory


def measure_draft(options) -> dict:
    """`eval --draft`: the whole report."""
    from matcli.data import read_texts, token_windows
    from matcli.devices import pick_device

    device = pick_device(options.device)
    tokenizer, target, draft, roles, memory = load_pair(options, device)
    texts = read_texts(options.data)
    windows = token_windows(tokenizer, texts, options.seq_len, options.max_tokens).to(device)
    agreement = consistency(target, draft, windows, options.batch_size)
    for role, ppl in zip(roles, agreement.pop("perplexity")):
        role["perplexity"] = ppl
    prompts = held_out_prompts(tokenizer, texts, options.prompts, options.prompt_tokens)
    speculative = assisted_generation(
        target, draft, [p.to(device) for p in prompts], options.new_tokens
    )
    return {
        "model": str(options.model),
        "draft": str(options.draft),
        "data": str(options.data),
        "results": roles,
        "memory": memory,
        "consistency": agreement,
        "speculative": {
            "prompt_tokens": options.prompt_tokens,
            "new_tokens": options.new_tokens,
            **speculative,
        },
    }
