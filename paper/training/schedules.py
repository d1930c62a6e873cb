"""The learning-rate schedule of the paper: linear warm-up, then linear or cosine decay (paper §4.1, App. B.1).

Written as the official code writes it (vision_transformer `utils.create_learning_rate_schedule`, the same
20 lines in the first public commit's `hyper.py`), with steps counted from 1:

    progress = clip((step - warmup) / (total - warmup), 0, 1)
    linear:  lr = end + (base - end) · (1 - progress)         end = 1e-5 ("linear_end")
    cosine:  lr = base · ½ (1 + cos(π · progress))
    lr = lr · min(1, step / warmup)
"""
import math

DECAYS = ("linear", "cosine")
LINEAR_END = 1e-5  # vision_transformer utils.py `linear_end`


def learning_rate(step: int, base_lr: float, total_steps: int, warmup_steps: int, decay: str = "cosine") -> float:
    """The learning rate of optimizer step `step` (1, 2, …, total_steps)."""
    if decay not in DECAYS:
        raise ValueError(f"decay: expected one of {DECAYS}, got {decay!r}")
    if not 0 <= warmup_steps < total_steps:
        raise ValueError(f"warmup_steps: expected 0 <= warmup_steps < total_steps={total_steps}, got {warmup_steps}")
    progress = min(max((step - warmup_steps) / (total_steps - warmup_steps), 0.0), 1.0)
    if decay == "linear":
        lr = LINEAR_END + (base_lr - LINEAR_END) * (1.0 - progress)
    else:
        lr = base_lr * 0.5 * (1.0 + math.cos(math.pi * progress))
    if warmup_steps:
        lr = lr * min(1.0, step / warmup_steps)
    return lr


class Schedule:
    """`learning_rate` as a multiplier of the base rate for `torch.optim.lr_scheduler.LambdaLR`, which counts
    from 0: its i-th value is the rate of optimizer step i + 1."""

    def __init__(self, base_lr: float, total_steps: int, warmup_steps: int, decay: str):
        learning_rate(1, base_lr, total_steps, warmup_steps, decay)  # check the arguments now, not at step 1
        self.base_lr, self.total_steps, self.warmup_steps, self.decay = base_lr, total_steps, warmup_steps, decay

    def __call__(self, i: int) -> float:
        return learning_rate(i + 1, self.base_lr, self.total_steps, self.warmup_steps, self.decay) / self.base_lr
