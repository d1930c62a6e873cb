"""Resolution change for fine-tuning (paper §3.2): keep the patch size, so the sequence grows, and "perform 2D
interpolation of the pre-trained position embeddings, according to their location in the original image".

Implementations disagree by up to 2e-2 here (14×14 → 24×24, random E_pos), so the method is named:
- "official":    scipy.ndimage.zoom with an order-1 spline (vision_transformer checkpoint.py, big_vision);
- "timm":        F.interpolate bicubic with antialias, computed in float32 (timm resample_abs_pos_embed);
- "hf":          F.interpolate bicubic, align_corners=False, no antialias (transformers interpolate_pos_encoding);
- "torchvision": F.interpolate bicubic, align_corners=True, no antialias (torchvision interpolate_embeddings).
The prefix tokens' rows (the class token's, and a distilled DeiT's distillation token's) are kept apart and
unchanged.
"""
import dataclasses

import numpy as np
import scipy.ndimage
import torch
import torch.nn.functional as F

from lowlevel import ViTConfig
from lowlevel.checks import check_config

METHODS = ("official", "timm", "hf", "torchvision")


def resample_grid(grid: torch.Tensor, new_grid: tuple[int, int], method: str = "official") -> torch.Tensor:
    """(gh, gw, D) -> (gh', gw', D)."""
    gh, gw, _ = grid.shape
    if method == "official":
        zoom = (new_grid[0] / gh, new_grid[1] / gw, 1)
        out = scipy.ndimage.zoom(grid.detach().cpu().numpy(), zoom, order=1)
        return torch.from_numpy(np.ascontiguousarray(out)).to(grid)
    if method not in METHODS:
        raise ValueError(f"method: expected one of {METHODS}, got {method!r}")
    x = grid.permute(2, 0, 1).unsqueeze(0)                                   # (1, D, gh, gw)
    if method == "timm":                                                     # timm interpolates in float32
        x = F.interpolate(x.float(), size=new_grid, mode="bicubic", align_corners=False, antialias=True)
        return x[0].permute(1, 2, 0).to(grid.dtype)
    x = F.interpolate(x, size=new_grid, mode="bicubic", align_corners=method == "torchvision", antialias=False)
    return x[0].permute(1, 2, 0)


def resample_pos_embed(pos: torch.Tensor, old_grid: tuple[int, int], new_grid: tuple[int, int],
                       num_prefix_tokens: int = 1, method: str = "official") -> torch.Tensor:
    """E_pos (1, prefix + gh·gw, D) -> (1, prefix + gh'·gw', D), the prefix (class token) rows kept as they are."""
    gh, gw = old_grid
    if pos.shape[1] != num_prefix_tokens + gh * gw:
        raise ValueError(f"pos: expected {num_prefix_tokens} + {gh}·{gw} = {num_prefix_tokens + gh * gw} rows for "
                         f"grid {tuple(old_grid)}, got {pos.shape[1]}")
    prefix, grid = pos[:, :num_prefix_tokens], pos[0, num_prefix_tokens:].reshape(gh, gw, -1)
    grid = resample_grid(grid, tuple(new_grid), method)
    return torch.cat([prefix, grid.reshape(1, -1, grid.shape[-1])], dim=1)


def change_resolution(params: dict, cfg, image_size, method: str = "official"):
    """(params, cfg) at one resolution -> (params', cfg') at `image_size`, learned E_pos interpolated."""
    check_config(cfg, ViTConfig)
    new_cfg = dataclasses.replace(cfg, image_size=image_size)
    params = dict(params)
    if cfg.pos_embed == "learned":
        params["pos"] = resample_pos_embed(params["pos"], cfg.grid_size, new_cfg.grid_size,
                                           cfg.num_prefix_tokens, method)
    return params, new_cfg
