"""lowlevel's ViT as a torch module, only so that torch.optim, DDP, train.py's loop and classifier.py can hold it."""
import torch
import torch.nn as nn

import lowlevel as vit


class ExplicitParams(nn.Module):
    """lowlevel's flat params dict inside an nn.Module. Module attribute names cannot contain '.', so
    'blocks.0.qkv.weight' is kept as 'blocks/0/qkv/weight'.
    fast: run lowlevel's fast path (the same function, computed with fused attention).
    heads: in training mode the module computes a distilled model's two heads' logits (lowlevel `forward_heads`),
    what distillation trains; in evaluation mode, as every model, its logits (the heads fused)."""

    def __init__(self, params: dict, cfg: vit.ViTConfig, fast: bool = False, heads: bool = False):
        super().__init__()
        self.cfg, self.fast, self.heads = cfg, fast, heads
        self.params = nn.ParameterDict({k.replace(".", "/"): nn.Parameter(v) for k, v in params.items()})

    def as_dict(self) -> dict:
        return {k.replace("/", "."): v for k, v in self.params.items()}

    def forward(self, images: torch.Tensor):
        run = vit.forward_heads if self.heads and self.training else vit.forward
        return run(self.as_dict(), images, self.cfg, train=self.training, fast=self.fast)
