"""DeiT's distillation (Touvron et al. 2021, arXiv:2012.12877, §4): the losses, and the frozen teacher.

With the distillation token the class head learns from the true labels y and the distillation head from the teacher
(§4, "Distillation token"). Z_cls and Z_dist are the two heads' logits, Z_t the teacher's, ψ the softmax:

    soft, eq. (2):  L = (1 − λ) L_CE(ψ(Z_cls), y) + λ τ² KL(ψ(Z_t/τ) ‖ ψ(Z_dist/τ))
    hard, eq. (3):  L = ½ L_CE(ψ(Z_cls), y) + ½ L_CE(ψ(Z_dist), y_t),      y_t = argmax_c Z_t(c)

Eq. (3) weighs the two terms ½ and ½; λ generalises it as the official code's `distillation_alpha` does
(losses.py: base·(1 − α) + distillation·α). The true labels are smoothed, ε = 0.1 "in our all experiments that use
true labels" (§4); the teacher's hard labels never are (losses.py). The soft defaults τ = 3, λ = 0.1 are the
paper's "typical values" (§6, after Cho & Hariharan).

The implementations agree on everything but the soft term's reduction, so it is named by its source:
    "batchmean"  the KL summed over the classes, averaged over the batch: the paper's KL, timm's
                 TokenDistillationTask (timm/task/token_distillation.py) and lucidrains' DistillWrapper
                 (vit_pytorch/distill.py);
    "numel"      summed and divided by B·K: the official code (deit losses.py, "to have the legacy PyTorch
                 behavior", deit issue #61), K times smaller than "batchmean".
"""
import dataclasses
from collections.abc import Callable

import torch
import torch.nn.functional as F

from paper.training.classifier import load_classifier

KINDS = ("hard", "soft")
REDUCTIONS = ("batchmean", "numel")
# λ when none is given: eq. (3)'s ½ for hard distillation, §6's 0.1 for soft.
PAPER_LAMBDA = {"hard": 0.5, "soft": 0.1}
PAPER_TAU = 3.0


@dataclasses.dataclass(frozen=True)
class Distillation:
    """Which objective, and its constants. λ defaults to the paper's for the kind (PAPER_LAMBDA)."""
    kind: str                   # "hard" (eq. 3) or "soft" (eq. 2)
    lam: float | None = None    # λ, the teacher term's weight; the true labels' is 1 − λ
    tau: float = PAPER_TAU      # τ, the soft term's temperature (the hard term has none)
    reduction: str = "batchmean"  # the soft term's, by source (module docstring)

    def __post_init__(self):
        for name, allowed in (("kind", KINDS), ("reduction", REDUCTIONS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name}: expected one of {allowed}, got {getattr(self, name)!r}")
        if self.lam is None:
            object.__setattr__(self, "lam", PAPER_LAMBDA[self.kind])
        if not 0 <= self.lam <= 1:
            raise ValueError(f"lam: expected a weight in [0, 1], got {self.lam}")
        if self.tau <= 0:
            raise ValueError(f"tau: expected a positive temperature, got {self.tau}")


def true_label_loss(logits: torch.Tensor, targets: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """L_CE(ψ(Z), y) averaged over the batch, y smoothed by ε: class indices (B,), or Mixup/CutMix's mixed targets
    (B, K), which are smoothed the same way (the official code's timm Mixup smooths the one-hot labels it mixes,
    which is the same as smoothing the mixture)."""
    return F.cross_entropy(logits, targets, label_smoothing=label_smoothing)


def soft_distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, tau: float,
                           reduction: str = "batchmean") -> torch.Tensor:
    """Eq. (2)'s teacher term: τ² KL(ψ(Z_t/τ) ‖ ψ(Z_s/τ)), reduced by `reduction`. (B, K) twice -> scalar."""
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction: expected one of {REDUCTIONS}, got {reduction!r}")
    kl = F.kl_div(F.log_softmax(student_logits / tau, dim=-1), F.log_softmax(teacher_logits / tau, dim=-1),
                  reduction="sum", log_target=True)                    # Σ_b Σ_c p_t (log p_t − log p_s)
    return kl * tau ** 2 / (student_logits.shape[0] if reduction == "batchmean" else student_logits.numel())


def hard_distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """Eq. (3)'s teacher term: L_CE(ψ(Z_s), y_t) with the teacher's decision y_t = argmax Z_t, never smoothed."""
    return F.cross_entropy(student_logits, teacher_logits.argmax(dim=-1))


def distillation_loss(class_logits: torch.Tensor, distillation_logits: torch.Tensor, teacher_logits: torch.Tensor,
                      targets: torch.Tensor, distillation: Distillation, label_smoothing: float = 0.0) -> torch.Tensor:
    """The global objective with the distillation token (§4): (1 − λ) · the class head against the true labels +
    λ · the distillation head against the teacher, eq. (2) or (3). Logits (B, K); targets as `true_label_loss`."""
    if teacher_logits.shape != distillation_logits.shape:
        raise ValueError(f"teacher: expected logits of the student's shape {tuple(distillation_logits.shape)} (the same "
                         f"classes), got {tuple(teacher_logits.shape)}")
    d = distillation
    if d.kind == "soft":
        teacher_term = soft_distillation_loss(distillation_logits, teacher_logits, d.tau, d.reduction)
    else:
        teacher_term = hard_distillation_loss(distillation_logits, teacher_logits)
    return (1 - d.lam) * true_label_loss(class_logits, targets, label_smoothing) + d.lam * teacher_term


class LabelCriterion:
    """The training loss without a teacher, (logits, images, targets) -> `true_label_loss`, smoothed by ε."""

    def __init__(self, label_smoothing: float = 0.0):
        self.label_smoothing = label_smoothing

    def __call__(self, logits: torch.Tensor, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return true_label_loss(logits, targets, self.label_smoothing)


class DistillationCriterion:
    """A distilled student's training loss, ((Z_cls, Z_dist), images, targets) -> scalar: the frozen teacher sees
    the very images the student sees, Mixup/CutMix included (deit engine.py passes the mixed samples to losses.py)."""

    def __init__(self, teacher: Callable[[torch.Tensor], torch.Tensor], distillation: Distillation,
                 label_smoothing: float = 0.0):
        self.teacher, self.distillation, self.label_smoothing = teacher, distillation, label_smoothing

    def __call__(self, outputs: tuple[torch.Tensor, torch.Tensor], images: torch.Tensor,
                 targets: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            teacher_logits = self.teacher(images)
        return distillation_loss(*outputs, teacher_logits, targets, self.distillation, self.label_smoothing)


def load_teacher(path, device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32) -> Callable[[torch.Tensor], torch.Tensor]:
    """A checkpoint written by paper.train or paper.compare, a ViT's or a ResNet's -> the frozen teacher, a function
    from the student's batch to the teacher's logits (B, K). Its input is the batch as paper.training.data hands it to the
    student: (B, C, H, W) scaled to [-1, 1], at the student's resolution. `load_classifier` rebuilds the model and its
    own recorded preprocessing, which takes [0, 1] pixels: the batch goes back to them (x + 1) / 2, then is resized to
    the teacher's resolution and normalised as its test images were. Frozen: evaluation mode (no dropout, no drop
    path, BatchNorm's running statistics), no gradients, its weights never handed to an optimizer."""
    classifier = load_classifier(path, device, dtype)

    @torch.no_grad()
    def teacher(images: torch.Tensor) -> torch.Tensor:
        return classifier((images + 1) / 2)

    return teacher
