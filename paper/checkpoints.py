"""Any checkpoint format in, any out: the format is recognised from the file itself, the one written from the
destination's name. Reading returns (cfg, params); writing takes (params, cfg).

    source                                     recognised by
    directory with config.json                 transformers `save_pretrained` layout (a ViT, or a Swin by its
                                               "model_type")
    .npz (a zip of .npy arrays)                the official Google format
    safetensors or torch.save state_dict       timm's names ("patch_embed.proj.weight") or transformers';
                                               a Swin: timm's ("layers.0.blocks.0.attn.relative_position_bias_table")
                                               or torchvision's ("features.1.0.attn.relative_position_bias_table")

    destination                                written as
    *.npz                                      the official format (2020 layout unless told "big_vision")
    *.pth, *.pt, *.safetensors                a timm state_dict (a Swin: torchvision's when told "torchvision")
    anything else (a directory)                transformers `save_pretrained`: config.json + model.safetensors
                                               (ViTForImageClassification or SwinForImageClassification)
"""
from pathlib import Path

from lowlevel import SwinConfig, ViTConfig
from paper.configs import paper_config

from .formats.files import is_npz, load_tensors
from .formats.huggingface import is_hf_state_dict, pretrained_files, read_hf, write_hf
from .formats.huggingface_swin import is_hf_swin_state_dict, read_hf_swin, write_hf_swin
from .formats.npz import read_npz, write_npz
from .formats.timm import is_timm_state_dict, read_timm, write_timm
from .formats.timm_swin import is_timm_swin_state_dict, read_timm_swin, write_timm_swin
from .formats.torchvision_swin import is_torchvision_swin_state_dict, read_torchvision_swin, write_torchvision_swin

TIMM_SUFFIXES = (".pth", ".pt", ".safetensors")
# The fields a model name fixes; the head (classes, pre-logits) and the numerics stay the checkpoint's own.
ARCHITECTURE = ("image_size", "patch_size", "dim", "depth", "num_heads", "mlp_dim")
SWIN_ARCHITECTURE = ("image_size", "patch_size", "dim", "depths", "num_heads", "window_size", "mlp_ratio")
READERS = {"hf": read_hf, "npz": read_npz, "timm": read_timm, "hf-swin": read_hf_swin, "timm-swin": read_timm_swin,
           "torchvision-swin": read_torchvision_swin}


def detect_format(path) -> str:
    """"hf", "npz", "timm", "hf-swin", "timm-swin" or "torchvision-swin", from the file's content (a directory is
    transformers' layout)."""
    path = Path(path)
    if not path.exists():
        raise ValueError(f"{path}: expected a checkpoint file or directory, got a path that does not exist")
    if path.is_dir():
        return "hf-swin" if pretrained_files(path)[0].get("model_type") == "swin" else "hf"
    if is_npz(path):
        return "npz"
    sd = load_tensors(path)
    if is_timm_swin_state_dict(sd):                  # before the ViT's test: both have "patch_embed.proj.weight"
        return "timm-swin"
    if is_torchvision_swin_state_dict(sd):
        return "torchvision-swin"
    if is_hf_swin_state_dict(sd):
        return "hf-swin"
    if is_timm_state_dict(sd):
        return "timm"
    if is_hf_state_dict(sd):
        return "hf"
    raise ValueError(f"{path}: expected a timm or transformers ViT state_dict, or a timm or torchvision Swin one, got "
                     f"keys {sorted(sd)[:4]}...")


def model_overrides(model: str | None) -> dict:
    """The architecture fields of a paper or timm model name, as overrides a reader checks the weights against."""
    if model is None:
        return {}
    cfg = paper_config(model)
    return {k: getattr(cfg, k) for k in (SWIN_ARCHITECTURE if isinstance(cfg, SwinConfig) else ARCHITECTURE)}


def read_checkpoint(path, model: str | None = None, **overrides) -> tuple[ViTConfig | SwinConfig, dict, str]:
    """Any supported checkpoint -> (cfg, params, format). The config is inferred from the weights, except what
    `model` (e.g. "ViT-B/16") and `overrides` fix; a checkpoint that does not match them is refused, naming keys."""
    fmt = detect_format(path)
    return (*READERS[fmt](path, **{**model_overrides(model), **overrides}), fmt)


def write_checkpoint(params: dict, cfg: ViTConfig | SwinConfig, path, npz_layout: str = "vit2020",
                     state_dict: str = "timm") -> str:
    """Write in the format the destination names; returns it. Nothing is written if the params or config are refused.
    `state_dict` picks the layout of a .pth/.pt/.safetensors destination: "timm", or "torchvision" for a Swin."""
    path = Path(path)
    if state_dict not in ("timm", "torchvision"):
        raise ValueError(f"state_dict: expected 'timm' or 'torchvision', got {state_dict!r}")
    if isinstance(cfg, SwinConfig):
        return write_swin(params, cfg, path, state_dict)
    if state_dict != "timm":
        raise ValueError(f"state_dict: a ViT is written in timm's layout, got {state_dict!r} (torchvision: Swin only)")
    if path.suffix == ".npz":
        write_npz(params, cfg, path, npz_layout)
        return "npz"
    if path.suffix in TIMM_SUFFIXES:
        write_timm(params, cfg, path)
        return "timm"
    write_hf(params, cfg, path)
    return "hf"


def write_swin(params: dict, cfg: SwinConfig, path: Path, state_dict: str) -> str:
    """A Swin as a timm or torchvision state dict, or a transformers directory; the official .npz holds no Swin."""
    if path.suffix == ".npz":
        raise ValueError(f"{path}: the official .npz format holds ViTs only; write a Swin to a .pth, .pt or "
                         f".safetensors file (timm or torchvision) or to a directory (transformers)")
    if path.suffix not in TIMM_SUFFIXES:
        write_hf_swin(params, cfg, path)
        return "hf-swin"
    if state_dict == "torchvision":
        write_torchvision_swin(params, cfg, path)
        return "torchvision-swin"
    write_timm_swin(params, cfg, path)
    return "timm-swin"
