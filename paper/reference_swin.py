"""The independent Swin Transformers we check against, built to compute the same model as a `SwinConfig`: timm's
`SwinTransformer`, torchvision's `SwinTransformer` (the class behind swin_t/s/b) and transformers'
`SwinForImageClassification`. Each refuses a config whose conventions its code does not compute."""
from functools import partial

import torch
import torch.nn as nn

from lowlevel import SwinConfig

from .formats.fields import require, require_conventions

TIMM = "timm's SwinTransformer"
TORCHVISION = "torchvision's SwinTransformer"
TRANSFORMERS = "transformers' Swin"
# Each code's conventions (lowlevel/swin_config.py); merge_position is where its checkpoints name the merging.
TIMM_CONVENTIONS = dict(padding="after_shift", small_window="shrink", merge_position="start")
TORCHVISION_CONVENTIONS = dict(padding="before_shift", small_window="pad", merge_position="end")
TRANSFORMERS_CONVENTIONS = dict(padding="before_shift", small_window="shrink_min", merge_position="end")


def require_timm(cfg: SwinConfig) -> None:
    """Refuse a config timm's code does not compute: its GELU is fixed to nn.GELU (the exact erf), its conventions
    are its own."""
    require(TIMM, cfg, gelu="exact")
    require_conventions(TIMM, cfg, **TIMM_CONVENTIONS)


def require_torchvision(cfg: SwinConfig) -> None:
    """Refuse a config torchvision's code does not compute: its patch projection takes 3 channels, its q/k/v always
    have biases, its GELU is nn.GELU, it always has a classifier and two blocks or more, its conventions are its
    own."""
    require(TORCHVISION, cfg, in_channels=3, qkv_bias=True, gelu="exact")
    if cfg.num_classes < 1:
        raise ValueError(f"num_classes: {TORCHVISION} cannot express num_classes={cfg.num_classes}; it always has a "
                         f"classifier (num_classes ≥ 1)")
    if cfg.depth < 2:
        raise ValueError(f"depths: {TORCHVISION} cannot build depths={cfg.depths}; it divides by the block count − 1 "
                         f"for its stochastic depth rates, so it needs two blocks or more")
    require_conventions(TORCHVISION, cfg, **TORCHVISION_CONVENTIONS)


def require_transformers(cfg: SwinConfig) -> None:
    """Refuse a config transformers' code does not compute: its patch-embedding and patch-merging LayerNorms keep
    PyTorch's eps 1e-5 whatever `layer_norm_eps` says (modeling_swin.py `SwinEmbeddings`, `SwinPatchMerging`); its
    conventions are the original's; and (measured with transformers 5.23) a stage smaller than the window fails: it
    shrinks the window but keeps the M×M relative-position table (RuntimeError: the size of tensor a (25) must
    match the size of tensor b (49))."""
    require(TRANSFORMERS, cfg, layer_norm_eps=1e-5)
    require_conventions(TRANSFORMERS, cfg, **TRANSFORMERS_CONVENTIONS)
    for s, size in enumerate(cfg.stage_sizes):
        if min(size) < cfg.window_size:
            raise ValueError(f"image_size: {TRANSFORMERS} cannot compute image_size {cfg.image_size}, where stage {s} "
                             f"is {size[0]}×{size[1]}, smaller than the window M={cfg.window_size}: it shrinks the "
                             f"window but keeps the M×M relative-position table (transformers 5.23)")


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


def hf_swin_config(cfg: SwinConfig):
    """transformers' SwinConfig computing the same model as `cfg`: eps, activation and stochastic depth set to ours
    (its default drop_path_rate is 0.1), no absolute position embeddings, no dropout."""
    from transformers import SwinConfig as HFSwinConfig

    from .reference_models import HF_ACTIVATIONS
    require_transformers(cfg)
    h, w = cfg.image_size
    config = HFSwinConfig(image_size=h if h == w else [h, w], patch_size=cfg.patch_size, num_channels=cfg.in_channels,
                          embed_dim=cfg.dim, depths=list(cfg.depths), num_heads=list(cfg.num_heads),
                          window_size=cfg.window_size, mlp_ratio=cfg.mlp_ratio, qkv_bias=cfg.qkv_bias,
                          hidden_act=HF_ACTIVATIONS[cfg.gelu], layer_norm_eps=cfg.layer_norm_eps,
                          drop_path_rate=cfg.drop_path, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                          use_absolute_embeddings=False, num_labels=cfg.num_classes)
    config.architectures = ["SwinForImageClassification"]
    return config


def hf_swin(cfg: SwinConfig):
    """transformers' SwinForImageClassification for `cfg` (its classifier the identity when num_classes is 0); load
    ours with `paper.formats.huggingface_swin.to_hf_swin`."""
    from transformers import SwinForImageClassification
    return SwinForImageClassification(hf_swin_config(cfg))
