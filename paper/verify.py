"""Verify numerical equivalence: our forward against timm's and transformers' on the same random weights.

For each config: build random weights, load them into our model, into timm's VisionTransformer and into
transformers' ViTForImageClassification, run one batch, and print the largest absolute and relative differences of
the logits and of the features (y of eq. (4), what the classifier reads), in float32 and float64, next to the
parameter counts of all three and the paper's. Relative means max |ours − theirs| / max |theirs|. Configs that
would not fit in free memory are listed, not run. A distilled DeiT is checked against timm's
VisionTransformerDistilled and transformers' DeiTForImageClassificationWithTeacher; its logits columns take the
largest difference over the evaluation logits (the two heads' mean) and each head's logits, and its features are the
mean of the two tokens' (timm's pre_logits).

    python -m paper.verify                                 # every paper model, ViT's and DeiT's
    python -m paper.verify --models ViT-B/16 --dtypes float64
    python -m paper.verify --models DeiT-B⚗ deit_tiny_distilled_patch16_224
"""
import argparse
import gc
import sys

import torch
from tqdm import tqdm

import lowlevel as vit
from lowlevel.model import heads
from paper.configs import DEIT_MODELS, PAPER_MODELS, model_name, paper_config, paper_params, param_count
from paper.dtypes import DTYPES
from paper.formats.huggingface import to_hf
from paper.formats.timm import to_timm
from paper.reference_models import hf_vit, timm_vit
from paper.weights import perturbed

VERIFY_DTYPES = ("float32", "float64")


def available_bytes() -> int:
    """MemAvailable from /proc/meminfo (Linux)."""
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    raise OSError("/proc/meminfo has no MemAvailable")


def bytes_needed(cfg, dtype, batch: int) -> int:
    """Two copies of the weights (ours and one reference at a time), our kept attention maps and hidden states,
    and the float32 weights they are drawn from."""
    size = torch.finfo(dtype).bits // 8
    weights = param_count(cfg) * (2 * size + 4)
    n = cfg.num_tokens
    activations = batch * cfg.depth * (cfg.num_heads * n * n + 8 * n * cfg.dim + n * cfg.mlp_dim) * size
    return weights + activations


def diffs(ours: torch.Tensor, theirs: torch.Tensor) -> tuple[float, float]:
    """(max |ours − theirs|, max |ours − theirs| / max |theirs|)."""
    d = (ours - theirs).abs().max().item()
    return d, d / theirs.abs().max().item()


def timm_outputs(model, x: torch.Tensor, cfg) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, features) of timm's model; for VisionTransformerDistilled the logits are its evaluation output and
    its two heads' (what distilled training returns, deit.py forward_head), stacked."""
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


@torch.no_grad()
def verify_config(cfg, dtype=torch.float64, batch: int = 1, seed: int = 0, name: str | None = None) -> dict:
    """One row of the table: differences to timm and transformers, and the parameter counts."""
    row = {"model": name or model_name(cfg) or "custom", "dtype": str(dtype).removeprefix("torch."),
           "ours": param_count(cfg)}
    params = perturbed(vit.init_params(cfg, torch.Generator().manual_seed(seed)), seed, dtype)
    x = torch.randn(batch, cfg.in_channels, *cfg.image_size, generator=torch.Generator().manual_seed(seed + 1),
                    dtype=dtype)
    logits, out = vit.forward_intermediates(params, x, cfg)
    if cfg.distilled:
        logits = torch.stack([logits, *heads(params, out["hidden"][-1], cfg)])
    features = out["features"]
    del out

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


def format_table(rows: list[dict]) -> str:
    """A markdown table: one row per (model, dtype)."""
    head = ("| model | dtype | logits vs timm (abs / rel) | features vs timm | logits vs HF | features vs HF | "
            "params ours | timm | HF | paper |")
    lines = [head, "|" + "---|" * head.count(" | ") + "---|"]
    for r in rows:
        if "skipped" in r:
            lines.append(f"| {r['model']} | {r['dtype']} | {r['skipped']} | | | | {r['ours']:,} | | | "
                         f"{paper_params(r['model'])} |")
            continue
        cells = [f"{a:.1e} / {b:.1e}" for a, b in (r["timm_logits"], r["timm_features"], r["hf_logits"],
                                                    r["hf_features"])]
        lines.append(f"| {r['model']} | {r['dtype']} | {' | '.join(cells)} | {r['ours']:,} | {r['timm']:,} | "
                     f"{r['hf']:,} | {paper_params(r['model'])} |")
    return "\n".join(lines)


def verify(models=PAPER_MODELS + DEIT_MODELS, dtypes=VERIFY_DTYPES, batch: int = 1, seed: int = 0) -> list[dict]:
    """verify_config for every model and dtype that fits in memory; the others get a row saying why not."""
    rows = []
    jobs = [(m, d) for m in models for d in dtypes]
    for name, dtype_name in tqdm(jobs, desc="verify", unit="run", file=sys.stderr):
        cfg, dtype = paper_config(name), DTYPES[dtype_name]
        need, free = bytes_needed(cfg, dtype, batch), available_bytes()
        if need > free:
            rows.append({"model": name, "dtype": dtype_name, "ours": param_count(cfg),
                         "skipped": f"not run: needs ~{need / 2**30:.1f} GiB, {free / 2**30:.1f} GiB free"})
            continue
        rows.append(verify_config(cfg, dtype, batch, seed, name))
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m paper.verify", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(PAPER_MODELS + DEIT_MODELS), metavar="NAME",
                        help=f"paper or timm model names (default: {' '.join(PAPER_MODELS + DEIT_MODELS)})")
    parser.add_argument("--dtypes", nargs="+", choices=VERIFY_DTYPES, default=list(VERIFY_DTYPES),
                        help="precisions to compare in (default: both)")
    parser.add_argument("--batch", type=int, default=1, help="images per forward (default 1, so ViT-H/14 in float64 "
                                                             "fits in 24 GiB)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights and images (default 0)")
    args = parser.parse_args(argv)
    if args.batch < 1:
        parser.error(f"--batch: expected a positive number of images, got {args.batch}")
    try:
        for name in args.models:
            paper_config(name)
    except ValueError as e:
        parser.error(str(e))
    print(format_table(verify(args.models, args.dtypes, args.batch, args.seed)))


if __name__ == "__main__":
    main()
