"""The independent implementations we check against, built to compute the same model as a `ViTConfig`."""
from functools import partial

import torch.nn as nn

from lowlevel import ViTConfig

from .formats.fields import require
from .formats.timm import mlp_ratio


def timm_kwargs(cfg: ViTConfig) -> dict:
    """Arguments for timm's VisionTransformer that build the same model as `cfg` (eps and GELU made explicit)."""
    require("timm's VisionTransformer", cfg, representation_size=None, pos_embed=("learned", "none"))
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
                drop_path_rate=cfg.drop_path)


def timm_vit(cfg: ViTConfig, **kwargs):
    """timm's VisionTransformer for `cfg`, its VisionTransformerDistilled (deit.py) for a distilled one (random
    weights; load ours with `paper.formats.timm.to_timm`)."""
    from timm.models.deit import VisionTransformerDistilled
    from timm.models.vision_transformer import VisionTransformer
    return (VisionTransformerDistilled if cfg.distilled else VisionTransformer)(**timm_kwargs(cfg), **kwargs)


# Our GELU flavour -> transformers' ACT2FN name: "gelu" is erf GELU, "gelu_pytorch_tanh" F.gelu(approximate="tanh").
HF_ACTIVATIONS = {"exact": "gelu", "tanh": "gelu_pytorch_tanh"}


def hf_config(cfg: ViTConfig):
    """transformers' ViTConfig computing the same model as `cfg`, its DeiTConfig for a distilled one. Its layer-norm
    eps and activation are set to ours: transformers' defaults (eps 1e-12) differ from the official 1e-6 by ~7e-4 in
    the logits of ViT-B/16. The pre-logits layer maps to ViTModel's pooler (Dense + tanh), which has no classifier
    after it. In training mode the two differ: transformers drops out after the embeddings, attention and MLP but
    not after the GELU, and has no stochastic depth (drop_path)."""
    from transformers import DeiTConfig
    from transformers import ViTConfig as HFViTConfig
    require("transformers' ViT", cfg, class_token=True, pool="token", pos_embed="learned")
    if cfg.num_classes or cfg.distilled:                    # the pooler (pre-logits) has no classifier after it
        require("transformers' ViTForImageClassification and DeiT", cfg, representation_size=None)
    h, w = cfg.image_size
    config_class = DeiTConfig if cfg.distilled else HFViTConfig
    config = config_class(hidden_size=cfg.dim, num_hidden_layers=cfg.depth, num_attention_heads=cfg.num_heads,
                          intermediate_size=cfg.mlp_dim, hidden_act=HF_ACTIVATIONS[cfg.gelu],
                          hidden_dropout_prob=cfg.dropout, attention_probs_dropout_prob=0.0,
                          layer_norm_eps=cfg.layer_norm_eps, image_size=h if h == w else [h, w],
                          patch_size=cfg.patch_size, num_channels=cfg.in_channels, qkv_bias=cfg.qkv_bias,
                          num_labels=cfg.num_classes, pooler_output_size=cfg.representation_size or cfg.dim,
                          pooler_act="tanh")
    config.architectures = [hf_architecture(cfg)]
    return config


def hf_architecture(cfg: ViTConfig) -> str:
    """The transformers class computing `cfg`: a distilled DeiT is DeiTForImageClassificationWithTeacher (its two
    heads cls_classifier and distillation_classifier), a ViT ViTForImageClassification; without a classifier the
    backbone alone (ViTModel's pooler is the pre-logits layer)."""
    if cfg.distilled:
        return "DeiTForImageClassificationWithTeacher" if cfg.num_classes else "DeiTModel"
    return "ViTForImageClassification" if cfg.num_classes else "ViTModel"


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

    from .formats.torchvision import check_expressible
    check_expressible(cfg)
    return VisionTransformer(image_size=cfg.image_size[0], patch_size=cfg.patch_size, num_layers=cfg.depth,
                             num_heads=cfg.num_heads, hidden_dim=cfg.dim, mlp_dim=cfg.mlp_dim, dropout=cfg.dropout,
                             num_classes=cfg.num_classes, representation_size=cfg.representation_size)
