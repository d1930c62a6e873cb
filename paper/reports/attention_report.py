"""What `python -m paper.attention` computes and draws: a ViT's (or DeiT's) attention on the given photos, and what
its weights show without any photo, the paper's Fig. 6 and Fig. 7.

- Per photo: the class token's attention map for every head of every layer (row 0 of A_ℓ, one map per head), the
  attention rollout (Fig. 6), the mean attention distance of every head (Fig. 7 right), and the prediction.
- Per model: the cosine similarity of the learned position embeddings (Fig. 7 centre) and the principal components
  of the patch-embedding filters (Fig. 7 left).

The numbers are paper/analysis/maps.py's and filters.py's on `forward_intermediates`' attention, in float64, one
photo at a time; this module reads the checkpoint, prepares the photos as the checkpoint says, refuses what cannot
be drawn, and writes the PNGs and the JSON. Any format paper.formats reads is accepted, and our own paper.train
checkpoints (runs/*/finetune.pt), whose recorded preprocessing is applied as paper.training.data applies it.
"""
import dataclasses
import json
import math
import os
import zipfile
from pathlib import Path

import torch

from lowlevel import ViTConfig
from paper.analysis.filters import embedding_filters, principal_components
from paper.analysis.maps import attention_rollout, class_token_map, mean_attention_distance, position_similarity
from paper.formats.atomic import write_atomically, write_text
from paper.formats.checkpoints import read_checkpoint, read_preprocessing
from paper.formats.fields import Preprocessing
from paper.models.family import family_of, model_name
from paper.models.finite import require_finite
from paper.references.on_photo import class_names, open_photo, prepare
from paper.training.data import preprocess
from paper.training.state import KEYS, checkpoint_config, load_checkpoint, require_whole_model

OWN = "paper.train"            # the format name our own checkpoints are reported under
FILTER_COMPONENTS = 28         # Fig. 7 left shows the top 28
GREY_MODES = ("1", "L", "LA", "La", "I", "I;16", "F")     # PIL modes of a one-channel image
# Why a Swin has none of the ViT's global maps: per family name (paper/models/family.py), what cannot be drawn
REFUSED = {"swin": "a Swin has no class token and attends only inside its M×M windows (shifted every other "
                   "block), so it has no class-token map, no rollout over the image and no global attention "
                   "distance to draw"}


@dataclasses.dataclass(frozen=True)
class Model:
    """A checkpoint as this report uses it: the ViT's config and float64 params, where they came from, how a photo
    is prepared for it (`preprocessing`: a Preprocessing for paper.formats' formats, our checkpoints' recorded dict
    for ours) and its class names if the checkpoint has them."""
    path: str
    fmt: str
    cfg: ViTConfig
    params: dict
    preprocessing: Preprocessing | dict
    names: list[str] | None


def own_checkpoint(path) -> dict | None:
    """A checkpoint written by paper.train, loaded; None for anything else (a foreign state_dict, an .npz, a
    directory), which paper.formats then reads or refuses."""
    if not (os.path.isfile(path) and zipfile.is_zipfile(path)):
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001 (torch.load raises pickle, zip and OS errors alike: not ours, then)
        return None
    if not (isinstance(state, dict) and all(k in state for k in KEYS)):
        return None
    return load_checkpoint(str(path))


def with_flags(preprocessing: Preprocessing, mean, std, crop_pct) -> Preprocessing:
    """The checkpoint's preprocessing with what --mean, --std and --crop-pct give instead (crop_pct 0: resize
    straight to the image size, no crop)."""
    flags = {k: v for k, v in (("mean", mean), ("std", std), ("crop_pct", crop_pct)) if v is not None}
    if not flags:
        return preprocessing
    if "crop_pct" in flags:
        flags["crop_pct"] = flags["crop_pct"] or None
    given = ", ".join(f"--{k.replace('_', '-')}" for k in flags)
    return dataclasses.replace(preprocessing, **{k: tuple(v) if k != "crop_pct" else v for k, v in flags.items()},
                               source=f"{given}; the rest {preprocessing.source}")


