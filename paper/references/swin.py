"""The independent Swin Transformers we check against, built to compute the same model as a `SwinConfig`: timm's
`SwinTransformer`, torchvision's `SwinTransformer` (the class behind swin_t/s/b) and transformers'
`SwinForImageClassification`. Each refuses a config whose conventions its code does not compute."""
from functools import partial

import torch
import torch.nn as nn

from lowlevel import SwinConfig
from paper.formats.huggingface_swin import hf_swin_config
from paper.formats.timm_swin import require_timm
from paper.formats.torchvision_swin import require_torchvision


def timm_swin(cfg: SwinConfig, **kwargs):
    """timm's SwinTransformer for `cfg` (random weights; load ours with `paper.formats.timm_swin.to_timm_swin`)."""
    from timm.models.swin_transformer import SwinTransformer
    require_timm(cfg)
    return SwinTransformer(img_size=cfg.image_size, patch_size=cfg.patch_size, in_chans=cfg.in_channels,
                           num_classes=cfg.num_classes, embed_dim=cfg.dim, depths=cfg.depths, num_heads=cfg.num_heads,
                           window_size=cfg.window_size, mlp_ratio=cfg.mlp_ratio, qkv_bias=cfg.qkv_bias,
                           drop_path_rate=cfg.drop_path, norm_layer=partial(nn.LayerNorm, eps=cfg.layer_norm_eps),
                           **kwargs)


def torchvision_swin(cfg: SwinConfig):
    """torchvision's SwinTransformer for `cfg` (load ours with `paper.formats.torchvision_swin.to_torchvision_swin`)."""
    from torchvision.models.swin_transformer import SwinTransformer
    require_torchvision(cfg)
    return SwinTransformer(patch_size=[cfg.patch_size] * 2, embed_dim=cfg.dim, depths=list(cfg.depths),
                           num_heads=list(cfg.num_heads), window_size=[cfg.window_size] * 2, mlp_ratio=cfg.mlp_ratio,
                           stochastic_depth_prob=cfg.drop_path, num_classes=cfg.num_classes,
                           norm_layer=partial(nn.LayerNorm, eps=cfg.layer_norm_eps))


def with_weights(build, cfg: SwinConfig, state_dict: dict, dtype=None):
    """`build(cfg)` holding `state_dict`, in eval mode, without initialising its weights first: built on the meta
    device, given uninitialised memory, loaded (strictly), and its computed non-persistent buffers (timm's
    relative-position index and shift masks) recomputed for the new memory. Whole Swin-Bs are built in seconds."""
    with torch.device("meta"):
        model = build(cfg)
    dtype = dtype or next(iter(state_dict.values())).dtype
    model = model.to_empty(device="cpu").to(dtype)
    model.load_state_dict(state_dict)
    for module in model.modules():
        if hasattr(module, "init_non_persistent_buffers"):
            module.init_non_persistent_buffers()
    return model.eval()


def hf_swin(cfg: SwinConfig):
    """transformers' SwinForImageClassification for `cfg` (its classifier the identity when num_classes is 0); load
    ours with `paper.formats.huggingface_swin.to_hf_swin`."""
    from transformers import SwinForImageClassification
    return SwinForImageClassification(hf_swin_config(cfg))


def torchvision_features(model, images: torch.Tensor) -> torch.Tensor:
    """What torchvision's SwinTransformer.forward hands its head: features, norm, permute, average pool, flatten."""
    return model.flatten(model.avgpool(model.permute(model.norm(model.features(images)))))
