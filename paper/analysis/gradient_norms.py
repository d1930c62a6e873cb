"""Per-example gradient norms (data debugging): because `lowlevel.forward` is a pure function of (params, images),
torch.func gives every example's gradient in one batched call: vmap over the examples of grad of the one-example loss."""
import torch
import torch.nn.functional as F
from torch.func import grad, vmap

import lowlevel as vit


def per_example_gradient_norms(params: dict, images: torch.Tensor, labels: torch.Tensor, cfg: vit.ViTConfig,
                               chunk: int = 256) -> torch.Tensor:
    """‖∇_θ CE(forward(θ, x_i), y_i)‖₂ over all parameters, for each example i: images (B, C, H, W) -> (B,)."""
    def loss(p, image, label):
        return F.cross_entropy(vit.forward(p, image[None], cfg), label[None])

    per_example = vmap(grad(loss), in_dims=(None, 0, 0), chunk_size=chunk)(params, images, labels)
    return torch.stack([g.flatten(1).pow(2).sum(1) for g in per_example.values()]).sum(0).sqrt()
