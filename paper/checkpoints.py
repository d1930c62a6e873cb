"""Any checkpoint format in, any out: the format is recognised from the file itself, the one written from the
destination's name. Reading returns (cfg, params); writing takes (params, cfg).

    source                                     recognised by
    directory with config.json                 transformers `save_pretrained` layout
    .npz (a zip of .npy arrays)                the official Google format
    safetensors or torch.save state_dict       timm's names ("patch_embed.proj.weight") or transformers'

    destination                                written as
    *.npz                                      the official format (2020 layout unless told "big_vision")
    *.pth, *.pt, *.safetensors                a timm state_dict
    anything else (a directory)                transformers `save_pretrained`: config.json + model.safetensors

A distilled DeiT is read and written by the same rules (timm's VisionTransformerDistilled, transformers'
DeiTForImageClassificationWithTeacher); the official .npz format has no distillation token and refuses it.
"""
from pathlib import Path

from lowlevel import ViTConfig
from paper.configs import paper_config

from .formats.files import is_npz, load_tensors
from .formats.huggingface import is_hf_state_dict, read_hf, write_hf
from .formats.npz import read_npz, write_npz
from .formats.timm import is_timm_state_dict, read_timm, write_timm

TIMM_SUFFIXES = (".pth", ".pt", ".safetensors")
# The fields a model name fixes; the head (classes, pre-logits) and the numerics stay the checkpoint's own.
ARCHITECTURE = ("image_size", "patch_size", "dim", "depth", "num_heads", "mlp_dim", "distilled")


def detect_format(path) -> str:
    """"hf", "npz" or "timm", from the file's content (a directory is transformers' layout)."""
    path = Path(path)
    if not path.exists():
        raise ValueError(f"{path}: expected a checkpoint file or directory, got a path that does not exist")
    if path.is_dir():
        return "hf"
    if is_npz(path):
        return "npz"
    sd = load_tensors(path)
    if is_timm_state_dict(sd):
        return "timm"
    if is_hf_state_dict(sd):
        return "hf"
    raise ValueError(f"{path}: expected a timm or transformers ViT state_dict, got keys {sorted(sd)[:4]}...")


def model_overrides(model: str | None) -> dict:
    """The architecture fields of a paper or timm model name, as overrides a reader checks the weights against."""
    if model is None:
        return {}
    cfg = paper_config(model)
    return {k: getattr(cfg, k) for k in ARCHITECTURE}


def read_checkpoint(path, model: str | None = None, **overrides) -> tuple[ViTConfig, dict, str]:
    """Any supported checkpoint -> (cfg, params, format). The config is inferred from the weights, except what
    `model` (e.g. "ViT-B/16") and `overrides` fix; a checkpoint that does not match them is refused, naming keys."""
    fmt = detect_format(path)
    reader = {"hf": read_hf, "npz": read_npz, "timm": read_timm}[fmt]
    return (*reader(path, **{**model_overrides(model), **overrides}), fmt)


def write_checkpoint(params: dict, cfg: ViTConfig, path, npz_layout: str = "vit2020") -> str:
    """Write in the format the destination names; returns it. Nothing is written if the params or config are refused."""
    path = Path(path)
    if path.suffix == ".npz":
        write_npz(params, cfg, path, npz_layout)
        return "npz"
    if path.suffix in TIMM_SUFFIXES:
        write_timm(params, cfg, path)
        return "timm"
    write_hf(params, cfg, path)
    return "hf"
