"""Equivalence on random weights: our forward against the independent implementations of references/, on the same
perturbed weights and random images, the largest differences of the logits and of the features (y of eq. (4), what
the classifier reads), and the parameter counts of all of them.

A ViT is compared with timm's VisionTransformer and transformers' ViTForImageClassification; a distilled DeiT with
timm's VisionTransformerDistilled and transformers' DeiTForImageClassificationWithTeacher, its logits being the
evaluation logits (the two heads' mean) stacked with each head's, its features the mean of the two tokens' (timm's
pre_logits). A Swin is compared with timm's and torchvision's SwinTransformer: at the models' 224 px every stage is
whole windows, so one set of weights (our config keeps timm's conventions) serves both. Each family's row is chosen
by its record's name (paper/models/family.py), a hybrid's (§3.1) apart: transformers 5 has no ViT hybrid, so a hybrid
is compared with timm's hybrid twice, its weights given once as timm's state dict and once as the official .npz read
by timm's own npz loader (`_load_weights`, what checks our .npz names and layouts against an independent reader).
"""
import gc
import io
import sys

import numpy as np
import torch
from tqdm import tqdm

from lowlevel.model import heads
from paper.formats.huggingface import to_hf
from paper.formats.npz import to_npz
from paper.formats.timm import to_timm
from paper.formats.timm_swin import to_timm_swin
from paper.formats.torchvision_swin import to_torchvision_swin
from paper.models.dtypes import DTYPES
from paper.models.family import bytes_to_verify, family_of, model_name, paper_config, param_count
from paper.models.weights import perturbed
from paper.references.swin import timm_swin, torchvision_features, torchvision_swin, with_weights
from paper.references.vit import hf_vit, timm_vit


def diffs(ours: torch.Tensor, theirs: torch.Tensor) -> tuple[float, float]:
    """(max |ours − theirs|, max |ours − theirs| / max |theirs|)."""
    d = (ours - theirs).abs().max().item()
    return d, d / theirs.abs().max().item()


def timm_outputs(model, x: torch.Tensor, cfg) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, features) of timm's ViT; for VisionTransformerDistilled the logits are its evaluation output and its
    two heads' (what distilled training returns, deit.py forward_head), stacked."""
    z = model.forward_features(x)
    features = model.forward_head(z, pre_logits=True)
    if not cfg.distilled:
        return model.head(features), features
    logits = model.forward_head(z)
    model.set_distilled_training(True)
    model.train()                                    # no dropout in these configs: train mode only returns both heads
    class_logits, distillation_logits = model.forward_head(z)
    return torch.stack([logits, class_logits, distillation_logits]), features


def hf_outputs(model, x: torch.Tensor, cfg) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, features) of transformers' model, with the same stacking for DeiTForImageClassificationWithTeacher."""
    if not cfg.distilled:
        features = model.vit(x).last_hidden_state[:, 0]  # ViTForImageClassification.forward: classifier(LN(z_L)[:, 0])
        return model.classifier(features), features
    out = model(x)
    features = model.deit(x).last_hidden_state[:, :2].mean(dim=1)
    return torch.stack([out.logits, out.cls_logits, out.distillation_logits]), features


def our_outputs(cfg, dtype, batch: int, seed: int) -> tuple[dict, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Our model on perturbed weights and random images: (params, images, logits, the features the classifier reads);
    a distilled DeiT's logits stacked with its two heads', as timm_outputs stacks them. The attention maps are freed
    on return."""
    model = family_of(cfg).model
    params = perturbed(model.init_params(cfg, torch.Generator().manual_seed(seed)), seed, dtype)
    x = torch.randn(batch, cfg.in_channels, *cfg.image_size, generator=torch.Generator().manual_seed(seed + 1),
                    dtype=dtype)
    logits, out = model.forward_intermediates(params, x, cfg)
    if getattr(cfg, "distilled", False):
        logits = torch.stack([logits, *heads(params, out["hidden"][-1], cfg)])
    return params, x, logits, out["features"]


def vit_row(cfg, dtype, batch: int, seed: int) -> dict:
    """A ViT's (or DeiT's) differences to timm ("timm_*") and transformers ("hf_*"), and their parameter counts."""
    row = {}
    params, x, logits, features = our_outputs(cfg, dtype, batch, seed)
    with torch.device("meta"):                       # build without allocating, then adopt the converted tensors
        model = timm_vit(cfg)
    model.load_state_dict(to_timm(params, cfg), assign=True)
    model.eval()
    row["timm"] = sum(p.numel() for p in model.parameters())
    theirs, their_features = timm_outputs(model, x, cfg)
    row["timm_logits"], row["timm_features"] = diffs(logits, theirs), diffs(features, their_features)
    del model, theirs, their_features
    gc.collect()

    sd, config = to_hf(params, cfg)
    with torch.device("meta"):
        model = hf_vit(cfg)
    model.load_state_dict(sd, assign=True)
    del sd
    model.eval()
    row["hf"] = sum(p.numel() for p in model.parameters())
    theirs, their_features = hf_outputs(model, x, cfg)
    row["hf_logits"], row["hf_features"] = diffs(logits, theirs), diffs(features, their_features)
    del model, theirs, their_features, params
    gc.collect()
    return row


def swin_row(cfg, dtype, batch: int, seed: int) -> dict:
    """A Swin's differences to timm ("timm_*") and torchvision ("torchvision_*"), and their parameter counts."""
    row = {}
    params, x, logits, features = our_outputs(cfg, dtype, batch, seed)
    model = with_weights(timm_swin, cfg, to_timm_swin(params, cfg))
    row["timm"] = sum(p.numel() for p in model.parameters())
    theirs = model.forward_head(model.forward_features(x), pre_logits=True)      # pooled, before the classifier
    row["timm_logits"], row["timm_features"] = diffs(logits, model.head.fc(theirs)), diffs(features, theirs)
    model = with_weights(torchvision_swin, cfg, to_torchvision_swin(params, cfg))
    row["torchvision"] = sum(p.numel() for p in model.parameters())
    theirs = torchvision_features(model, x)
    row["torchvision_logits"], row["torchvision_features"] = diffs(logits, model.head(theirs)), diffs(features, theirs)
    return row


