"""Verify numerical equivalence: our forward against timm's, transformers' and torchvision's (a Swin: against
timm's and torchvision's, paper/verify_swin.py).

Paper models (default): for each config, build random weights, load them into our model, into timm's
VisionTransformer and into transformers' ViTForImageClassification, run one batch, and print the largest absolute
and relative differences of the logits and of the features (y of eq. (4), what the classifier reads), in float32 and
float64, next to the parameter counts of all three and the paper's. Relative means max |ours − theirs| / max |theirs|.
Configs that would not fit in free memory are listed, not run. A distilled DeiT is checked against timm's
VisionTransformerDistilled and transformers' DeiTForImageClassificationWithTeacher; its logits columns take the
largest difference over the evaluation logits (the two heads' mean) and each head's logits, and its features are the
mean of the two tokens' (timm's pre_logits).

The Swin models (Swin-T/S/B) are checked the same way against timm's and torchvision's SwinTransformer, in a table
of their own.

Your checkpoint (--checkpoint): its weights, in any format paper.convert reads, run through our model and through
timm, transformers and torchvision (each where it can express the config) on a real photo (default: scikit-learn's
bundled china.jpg) prepared with the checkpoint's preprocessing; printed: the max absolute and relative logit
differences to ours, top-5 agreement and the top-5 classes side by side.

    python -m paper.verify                                 # every paper model: ViT's, DeiT's and Swin's
    python -m paper.verify --models ViT-B/16 Swin-T --dtypes float64
    python -m paper.verify --models DeiT-B⚗ deit_tiny_distilled_patch16_224
    python -m paper.verify --checkpoint vit_b_16.pth --image cat.jpg
"""
import gc
import os
import sys
import warnings

import torch
from tqdm import tqdm

import lowlevel as vit
from lowlevel import SwinConfig, swin
from lowlevel.model import heads
from paper import cli
from paper.checkpoints import heads_source, read_checkpoint, read_preprocessing
from paper.configs import DEIT_MODELS, PAPER_MODELS, model_name, paper_config, paper_params, param_count
from paper.dtypes import DTYPES
from paper.formats.fields import Preprocessing
from paper.formats.files import json_value, read_json, regular_file
from paper.formats.huggingface import to_hf
from paper.formats.timm import to_timm
from paper.formats.torchvision import to_torchvision
from paper.reference_models import hf_vit, timm_vit, torchvision_vit
from paper.swin_configs import SWIN_MODELS, parse_swin_name
from paper.verify_swin import swin_bytes_needed, swin_reference_logits, verify_swin_config
from paper.weights import perturbed

VERIFY_DTYPES = ("float32", "float64")
DEFAULT_MODELS = PAPER_MODELS + DEIT_MODELS + SWIN_MODELS


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


def our_outputs(model, cfg, dtype, batch: int, seed: int) -> tuple[dict, torch.Tensor, torch.Tensor, torch.Tensor]:
    """`model` (lowlevel, or lowlevel.swin) on perturbed weights and random images: (params, images, logits, the
    features the classifier reads); a distilled DeiT's logits stacked with its two heads', as timm_outputs stacks
    them. The attention maps are freed on return."""
    params = perturbed(model.init_params(cfg, torch.Generator().manual_seed(seed)), seed, dtype)
    x = torch.randn(batch, cfg.in_channels, *cfg.image_size, generator=torch.Generator().manual_seed(seed + 1),
                    dtype=dtype)
    logits, out = model.forward_intermediates(params, x, cfg)
    if isinstance(cfg, vit.ViTConfig) and cfg.distilled:
        logits = torch.stack([logits, *heads(params, out["hidden"][-1], cfg)])
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


def format_table(rows: list[dict], second: str = "hf", label: str = "HF") -> str:
    """A markdown table: one row per (model, dtype), against timm and the `second` reference (rows' keys
    "{second}_logits", "{second}_features", "{second}": transformers for a ViT, torchvision for a Swin)."""
    head = (f"| model | dtype | logits vs timm (abs / rel) | features vs timm | logits vs {label} | features vs {label} | "
            f"params ours | timm | {label} | paper |")
    lines = [head, "|" + "---|" * head.count(" | ") + "---|"]
    for r in rows:
        if "skipped" in r:
            lines.append(f"| {r['model']} | {r['dtype']} | {r['skipped']} | | | | {r['ours']:,} | | | "
                         f"{paper_params(r['model'])} |")
            continue
        cells = [f"{a:.1e} / {b:.1e}" for a, b in (r["timm_logits"], r["timm_features"], r[f"{second}_logits"],
                                                    r[f"{second}_features"])]
        lines.append(f"| {r['model']} | {r['dtype']} | {' | '.join(cells)} | {r['ours']:,} | {r['timm']:,} | "
                     f"{r[second]:,} | {paper_params(r['model'])} |")
    return "\n".join(lines)


def verify(models=DEFAULT_MODELS, dtypes=VERIFY_DTYPES, batch: int = 1, seed: int = 0) -> list[dict]:
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


# ---------------------------------------------------------------- your checkpoint on a photo

