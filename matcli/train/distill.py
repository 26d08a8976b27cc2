"""`--teacher original`: distillation of every width from the dense model being quantized.

The teacher is a second, frozen copy of the source model (the trained one drifts from it
step by step), in eval mode, without gradients, on the training device, in the trained
model's dtype and under the same autocast. Its forward runs once per micro-batch and its
log-probabilities serve every width of that batch.

Loss of a width with logits s against teacher logits t, temperature T, over N tokens:

    KL = T^2 / N * sum_tokens sum_v p_t(v) (log p_t(v) - log p_s(v)),   p = softmax(. / T)

(Hinton et al. 2015; the T^2 keeps the gradient's size independent of T), mixed with the
labels' cross-entropy as  w * KL + (1 - w) * CE,  w = --teacher-weight. The default w = 1
(KL only) is LLM-QAT's choice (Liu et al. 2023, data-free QAT distils logits only) and
keeps the quantized model on the dense model's distribution rather than pulling it towards
the training text, which plain cross-entropy fine-tuning does (docs/results.md).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from matcli.options import QuantizeOptions


def kl_to_teacher(
    student_logits: torch.Tensor, teacher_log_probs: torch.Tensor, temperature: float
) -> torch.Tensor:
    """The mean over tokens of T^2 KL(p_t || p_s); both [tokens, vocab], the teacher's as
    log-probabilities at temperature T already."""
    student = F.log_softmax(student_logits / temperature, dim=-1)
    kl = F.kl_div(student, teacher_log_probs, log_target=True, reduction="batchmean")
    return kl * temperature**2


class OriginalTeacher:
    """The dense source model, frozen: log-probabilities of its next-token predictions."""

    def __init__(self, model: nn.Module, temperature: float):
        self.model = model
        self.temperature = temperature

    @torch.no_grad()
    def log_probs(self, input_ids: torch.Tensor) -> torch.Tensor:
        """[batch * (seq - 1), vocab]: the teacher's predictions of every next token."""
        logits = self.model(input_ids=input_ids).logits[:, :-1].float()
        return F.log_softmax(logits.reshape(-1, logits.shape[-1]) / self.temperature, dim=-1)


def load_original(folder: Path, device: torch.device, temperature: float) -> OriginalTeacher:
    """The dense model in `folder`, frozen, on `device`: the teacher of quantize and nest."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    model.config.use_cache = False
    model.to(device).eval().requires_grad_(False)
    return OriginalTeacher(model, temperature)


def load_teacher(options: QuantizeOptions, device: torch.device) -> OriginalTeacher | None:
    """The teacher `--teacher` names (None without the option), ready on `device`."""
    if options.teacher is None:
        return None
    return load_original(options.model, device, options.teacher_temperature)


def distillation_loss(
    logits: torch.Tensor,
    teacher_log_probs: torch.Tensor,
    labels: torch.Tensor,
    teacher_weight: float,
    temperature: float,
) -> torch.Tensor:
    """w * T^2 KL(teacher || student) + (1 - w) cross-entropy on the labels; logits
    [tokens, vocab], teacher_log_probs already log_softmax(teacher / T)."""
    if teacher_weight == 1:
        return kl_to_teacher(logits, teacher_log_probs, temperature)
    labels_loss = F.cross_entropy(logits, labels)
    if teacher_weight == 0:
        return labels_loss
    kl = kl_to_teacher(logits, teacher_log_probs, temperature)
    return teacher_weight * kl + (1 - teacher_weight) * labels_loss


def teacher_report(weight: float, temperature: float) -> dict:
    """The teacher of a run, as its report shows it."""
    return {"model": "original", "kl_weight": weight, "temperature": temperature}
