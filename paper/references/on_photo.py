"""Your checkpoint on a photo: its weights, in any format paper.formats reads, run through our model and through
timm, transformers and torchvision (each where it can express the config), on a real photo (default: scikit-learn's
bundled china.jpg) prepared with the checkpoint's preprocessing: the largest absolute and relative logit differences
to ours, top-5 agreement and the top-5 classes side by side."""
import gc
import os
import warnings

import torch

from paper import cli
from paper.formats.checkpoints import heads_source, read_checkpoint, read_preprocessing
from paper.formats.fields import Preprocessing
from paper.formats.files import json_value, read_json, regular_file
from paper.formats.huggingface import to_hf
from paper.formats.huggingface_swin import to_hf_swin
from paper.formats.timm import to_timm
from paper.formats.timm_swin import to_timm_swin
from paper.formats.torchvision import to_torchvision
from paper.formats.torchvision_swin import to_torchvision_swin
from paper.models.dtypes import DTYPES
from paper.models.family import family_of, model_name
from paper.models.finite import require_finite
from paper.references.equivalence import diffs
from paper.references.swin import hf_swin, timm_swin, torchvision_swin, with_weights
from paper.references.vit import hf_vit, timm_vit, torchvision_vit

REFERENCES = ("timm", "transformers", "torchvision")


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


def vit_reference_logits(name: str, params: dict, cfg, x: torch.Tensor) -> torch.Tensor:
    """Logits of timm's, transformers' or torchvision's ViT holding `params` (built on the meta device, then given our
    tensors); a ValueError when it cannot express cfg."""
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


def swin_reference_logits(name: str, params: dict, cfg, images: torch.Tensor) -> torch.Tensor:
    """Logits of timm's, transformers' or torchvision's Swin holding `params`; a ValueError when its code cannot
    express cfg (its conventions change the function at this size)."""
    if name == "timm":
        return with_weights(timm_swin, cfg, to_timm_swin(params, cfg))(images)
    if name == "transformers":                       # built whole: with_weights cannot recompute its index buffers
        model = hf_swin(cfg).to(images.dtype).eval()
        model.load_state_dict(to_hf_swin(params, cfg))
        return model(images).logits
    return with_weights(torchvision_swin, cfg, to_torchvision_swin(params, cfg))(images)


REFERENCE_LOGITS = {"vit": vit_reference_logits, "swin": swin_reference_logits}    # by family name


def top5(logits: torch.Tensor, names: list[str] | None, classes: int) -> tuple[list[int], str]:
    """The five most probable classes, and a cell listing them with their probabilities (none without a
    classifier: then the features are compared)."""
    if not classes:
        return [], "- (no classifier: the features y of eq. (4) are compared)"
    probs = logits[0].double().softmax(-1)
    best = probs.topk(min(5, probs.numel())).indices.tolist()
    return best, ", ".join(f"{i}{' ' + names[i] if names else ''} ({100 * probs[i]:.1f}%)" for i in best)


@torch.no_grad()
def verify_checkpoint(path, image=None, dtypes=("float32", "float64"), **overrides) -> dict:
    """Run the checkpoint at `path` through ours and every reference that can express it, on the photo `image`.
    -> {"header": lines saying what ran on what, "image": the prepared (1, C, H, W) float64 batch, "rows": one per
    (implementation, dtype)}."""
    cfg, params, fmt = read_checkpoint(path, **overrides)
    require_finite(params, f"checkpoint: {path}")
    family = family_of(cfg)
    preprocessing = read_preprocessing(path, fmt, cfg.in_channels)
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
        ours = family.model.forward(cast, x.to(dtype), cfg)
        best, cell = top5(ours, names, cfg.num_classes)
        rows.append({"implementation": "ours", "dtype": dtype_name, "top5": cell})
        for name in REFERENCES:
            try:
                theirs = REFERENCE_LOGITS[family.name](name, cast, cfg, x.to(dtype))
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