def read_model(path, num_heads: int | None = None, image_size: tuple[int, int] | None = None, mean=None, std=None,
               crop_pct: float | None = None) -> Model:
    """Any checkpoint paper.formats reads, or one of ours; a Swin, a ResNet, a LoRA checkpoint and preprocessing that
    does not fit the model are refused, each in one line."""
    state = own_checkpoint(path)
    if state is not None:
        flags = [f for f, v in (("--mean", mean), ("--std", std), ("--crop-pct", crop_pct), ("--num-heads", num_heads),
                                ("--image-size", image_size)) if v is not None]
        if flags:
            raise ValueError(f"{' '.join(flags)}: expected none for a checkpoint of paper.train, which records its "
                             f"config and preprocessing, got {path}")
        require_whole_model(state, path)
        cfg = checkpoint_config(state)
        if not isinstance(cfg, ViTConfig):
            raise ValueError(f"checkpoint: expected a ViT's, got {path!r} holding a {state['model']!r}: a CNN has no "
                             f"attention to draw")
        fmt, params, preprocessing, names = OWN, state["params"], state["preprocessing"], None
    else:
        overrides = {k: v for k, v in (("num_heads", num_heads), ("image_size", image_size)) if v}
        cfg, params, fmt = read_checkpoint(path, **overrides)
        family = family_of(cfg)
        if family.name in REFUSED:
            raise ValueError(f"{path}: expected a ViT or DeiT, got a {family.title} ({fmt}): {REFUSED[family.name]}")
        mean, std = ([v[0]] * cfg.in_channels if v is not None and len(v) == 1 else v for v in (mean, std))
        preprocessing = with_flags(read_preprocessing(path, fmt), mean, std, crop_pct)
        for field in ("mean", "std"):
            values = getattr(preprocessing, field)
            if len(values) != cfg.in_channels:
                raise ValueError(f"{field}: expected {cfg.in_channels} values, one per channel of the model, got "
                                 f"{values} (from {preprocessing.source}); pass --{field}")
        if min(preprocessing.std) <= 0:
            raise ValueError(f"std: expected values > 0, got {preprocessing.std}")
        if preprocessing.crop_pct is not None and not 0 < preprocessing.crop_pct <= 1:
            raise ValueError(f"crop_pct: expected a fraction in (0, 1] (0: no crop), got {preprocessing.crop_pct}")
        names = class_names(path, fmt, cfg.num_classes) if cfg.num_classes else None
    require_finite(params, f"checkpoint: {path}")
    return Model(str(path), fmt, cfg, {k: v.double() for k, v in params.items()}, preprocessing, names)


def class_token_refusal(cfg: ViTConfig) -> str | None:
    """Why `cfg` has no class-token map or rollout, or None when it has them."""
    if cfg.class_token:
        return None
    return (f"the model has no class token (pool {cfg.pool!r}), so no class-token map and no rollout of the class "
            f"token; pass --no-class-token for the attention distance, position similarity and filters alone")


def prepared_image(model: Model, path) -> torch.Tensor:
    """The photo at `path` as the checkpoint's preprocessing makes it: (1, C, H, W) float64. A file that is no
    readable image, and a grey photo for a colour model (drawing it would show the model a picture it was never
    trained on: three equal channels), are refused in one line."""
    from PIL import Image
    channels = model.cfg.in_channels
    image = open_photo(path, channels)           # refuses an unreadable file, naming it
    with Image.open(path) as original:
        mode = original.mode
    if channels == 3 and mode in GREY_MODES:
        raise ValueError(f"{path}: expected a colour photo for a 3-channel model, got a grey one (PIL mode {mode})")
    if model.fmt != OWN:
        return prepare(image, model.cfg, model.preprocessing)
    import torchvision.transforms.functional as TF
    pixels = TF.convert_image_dtype(TF.pil_to_tensor(image), torch.float64)[None]    # [0, 1], as paper.train reads
    return preprocess(pixels, model.preprocessing)


def mean_and_std(model: Model) -> tuple[torch.Tensor, torch.Tensor]:
    """Per channel (C, 1, 1), what the preprocessing subtracted and divided by."""
    p, c = model.preprocessing, model.cfg.in_channels
    mean, std = (p["mean"], p["std"]) if isinstance(p, dict) else (p.mean, p.std)
    return (torch.tensor(mean, dtype=torch.float64).expand(c).reshape(c, 1, 1),
            torch.tensor(std, dtype=torch.float64).expand(c).reshape(c, 1, 1))


