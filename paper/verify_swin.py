"""`python -m paper.verify` for the Swin models: our forward against timm's SwinTransformer and torchvision's
SwinTransformer on the same random weights, the largest differences of the logits and of the pooled features, and
the three parameter counts (paper.verify's format_table shows them beside Table 1's). At the models' 224 px every
stage is whole windows, so one set of weights (our config keeps timm's conventions) is compared with both."""
import math

import torch

from lowlevel import SwinConfig, swin

from .configs import param_count
from .formats.huggingface_swin import to_hf_swin
from .formats.timm_swin import to_timm_swin
from .formats.torchvision_swin import to_torchvision_swin
from .reference_swin import hf_swin, timm_swin, torchvision_swin, with_weights
from .swin_configs import swin_model_name


def swin_bytes_needed(cfg: SwinConfig, dtype, batch: int) -> int:
    """Two copies of the weights (ours and one reference at a time), the float32 weights they are drawn from, and
    our kept attention maps (B·nW·heads·N², i.e. tokens·heads·N) and hidden maps."""
    size = torch.finfo(dtype).bits // 8
    weights = param_count(cfg) * (2 * size + 4)
    n = cfg.window_size ** 2
    activations = sum(batch * depth * math.prod(hw) * (heads * n + 8 * c + m) * size for depth, hw, heads, c, m in
                      zip(cfg.depths, cfg.stage_sizes, cfg.num_heads, cfg.stage_dims, cfg.mlp_dims, strict=True))
    return weights + activations


def torchvision_features(model, images: torch.Tensor) -> torch.Tensor:
    """What torchvision's SwinTransformer.forward hands its head: features, norm, permute, average pool, flatten."""
    return model.flatten(model.avgpool(model.permute(model.norm(model.features(images)))))


@torch.no_grad()
def verify_swin_config(cfg: SwinConfig, dtype=torch.float64, batch: int = 1, seed: int = 0,
                       name: str | None = None) -> dict:
    """One row of the Swin table: differences to timm and torchvision, and the parameter counts."""
    from .verify import diffs, our_outputs  # here, not above: paper.verify imports this module
    row = {"model": name or swin_model_name(cfg) or "custom", "dtype": str(dtype).removeprefix("torch."),
           "ours": param_count(cfg)}
    params, x, logits, features = our_outputs(swin, cfg, dtype, batch, seed)
    model = with_weights(timm_swin, cfg, to_timm_swin(params, cfg))
    row["timm"] = sum(p.numel() for p in model.parameters())
    theirs = model.forward_head(model.forward_features(x), pre_logits=True)      # pooled, before the classifier
    row["timm_logits"], row["timm_features"] = diffs(logits, model.head.fc(theirs)), diffs(features, theirs)
    model = with_weights(torchvision_swin, cfg, to_torchvision_swin(params, cfg))
    row["torchvision"] = sum(p.numel() for p in model.parameters())
    theirs = torchvision_features(model, x)
    row["torchvision_logits"], row["torchvision_features"] = diffs(logits, model.head(theirs)), diffs(features, theirs)
    return row


@torch.no_grad()
def swin_reference_logits(name: str, params: dict, cfg: SwinConfig, images: torch.Tensor) -> torch.Tensor:
    """paper.verify's reference logits for a Swin checkpoint: timm's, transformers' or torchvision's model holding
    `params`; a ValueError when its code cannot express cfg (its conventions change the function at this size)."""
    if name == "timm":
        return with_weights(timm_swin, cfg, to_timm_swin(params, cfg))(images)
    if name == "transformers":                       # built whole: with_weights cannot recompute its index buffers
        model = hf_swin(cfg).to(images.dtype).eval()
        model.load_state_dict(to_hf_swin(params, cfg))
        return model(images).logits
    return with_weights(torchvision_swin, cfg, to_torchvision_swin(params, cfg))(images)
