"""The two heads of paper §3.1-§3.2 and the switch between them.

- Pre-training: "a MLP with one hidden layer" with tanh (App. D.3); its hidden size is not stated in the paper,
  the released checkpoints use D ("pre_logits", representation_size = D).
- Fine-tuning: "we remove the pre-trained prediction head and attach a zero-initialized D × K feedforward layer".
"""
import dataclasses

import torch

from lowlevel import ViTConfig, param_shapes
from lowlevel.checks import check_config


def pretraining_head(cfg, num_classes: int):
    """The config with the pre-training head: pre-logits Dense(D) + tanh, then a K-way linear layer."""
    check_config(cfg, ViTConfig)
    return dataclasses.replace(cfg, representation_size=cfg.dim, num_classes=num_classes)


def finetuning_head(params: dict, cfg, num_classes: int) -> tuple[dict, object]:
    """Drop the whole head (both layers) and attach a zero-initialised D × K linear layer; a distilled DeiT gets two,
    the class and the distillation head. -> (params, cfg)."""
    check_config(cfg, ViTConfig)
    cfg = dataclasses.replace(cfg, representation_size=None, num_classes=num_classes)
    heads = ("pre_logits.", "head.", "head_dist.")
    params = {k: v for k, v in params.items() if not k.startswith(heads)}
    like = params["norm.weight"]
    for name, shape in param_shapes(cfg).items():
        if name.startswith(heads):
            params[name] = torch.zeros(shape, dtype=like.dtype, device=like.device)
    return params, cfg
