"""Verify numerical equivalence: our forward against timm's and transformers' on the same random weights (a Swin:
against timm's and torchvision's, paper/verify_swin.py).

For each config: build random weights, load them into our model, into timm's VisionTransformer and into
transformers' ViTForImageClassification, run one batch, and print the largest absolute and relative differences of
the logits and of the features (y of eq. (4), what the classifier reads), in float32 and float64, next to the
parameter counts of all three and the paper's. Relative means max |ours − theirs| / max |theirs|. Configs that
would not fit in free memory are listed, not run.

    python -m paper.verify                                 # every paper model, ViT and Swin
    python -m paper.verify --models ViT-B/16 Swin-T --dtypes float64
"""
import argparse
import gc
import sys

import torch
from tqdm import tqdm

import lowlevel as vit
from paper.configs import PAPER_MODELS, TABLE1_PARAMS, model_name, paper_config, param_count, parse_name
from paper.dtypes import DTYPES
from paper.formats.huggingface import to_hf
from paper.formats.timm import to_timm
from paper.reference_models import hf_vit, timm_vit
from paper.swin_configs import SWIN_MODELS, SWIN_TABLE1_PARAMS, parse_swin_name
from paper.verify_swin import swin_bytes_needed, verify_swin_config
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


def our_outputs(model, cfg, dtype, batch: int, seed: int) -> tuple[dict, torch.Tensor, torch.Tensor, torch.Tensor]:
    """`model` (lowlevel, or lowlevel.swin) on perturbed weights and random images: (params, images, logits, the
    features the classifier reads). The attention maps are freed on return."""
    params = perturbed(model.init_params(cfg, torch.Generator().manual_seed(seed)), seed, dtype)
    x = torch.randn(batch, cfg.in_channels, *cfg.image_size, generator=torch.Generator().manual_seed(seed + 1),
                    dtype=dtype)
    logits, out = model.forward_intermediates(params, x, cfg)
    return params, x, logits, out["features"]


@torch.no_grad()
def verify_config(cfg, dtype=torch.float64, batch: int = 1, seed: int = 0, name: str | None = None) -> dict:
    """One row of the table: differences to timm and transformers, and the parameter counts."""
    row = {"model": name or model_name(cfg) or "custom", "dtype": str(dtype).removeprefix("torch."),
           "ours": param_count(cfg)}
    params, x, logits, features = our_outputs(vit, cfg, dtype, batch, seed)

    with torch.device("meta"):                       # build without allocating, then adopt the converted tensors
        model = timm_vit(cfg)
    model.load_state_dict(to_timm(params, cfg), assign=True)
    model.eval()
    row["timm"] = sum(p.numel() for p in model.parameters())
    theirs = model.forward_head(model.forward_features(x), pre_logits=True)
    row["timm_logits"], row["timm_features"] = diffs(logits, model.head(theirs)), diffs(features, theirs)
    del model, theirs
    gc.collect()

    sd, config = to_hf(params, cfg)
    with torch.device("meta"):
        model = hf_vit(cfg)
    model.load_state_dict(sd, assign=True)
    del sd
    model.eval()
    row["hf"] = sum(p.numel() for p in model.parameters())
    theirs = model.vit(x).last_hidden_state[:, 0]    # ViTForImageClassification.forward: classifier(LN(z_L)[:, 0])
    row["hf_logits"], row["hf_features"] = diffs(logits, model.classifier(theirs)), diffs(features, theirs)
    del model, theirs, params
    gc.collect()
    return row


def paper_count(name: str) -> str:
    swin = parse_swin_name(name)
    if swin:
        return SWIN_TABLE1_PARAMS[swin[0]]
    try:
        return TABLE1_PARAMS.get(parse_name(name)[0], "-")
    except ValueError:
        return "-"


def format_table(rows: list[dict], second: str = "hf", label: str = "HF") -> str:
    """A markdown table: one row per (model, dtype), against timm and the `second` reference (rows' keys
    "{second}_logits", "{second}_features", "{second}": transformers for a ViT, torchvision for a Swin)."""
    head = (f"| model | dtype | logits vs timm (abs / rel) | features vs timm | logits vs {label} | features vs {label} | "
            f"params ours | timm | {label} | paper |")
    lines = [head, "|" + "---|" * head.count(" | ") + "---|"]
    for r in rows:
        if "skipped" in r:
            lines.append(f"| {r['model']} | {r['dtype']} | {r['skipped']} | | | | {r['ours']:,} | | | "
                         f"{paper_count(r['model'])} |")
            continue
        cells = [f"{a:.1e} / {b:.1e}" for a, b in (r["timm_logits"], r["timm_features"], r[f"{second}_logits"],
                                                    r[f"{second}_features"])]
        lines.append(f"| {r['model']} | {r['dtype']} | {' | '.join(cells)} | {r['ours']:,} | {r['timm']:,} | "
                     f"{r[second]:,} | {paper_count(r['model'])} |")
    return "\n".join(lines)


def verify(models=PAPER_MODELS, dtypes=VERIFY_DTYPES, batch: int = 1, seed: int = 0) -> list[dict]:
    """verify_config for every model and dtype that fits in memory; the others get a row saying why not."""
    rows = []
    jobs = [(m, d) for m in models for d in dtypes]
    for name, dtype_name in tqdm(jobs, desc="verify", unit="run", file=sys.stderr):
        cfg, dtype = paper_config(name), DTYPES[dtype_name]
        swin = parse_swin_name(name) is not None
        need, free = (swin_bytes_needed if swin else bytes_needed)(cfg, dtype, batch), available_bytes()
        if need > free:
            rows.append({"model": name, "dtype": dtype_name, "ours": param_count(cfg),
                         "skipped": f"not run: needs ~{need / 2**30:.1f} GiB, {free / 2**30:.1f} GiB free"})
            continue
        rows.append((verify_swin_config if swin else verify_config)(cfg, dtype, batch, seed, name))
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m paper.verify", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(PAPER_MODELS + SWIN_MODELS), metavar="NAME",
                        help=f"paper, timm or torchvision model names (default: {' '.join(PAPER_MODELS + SWIN_MODELS)})")
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
    rows = verify(args.models, args.dtypes, args.batch, args.seed)
    vit_rows = [r for r in rows if not parse_swin_name(r["model"])]
    swin_rows = [r for r in rows if parse_swin_name(r["model"])]
    print("\n\n".join(([format_table(vit_rows)] if vit_rows else []) +
                      ([format_table(swin_rows, "torchvision", "torchvision")] if swin_rows else [])))


if __name__ == "__main__":
    main()