def sample_photo() -> str:
    """scikit-learn's bundled sample photo (a 427×640 JPEG of a Chinese temple), the default image: offline."""
    import sklearn.datasets
    return os.path.join(os.path.dirname(sklearn.datasets.__file__), "images", "china.jpg")


def open_photo(path, channels: int):
    """A PIL image with `channels` channels (3: RGB, 1: grey); a decompression bomb is refused, naming the file."""
    from PIL import Image

    regular_file(path)
    if channels not in (1, 3):
        raise ValueError(f"in_channels: expected 1 or 3 to run on a photo, got {channels}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                return image.convert("RGB" if channels == 3 else "L")
    except (OSError, Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ValueError(f"{path}: expected a readable photo, got an unreadable file ({e})") from e


def prepare(image, cfg, preprocessing: Preprocessing) -> torch.Tensor:
    """PIL image -> (1, C, H, W) float64, as torchvision's ImageClassification preset does it: resize (bilinear,
    antialiased) the shorter side to size / crop_pct and centre-crop, or resize straight to the size when crop_pct is
    None; scale to [0, 1]; (x − mean) / std."""
    import torchvision.transforms.functional as TF

    h, w = cfg.image_size
    if preprocessing.crop_pct:
        image = TF.center_crop(TF.resize(image, round(min(h, w) / preprocessing.crop_pct)), [h, w])
    else:
        image = TF.resize(image, [h, w])
    x = TF.convert_image_dtype(TF.pil_to_tensor(image), torch.float64)
    return TF.normalize(x, list(preprocessing.mean), list(preprocessing.std))[None]


def class_names(path, fmt: str, num_classes: int) -> list[str] | None:
    """The label of each class when the checkpoint names them: transformers' id2label (unless its LABEL_i
    placeholders), a timm hub directory's pretrained_cfg label_names."""
    config_file = os.path.join(path, "config.json")
    if fmt not in ("hf", "timm-hub") or not os.path.isfile(config_file):
        return None
    config = read_json(config_file)
    if fmt == "hf":
        labels = json_value(config, "id2label", "an object", config_file, {})
        names = [str(labels.get(str(i), "")) for i in range(num_classes)]
        return None if all(n in ("", f"LABEL_{i}") for i, n in enumerate(names)) else names
    pretrained = json_value(config, "pretrained_cfg", "an object", config_file, {})
    names = pretrained.get("label_names")
    return [str(n) for n in names] if isinstance(names, list) and len(names) == num_classes else None


@torch.no_grad()
def reference_logits(name: str, params: dict, cfg, x: torch.Tensor) -> torch.Tensor:
    """Logits of one independent implementation holding `params` (built on the meta device, then given our tensors);
    a ValueError when it cannot express cfg."""
    if isinstance(cfg, SwinConfig):
        return swin_reference_logits(name, params, cfg, x)
    if name == "timm":
        with torch.device("meta"):
            model = timm_vit(cfg)
        model.load_state_dict(to_timm(params, cfg), assign=True)
        return model.eval()(x)
    if name == "transformers":
        sd, _ = to_hf(params, cfg)
        with torch.device("meta"):
            model = hf_vit(cfg)
        model.load_state_dict(sd, assign=True)
        out = model.eval()(x)
        if cfg.num_classes:
            return out.logits
        return out.pooler_output if cfg.representation_size else out.last_hidden_state[:, 0]   # eq. (4)'s y
    with torch.device("meta"):
        model = torchvision_vit(cfg)
    model.load_state_dict(to_torchvision(params, cfg), assign=True)
    return model.eval()(x)


REFERENCES = ("timm", "transformers", "torchvision")


def top5(logits: torch.Tensor, names: list[str] | None, classes: int) -> tuple[list[int], str]:
    """The five most probable classes, and a cell listing them with their probabilities (none without a
    classifier: then the features are compared)."""
    if not classes:
        return [], "- (no classifier: the features y of eq. (4) are compared)"
    probs = logits[0].double().softmax(-1)
    best = probs.topk(min(5, probs.numel())).indices.tolist()
    return best, ", ".join(f"{i}{' ' + names[i] if names else ''} ({100 * probs[i]:.1f}%)" for i in best)


def verify_checkpoint(path, image=None, dtypes=("float32", "float64"), **overrides) -> dict:
    """Run the checkpoint at `path` through ours and every reference that can express it, on the photo `image`.
    -> {"header": lines saying what ran on what, "image": the prepared (1, C, H, W) float64 batch, "rows": one per
    (implementation, dtype)}."""
    cfg, params, fmt = read_checkpoint(path, **overrides)
    preprocessing = read_preprocessing(path, fmt)
    image = image or sample_photo()
    x = prepare(open_photo(image, cfg.in_channels), cfg, preprocessing)
    names = class_names(path, fmt, cfg.num_classes) if cfg.num_classes else None
    heads = "--num-heads" if "num_heads" in overrides else heads_source(path, fmt, cfg)
    h, w = cfg.image_size
    resize = (f"shorter side to {round(min(h, w) / preprocessing.crop_pct)}, centre crop {h}x{w}"
              if preprocessing.crop_pct else f"resized to {h}x{w}")
    header = [f"checkpoint: {path} ({fmt}), {model_name(cfg) or 'custom'}, {h}x{w}, {cfg.num_heads} heads ({heads}), "
              f"{cfg.num_classes} classes, eps {cfg.layer_norm_eps:g}, GELU {cfg.gelu}",
              f"image: {image}, {resize}, mean {tuple(preprocessing.mean)}, std {tuple(preprocessing.std)} "
              f"(from {preprocessing.source})"]
    rows = []
    for dtype_name in dtypes:
        dtype = DTYPES[dtype_name]
        cast = {k: v.to(dtype) for k, v in params.items()}
        with torch.no_grad():
            ours = (swin if isinstance(cfg, SwinConfig) else vit).forward(cast, x.to(dtype), cfg)
        best, cell = top5(ours, names, cfg.num_classes)
        rows.append({"implementation": "ours", "dtype": dtype_name, "top5": cell})
        for name in REFERENCES:
            try:
                theirs = reference_logits(name, cast, cfg, x.to(dtype))
            except ValueError as e:
                rows.append({"implementation": name, "dtype": dtype_name, "skipped": cli.one_line(e)})
                continue
            abs_diff, rel_diff = diffs(ours, theirs)
            their_best, cell = top5(theirs, names, cfg.num_classes)
            rows.append({"implementation": name, "dtype": dtype_name, "max_abs": abs_diff, "max_rel": rel_diff,
                         "top5_agree": len(set(best) & set(their_best)), "top5_of": len(best),
                         "top5_same_order": best == their_best,
                         "top5": cell})
        del cast
        gc.collect()
    return {"header": header, "image": x, "rows": rows}


def format_checkpoint_table(result: dict) -> str:
    head = "| implementation | dtype | max abs logit diff vs ours | max rel | top-5 agree | top-5 classes (probability) |"
    lines = [*result["header"], "", head, "|---|---|---|---|---|---|"]
    for r in result["rows"]:
        if "skipped" in r:
            lines.append(f"| {r['implementation']} | {r['dtype']} | not run: {r['skipped']} | | | |")
        elif r["implementation"] == "ours":
            lines.append(f"| ours | {r['dtype']} | - | - | - | {r['top5']} |")
        else:
            order = ", same order" if r["top5_same_order"] else ""
            agree = f"{r['top5_agree']}/{r['top5_of']}{order}" if r["top5_of"] else "-"
            lines.append(f"| {r['implementation']} | {r['dtype']} | {r['max_abs']:.1e} | {r['max_rel']:.1e} | "
                         f"{agree} | {r['top5']} |")
    return "\n".join(lines)



def main(argv=None) -> None:
    parser = cli.parser("python -m paper.verify", __doc__)
    parser.add_argument("--models", nargs="+", metavar="NAME",
                        help=f"paper, timm or torchvision model names (default: {' '.join(DEFAULT_MODELS)})")
    parser.add_argument("--checkpoint", help="verify this checkpoint's own weights instead (any format paper.convert "
                                             "reads)")
    parser.add_argument("--image", help="the photo for --checkpoint (default: scikit-learn's bundled china.jpg)")
    parser.add_argument("--num-heads", type=cli.positive, help="with --checkpoint: the head count, when the checkpoint "
                                                           "does not store it and matches no known architecture")
    parser.add_argument("--image-size", type=cli.positive, nargs=2, metavar=("H", "W"),
                        help="with --checkpoint: the image size, when its file does not store it (a non-square ViT, "
                             "a Swin at another size than its window's)")
    parser.add_argument("--dtypes", nargs="+", choices=VERIFY_DTYPES, default=list(VERIFY_DTYPES),
                        help="precisions to compare in (default: both)")
    parser.add_argument("--batch", type=cli.positive, default=1, help="images per forward for the paper models "
                                                                  "(default 1, so ViT-H/14 in float64 fits in 24 GiB)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights and images (default 0)")
    args = parser.parse_args(argv)
    if args.checkpoint is None:
        for flag in ("image", "num_heads", "image_size"):
            if getattr(args, flag) is not None:
                parser.error(f"--{flag.replace('_', '-')}: expected only with --checkpoint")
        models = args.models or list(DEFAULT_MODELS)
        for name in models:
            paper_config(name)
        rows = verify(models, args.dtypes, args.batch, args.seed)
        vit_rows = [r for r in rows if not parse_swin_name(r["model"])]
        swin_rows = [r for r in rows if parse_swin_name(r["model"])]
        print("\n\n".join(([format_table(vit_rows)] if vit_rows else []) +
                          ([format_table(swin_rows, "torchvision", "torchvision")] if swin_rows else [])))
        return
    if args.models:
        parser.error("--models: expected either --models or --checkpoint, got both")
    overrides = {k: v for k, v in (("num_heads", args.num_heads), ("image_size", args.image_size)) if v}
    print(format_checkpoint_table(verify_checkpoint(args.checkpoint, args.image, args.dtypes, **overrides)))


if __name__ == "__main__":
    cli.run(main)
