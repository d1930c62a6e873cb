"""timm state_dict files, `.pth` (torch.save) or `.safetensors`: timm's names are mapped to ours by the table in
`lowlevel/timm_format.py`; this file only reads and writes them."""
from lowlevel import ViTConfig, from_timm, to_timm

from .files import load_tensors, save_tensors


def is_timm_state_dict(sd: dict) -> bool:
    return "patch_embed.proj.weight" in sd


def read_timm(path, **overrides) -> tuple[ViTConfig, dict]:
    """A timm state_dict file -> (cfg, params). The weights fix every field but the head count (D_h = 64 assumed),
    the image size (a square grid assumed), eps and GELU; overrides set those and are checked against the shapes."""
    sd = load_tensors(path)
    if not is_timm_state_dict(sd):
        raise ValueError(f"{path}: expected a timm VisionTransformer state_dict with 'patch_embed.proj.weight', "
                         f"got keys {sorted(sd)[:4]}...")
    return from_timm(sd, **overrides)


def write_timm(params: dict, cfg: ViTConfig, path) -> None:
    """(params, cfg) -> a timm state_dict at `path` (.safetensors by suffix, torch.save otherwise). Everything is
    checked before the file is written."""
    save_tensors(to_timm(params, cfg), path)