@torch.no_grad()
def image_numbers(model: Model, x: torch.Tensor, class_token: bool) -> dict:
    """One prepared photo (1, C, H, W) -> its logits and, from forward_intermediates' attention (per layer
    (1, heads, T, T)): the class token's map per layer and head (L, heads, gh, gw), the rollout's class-token row
    (gh, gw) and the mean attention distance per layer and head (L, heads), in pixels. Without `class_token` the
    first two are None."""
    cfg = model.cfg
    logits, out = family_of(cfg).model.forward_intermediates(model.params, x, cfg)
    grid, prefix = cfg.grid_size, cfg.num_prefix_tokens
    attention = out["attention"]
    distance = torch.stack([mean_attention_distance(a, grid, cfg.patch_size, prefix) for a in attention])
    maps = rollout = None
    if class_token:
        maps = torch.stack([torch.stack([class_token_map(a[:, h], grid, prefix)[0] for h in range(a.shape[1])])
                            for a in attention])
        rollout = class_token_map(attention_rollout(attention), grid, prefix)[0]
    return {"logits": logits[0], "maps": maps, "rollout": rollout, "distance": distance}


def similarity_summary(similarity: torch.Tensor) -> dict:
    """(gh, gw, gh, gw) cosine similarities -> the mean over pairs of distinct patches: 4-neighbours, same row, same
    column, all others, and all pairs; Fig. 7 centre's structure in five numbers."""
    gh, gw = similarity.shape[:2]
    rows, cols = torch.meshgrid(torch.arange(gh), torch.arange(gw), indexing="ij")
    r, c = rows.reshape(-1), cols.reshape(-1)
    s = similarity.reshape(gh * gw, gh * gw)
    distinct = ~torch.eye(gh * gw, dtype=torch.bool)
    same_row, same_col = (r[:, None] == r[None]) & distinct, (c[:, None] == c[None]) & distinct
    neighbour = (r[:, None] - r[None]).abs() + (c[:, None] - c[None]).abs() == 1
    masks = {"neighbours": neighbour, "same_row": same_row, "same_column": same_col,
             "other": distinct & ~same_row & ~same_col, "all": distinct}
    return {name: float(s[mask].mean()) if mask.any() else None for name, mask in masks.items()}


def model_numbers(model: Model) -> dict:
    """What the weights show without a photo: the position embeddings' similarity (gh, gw, gh, gw), None unless
    learned; the filters' top principal components (k, C, P, P) and every component's variance share."""
    cfg = model.cfg
    similarity = (position_similarity(model.params["pos"], cfg.grid_size, cfg.num_prefix_tokens)
                  if cfg.pos_embed == "learned" else None)
    weight = model.params["patch.weight"]
    k = min(FILTER_COMPONENTS, *weight.shape)
    components, shares = principal_components(embedding_filters(weight, cfg.in_channels, cfg.patch_size), k)
    return {"similarity": similarity, "components": components, "shares": shares}


def prediction(model: Model, logits: torch.Tensor) -> dict | None:
    """The most probable class and its probability (a distilled DeiT's logits are its heads' fusion, as evaluated)."""
    if not model.cfg.num_classes:
        return None
    probs = logits.softmax(-1)
    best = int(probs.argmax())
    return {"class": best, "name": model.names[best] if model.names else None, "probability": float(probs[best])}


def pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def save(fig, path) -> None:
    write_atomically(path, lambda tmp: fig.savefig(tmp, format="png", dpi=90))
    pyplot().close(fig)


def show_image(ax, image: torch.Tensor) -> None:
    """(H, W, C) in [0, 1], grey for one channel."""
    ax.imshow(image[..., 0] if image.shape[-1] == 1 else image, cmap="gray", vmin=0, vmax=1)
    ax.set_xticks([])
    ax.set_yticks([])


def over_image(patch_map: torch.Tensor, patch_size: int) -> torch.Tensor:
    """A (gh, gw) map on the patch grid -> (gh·P, gw·P): each patch's value over its pixels, scaled to a maximum of 1."""
    up = patch_map.repeat_interleave(patch_size, 0).repeat_interleave(patch_size, 1)
    return up / up.max() if up.max() > 0 else up


