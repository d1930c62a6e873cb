"""The independent implementations we check against, built to compute the same model as a `ViTConfig`."""
from functools import partial

import torch.nn as nn

from lowlevel import ViTConfig
from paper.formats.fields import require
from paper.formats.huggingface import hf_architecture, hf_config
from paper.formats.timm import mlp_ratio


def timm_backbone(cfg: ViTConfig) -> nn.Module:
    """timm's ResNet-v2 for a hybrid's cfg.backbone, as vision_transformer_hybrid.py `_resnetv2` builds it (no
    pre-activation, "SAME" stem, StdConv2dSame) with our groups and eps; `create_resnetv2_stem` for the stem alone."""
    from timm.layers import GroupNormAct, StdConv2dSame
    from timm.models.resnetv2 import ResNetV2, create_resnetv2_stem

    b = cfg.backbone
    layers = dict(conv_layer=partial(StdConv2dSame, eps=b.std_eps),
                  norm_layer=partial(GroupNormAct, num_groups=b.num_groups, eps=b.group_norm_eps))
    if not b.layers:
        return create_resnetv2_stem(cfg.in_channels, b.width, stem_type="same", preact=False, **layers)
    return ResNetV2(layers=b.layers, channels=tuple(4 * w for w in b.stage_widths), stem_chs=b.width, num_classes=0,
                    global_pool="", in_chans=cfg.in_channels, preact=False, stem_type="same", **layers)


def timm_kwargs(cfg: ViTConfig) -> dict:
    """Arguments for timm's VisionTransformer that build the same model as `cfg` (eps and GELU made explicit); a
    hybrid's embedding is timm's HybridEmbed over `timm_backbone`."""
    require("timm's VisionTransformer", cfg, representation_size=None, pos_embed=("learned", "none"),
            patch_embed="linear", attention="standard")
    if cfg.distilled:                               # VisionTransformerDistilled always learns E_pos (deit.py)
        require("timm's VisionTransformerDistilled", cfg, pos_embed="learned")
    return dict(img_size=cfg.image_size, patch_size=cfg.patch_size, in_chans=cfg.in_channels,
                num_classes=cfg.num_classes, embed_dim=cfg.dim, depth=cfg.depth, num_heads=cfg.num_heads,
                mlp_ratio=mlp_ratio(cfg.dim, cfg.mlp_dim), qkv_bias=cfg.qkv_bias, class_token=cfg.class_token,
                global_pool="avg" if cfg.pool == "avg" else "token",
                pos_embed="learn" if cfg.pos_embed == "learned" else "none",
                norm_layer=partial(nn.LayerNorm, eps=cfg.layer_norm_eps),
                act_layer=partial(nn.GELU, approximate="tanh") if cfg.gelu == "tanh" else nn.GELU,
                drop_rate=cfg.dropout, proj_drop_rate=cfg.dropout, pos_drop_rate=cfg.dropout,
                drop_path_rate=cfg.drop_path, **hybrid_embed(cfg))


def hybrid_embed(cfg: ViTConfig) -> dict:
    """timm's embed_layer for a hybrid (vision_transformer_hybrid.py `_create_vision_transformer_hybrid`); none for a
    plain ViT, whose PatchEmbed is the default."""
    from timm.layers import HybridEmbed

    return {"embed_layer": partial(HybridEmbed, backbone=timm_backbone(cfg))} if cfg.backbone else {}


def timm_vit(cfg: ViTConfig, **kwargs):
    """timm's VisionTransformer for `cfg`, its VisionTransformerDistilled (deit.py) for a distilled one (random
    weights; load ours with `paper.formats.timm.to_timm`)."""
    from timm.models.deit import VisionTransformerDistilled
    from timm.models.vision_transformer import VisionTransformer
    return (VisionTransformerDistilled if cfg.distilled else VisionTransformer)(**timm_kwargs(cfg), **kwargs)


def hf_vit(cfg: ViTConfig):
    """transformers' model for `cfg` (`hf_architecture`). Random weights; load ours with
    `paper.formats.huggingface.to_hf`."""
    import transformers
    config = hf_config(cfg)
    model_class = getattr(transformers, hf_architecture(cfg))
    if cfg.num_classes:
        return model_class(config)
    return model_class(config, add_pooling_layer=bool(cfg.representation_size))


def torchvision_vit(cfg: ViTConfig):
    """torchvision's VisionTransformer for `cfg` (random weights; load ours with
    `paper.formats.torchvision.to_torchvision`, which refuses what it cannot express)."""
    from torchvision.models.vision_transformer import VisionTransformer

    from paper.formats.torchvision import check_expressible
    check_expressible(cfg)
    return VisionTransformer(image_size=cfg.image_size[0], patch_size=cfg.patch_size, num_layers=cfg.depth,
                             num_heads=cfg.num_heads, hidden_dim=cfg.dim, mlp_dim=cfg.mlp_dim, dropout=cfg.dropout,
                             num_classes=cfg.num_classes, representation_size=cfg.representation_size)
