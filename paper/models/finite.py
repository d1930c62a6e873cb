"""Weights that decide something hold no NaN or infinity: a teacher whose logits are NaN labels every image class 0
(argmax of NaN), a verdict on NaN logits compares nothing, an exported or inspected model full of NaN shows nothing.
Every place that lets weights decide checks them here, naming the tensors."""
import torch


def non_finite(tensors: dict) -> list[str]:
    """Names of the floating-point tensors holding a NaN or an infinity."""
    return sorted(k for k, v in tensors.items()
                  if torch.is_tensor(v) and v.is_floating_point() and not torch.isfinite(v).all())


def require_finite(params: dict, what: str) -> None:
    """A ValueError naming `what` (e.g. "teacher: runs/cnn.pt") and its first non-finite tensors, if any."""
    bad = non_finite(params)
    if bad:
        raise ValueError(f"{what}: expected finite weights, got NaN or infinity in {len(bad)} tensor(s): "
                         f"{', '.join(bad[:3])}{' …' if len(bad) > 3 else ''}")