def plot_class_token_maps(image: torch.Tensor, maps: torch.Tensor, patch_size: int, path, title: str) -> None:
    """A layers × heads grid: each head's class-token map over the photo, each on its own scale."""
    plt = pyplot()
    layers, heads = maps.shape[:2]
    fig, axes = plt.subplots(layers, heads, figsize=(1.3 * heads + 0.6, 1.3 * layers + 0.6), squeeze=False)
    h, w = image.shape[:2]
    for layer in range(layers):
        for head in range(heads):
            ax = axes[layer, head]
            show_image(ax, image)
            ax.imshow(over_image(maps[layer, head], patch_size), cmap="inferno", alpha=0.6, extent=(0, w, h, 0))
            if layer == 0:
                ax.set_title(f"head {head + 1}", fontsize=8)
            if head == 0:
                ax.set_ylabel(f"layer {layer + 1}", fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    save(fig, path)


def plot_rollout(image: torch.Tensor, rollout: torch.Tensor, patch_size: int, path, title: str) -> None:
    """Fig. 6: the photo, the rollout's class-token row, and the photo weighted by it."""
    plt = pyplot()
    weight = over_image(rollout, patch_size)
    fig, axes = plt.subplots(1, 3, figsize=(7.5, 2.9))
    show_image(axes[0], image)
    axes[0].set_title("input", fontsize=9)
    axes[1].imshow(weight, cmap="inferno", vmin=0, vmax=1)
    axes[1].set_title("rollout, class token", fontsize=9)
    axes[1].set_xticks([])
    axes[1].set_yticks([])
    show_image(axes[2], image * weight[..., None])
    axes[2].set_title("input × rollout", fontsize=9)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    save(fig, path)


def plot_distance(distance: torch.Tensor, path, title: str) -> None:
    """Fig. 7 right: every head's mean attention distance (pixels) against its layer."""
    plt = pyplot()
    layers, heads = distance.shape
    fig, ax = plt.subplots(figsize=(5, 3.8))
    depth = torch.arange(1, layers + 1)
    for head in range(heads):
        ax.scatter(depth, distance[:, head], s=14, label=f"head {head + 1}")
    ax.set_xlabel("network depth (layer)")
    ax.set_ylabel("mean attention distance (pixels)")
    ax.set_ylim(bottom=0)
    ax.set_xticks(depth.tolist())
    if heads <= 16:
        ax.legend(fontsize=6, ncol=2)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    save(fig, path)


def plot_similarity(similarity: torch.Tensor, path, title: str) -> None:
    """Fig. 7 centre: tile (r, c) is the similarity of patch (r, c)'s position embedding to every patch's."""
    plt = pyplot()
    gh, gw = similarity.shape[:2]
    sheet = torch.full((gh * (gh + 1) - 1, gw * (gw + 1) - 1), float("nan"), dtype=torch.float64)
    for r in range(gh):
        for c in range(gw):
            sheet[r * (gh + 1):r * (gh + 1) + gh, c * (gw + 1):c * (gw + 1) + gw] = similarity[r, c]
    fig, ax = plt.subplots(figsize=(5.6, 5))
    shown = ax.imshow(sheet, cmap="viridis", vmin=-1, vmax=1)
    ax.set_xticks([c * (gw + 1) + gw / 2 - 0.5 for c in range(gw)], range(1, gw + 1), fontsize=6)
    ax.set_yticks([r * (gh + 1) + gh / 2 - 0.5 for r in range(gh)], range(1, gh + 1), fontsize=6)
    ax.set_xlabel("input patch column")
    ax.set_ylabel("input patch row")
    fig.colorbar(shown, ax=ax, label="cosine similarity")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    save(fig, path)


def plot_components(components: torch.Tensor, shares: torch.Tensor, path, title: str) -> None:
    """Fig. 7 left: each component (C, P, P) on its own symmetric scale (0 mid-grey), titled with its share."""
    plt = pyplot()
    k = components.shape[0]
    cols = min(k, 7)
    rows = math.ceil(k / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(1.3 * cols, 1.4 * rows + 0.5), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, component, share in zip(axes.flat, components, shares, strict=False):
        image = component.permute(1, 2, 0)                                    # (P, P, C)
        show_image(ax, image / (2 * image.abs().max()) + 0.5 if image.abs().max() > 0 else image + 0.5)
        ax.set_title(f"{share:.1%}", fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    save(fig, path)


def attention_report(checkpoint, images: list, out, *, class_token: bool = True, **reading) -> list[str]:
    """Read `checkpoint`, prepare every photo, compute, then write into `out`: attention.json, per photo
    <stem>_class_token.png and <stem>_rollout.png (unless class_token is False), attention_distance.png,
    position_similarity.png (learned position embeddings only) and filters_pca.png. Every refusal comes before
    anything is written. -> the lines to print."""
    model = read_model(checkpoint, **reading)
    cfg = model.cfg
    if class_token and class_token_refusal(cfg):
        raise ValueError(f"{checkpoint}: {class_token_refusal(cfg)}")
    stems = [Path(p).stem for p in images]
    repeated = sorted({s for s in stems if stems.count(s) > 1})
    if repeated:
        raise ValueError(f"images: expected distinct file names (the PNGs are named after them), got {repeated} "
                         f"more than once")
    prepared = [prepared_image(model, p) for p in images]
    mean, std = mean_and_std(model)
    per_image = [image_numbers(model, x, class_token) for x in prepared]
    weights = model_numbers(model)
    distance = torch.stack([n["distance"] for n in per_image]).mean(0)          # (L, heads), over the photos
    name = model_name(cfg) or f"ViT D={cfg.dim} L={cfg.depth} P={cfg.patch_size}"
    notes = []
    if not class_token:
        notes.append("class-token maps and rollout not drawn (--no-class-token)")
    if weights["similarity"] is None:
        notes.append(f"position similarity not drawn: the position embedding is {cfg.pos_embed!r}, not learned")
    p = model.preprocessing
    report = {
        "checkpoint": model.path, "format": model.fmt, "model": name, "image_size": list(cfg.image_size),
        "patch_size": cfg.patch_size, "grid": list(cfg.grid_size), "num_prefix_tokens": cfg.num_prefix_tokens,
        "layers": cfg.depth, "heads": cfg.num_heads,
        "preprocessing": dict(p) if isinstance(p, dict) else {"mean": list(p.mean), "std": list(p.std),
                                                              "crop_pct": p.crop_pct, "source": p.source},
        "images": [{"image": str(path), "prediction": prediction(model, n["logits"]),
                    "attention_distance": n["distance"].tolist(),
                    "class_token": None if n["maps"] is None else n["maps"].tolist(),
                    "rollout": None if n["rollout"] is None else n["rollout"].tolist()}
                   for path, n in zip(images, per_image, strict=True)],
        "attention_distance": distance.tolist(),
        "position_similarity": None if weights["similarity"] is None else similarity_summary(weights["similarity"]),
        "filters": {"components_drawn": weights["components"].shape[0],
                    "variance_shares": weights["shares"].tolist()},
        "notes": notes}
    out = Path(out)
    written = []
    for path, x, n, stem in zip(images, prepared, per_image, stems, strict=True):
        image = (x[0] * std + mean).clamp(0, 1).permute(1, 2, 0)                  # as the model saw it, (H, W, C)
        guess = prediction(model, n["logits"])
        said = (f": class {guess['class']}{' ' + guess['name'] if guess['name'] else ''} "
                f"({guess['probability']:.1%})") if guess else ""
        if n["maps"] is not None:
            plot_class_token_maps(image, n["maps"], cfg.patch_size, out / f"{stem}_class_token.png",
                                  f"{name}, {Path(path).name}{said}\nthe class token's attention, per layer and head")
            plot_rollout(image, n["rollout"], cfg.patch_size, out / f"{stem}_rollout.png",
                         f"{name}, {Path(path).name}{said}\nattention rollout (Fig. 6)")
            written += [f"{stem}_class_token.png", f"{stem}_rollout.png"]
    plot_distance(distance, out / "attention_distance.png",
                  f"{name}: mean attention distance (Fig. 7 right), {len(images)} photo(s)")
    written.append("attention_distance.png")
    if weights["similarity"] is not None:
        plot_similarity(weights["similarity"], out / "position_similarity.png",
                        f"{name}: position embedding similarity (Fig. 7 centre)")
        written.append("position_similarity.png")
    plot_components(weights["components"], weights["shares"], out / "filters_pca.png",
                    f"{name}: principal components of the patch-embedding filters (Fig. 7 left)")
    written.append("filters_pca.png")
    write_text(out / "attention.json", json.dumps(report, indent=1))
    written.append("attention.json")
    lines = [f"{model.path} ({model.fmt}): {name}, {cfg.image_size[0]}x{cfg.image_size[1]}, {cfg.depth} layers × "
             f"{cfg.num_heads} heads, {cfg.num_prefix_tokens} prefix token(s); preprocessing from "
             f"{'the checkpoint' if model.fmt == OWN else p.source}"]
    for entry in report["images"]:
        guess = entry["prediction"]
        lines.append(f"{entry['image']}: " + (f"class {guess['class']}{' ' + guess['name'] if guess['name'] else ''} "
                                              f"({guess['probability']:.1%})" if guess else "no classifier"))
    spread = [f"{min(d):.1f}-{max(d):.1f}" for d in report["attention_distance"]]
    lines.append(f"mean attention distance per layer, heads' range in pixels: {', '.join(spread)}")
    lines.append(f"filters' variance in the top 3 components: "
                 f"{', '.join(f'{s:.1%}' for s in report['filters']['variance_shares'][:3])}")
    lines += notes
    lines.append(f"wrote {out}/: {', '.join(written)}")
    return lines
