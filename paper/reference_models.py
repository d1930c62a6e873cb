"""The independent implementations we check against, built to compute the same model as a `ViTConfig`."""
from functools import partial

import torch.nn as nn

from lowlevel import ViTConfig


def timm_kwargs(cfg: ViTConfig) -> dict:
    """Arguments for timm's VisionTransformer that build the same model as `cfg` (eps and GELU made explicit)."""
    if cfg.representation_size or cfg.pos_embed == "sincos2d":
        raise ValueError("cfg: timm's VisionTransformer has no pre-logits layer and no fixed sin-cos position embedding")
    return dict(img_size=cfg.image_size, patch_size=cfg.patch_size, in_chans=cfg.in_channels,
                num_classes=cfg.num_classes, embed_dim=cfg.dim, depth=cfg.depth, num_heads=cfg.num_heads,
                mlp_ratio=cfg.mlp_dim / cfg.dim, qkv_bias=cfg.qkv_bias, class_token=cfg.class_token,
                global_pool="avg" if cfg.pool == "avg" else "token",
                pos_embed="learn" if cfg.pos_embed == "learned" else "none",
                norm_layer=partial(nn.LayerNorm, eps=cfg.layer_norm_eps),
                act_layer=partial(nn.GELU, approximate="tanh") if cfg.gelu == "tanh" else nn.GELU,
                drop_rate=cfg.dropout, proj_drop_rate=cfg.dropout, pos_drop_rate=cfg.dropout)


def timm_vit(cfg: ViTConfig, **kwargs):
    """timm's VisionTransformer for `cfg` (random weights; load ours with `lowlevel.to_timm`)."""
    from timm.models.vision_transformer import VisionTransformer
    return VisionTransformer(**timm_kwargs(cfg), **kwargs)