def hybrid_row(cfg, dtype, batch: int, seed: int) -> dict:
    """A hybrid's differences to timm's hybrid holding our state dict ("timm_*") and holding what timm's npz loader
    reads from our official .npz ("npz_*"), and their parameter counts."""
    from timm.models.vision_transformer import _load_weights

    row = {}
    params, x, logits, features = our_outputs(cfg, dtype, batch, seed)
    for key in ("timm", "npz"):
        with torch.device("meta"):                   # build without allocating, then take our tensors
            model = timm_vit(cfg).to(dtype).eval()
        if key == "timm":
            model.load_state_dict(to_timm(params, cfg), assign=True)
        else:                                        # timm's loader copies into allocated (unset) tensors
            npz = io.BytesIO()
            np.savez(npz, **to_npz(params, cfg))
            npz.seek(0)
            model.to_empty(device="cpu")
            _load_weights(model, npz)
            del npz
        row[key] = sum(p.numel() for p in model.parameters())
        theirs, their_features = timm_outputs(model, x, cfg)
        row[f"{key}_logits"], row[f"{key}_features"] = diffs(logits, theirs), diffs(features, their_features)
        del model, theirs, their_features
        gc.collect()
    return row


def table_of(cfg) -> str:
    """The table a config's row is in (ROWS, SECOND): its family's, a hybrid's own."""
    return "hybrid" if getattr(cfg, "backbone", None) else family_of(cfg).name


# Per table: its row, and the reference beside timm ("hf" for a ViT, "torchvision" for a Swin, timm's npz loader for
# a hybrid).
ROWS = {"vit": vit_row, "hybrid": hybrid_row, "swin": swin_row}
SECOND = {"vit": ("hf", "HF"), "hybrid": ("npz", "timm from .npz"), "swin": ("torchvision", "torchvision")}


@torch.no_grad()
def verify_config(cfg, dtype=torch.float64, batch: int = 1, seed: int = 0, name: str | None = None) -> dict:
    """One row of paper.verify's table: the differences to the family's references, and the parameter counts."""
    row = {"model": name or model_name(cfg) or "custom", "dtype": str(dtype).removeprefix("torch."),
           "ours": param_count(cfg)}
    return row | ROWS[table_of(cfg)](cfg, dtype, batch, seed)


def available_bytes() -> int:
    """MemAvailable from /proc/meminfo (Linux)."""
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    raise OSError("/proc/meminfo has no MemAvailable")


def verify(models, dtypes=("float32", "float64"), batch: int = 1, seed: int = 0) -> list[dict]:
    """verify_config for every model and dtype that fits in memory; the others get a row saying why not."""
    rows = []
    jobs = [(m, d) for m in models for d in dtypes]
    for name, dtype_name in tqdm(jobs, desc="verify", unit="run", file=sys.stderr):
        cfg, dtype = paper_config(name), DTYPES[dtype_name]
        need, free = bytes_to_verify(cfg, dtype, batch), available_bytes()
        if need > free:
            rows.append({"model": name, "dtype": dtype_name, "ours": param_count(cfg),
                         "skipped": f"not run: needs ~{need / 2**30:.1f} GiB, {free / 2**30:.1f} GiB free"})
            continue
        rows.append(verify_config(cfg, dtype, batch, seed, name))
    return rows
