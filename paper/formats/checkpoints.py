"""Any checkpoint format in, any out: the format is recognised from the file itself, the one written from the
destination's name (or named). Reading returns (cfg, params); writing takes (params, cfg).

    source                                     recognised by
    directory whose config.json names an       a timm hub directory ("timm-hub")
      "architecture"
    other directory with config.json           transformers `save_pretrained` layout ("hf"; a Swin by its
                                               "model_type": "hf-swin")
    .npz (a zip of .npy arrays)                the official Google format ("npz")
    safetensors or torch.save state_dict       its names: timm's "patch_embed.proj.weight" ("timm"), torchvision's
                                               "conv_proj.weight" ("torchvision") or transformers' ("hf"); a Swin:
                                               timm's "layers.0.blocks.0.attn.relative_position_bias_table"
                                               ("timm-swin"), torchvision's "features.1.0.attn.…" ("torchvision-swin")
                                               or transformers' ("hf-swin")

    destination                                written as
    *.npz (any case)                           the official format (2020 layout unless told "big_vision")
    *.pth, *.pt, *.safetensors                 a timm state_dict, or torchvision's when named "torchvision"
    anything else (a directory)                transformers `save_pretrained`, or a timm hub directory when named
                                               "timm-hub"

A distilled DeiT is read and written by the same rules (timm's VisionTransformerDistilled, transformers'
DeiTForImageClassificationWithTeacher); the official .npz format has no distillation token and refuses it. A Swin
too (timm's SwinTransformer, torchvision's swin_t/s/b, transformers' SwinForImageClassification), written as
"timm-swin", "torchvision-swin" or "hf-swin" by the destination's name or format; .npz and timm hub directories hold
ViTs only.
"""
from pathlib import Path

from lowlevel import BackboneConfig, SwinConfig, ViTConfig
from paper.formats import huggingface, huggingface_swin, npz, timm, timm_swin, torchvision, torchvision_swin
from paper.formats.architectures import TIMM, described, matching
from paper.formats.fields import Preprocessing, checked_preprocessing, swin_image_size_for
from paper.formats.files import is_npz, load_tensors, naming, read_json, regular_file
from paper.models.family import FAMILIES, family_of, model_name, paper_config

FORMATS = ("timm", "timm-hub", "hf", "npz", "torchvision")              # what a destination is written as (--to)
TENSOR_SUFFIXES = (".pth", ".pt", ".safetensors")
FILE_FORMATS = {"timm": TENSOR_SUFFIXES, "torchvision": TENSOR_SUFFIXES, "npz": (".npz",)}
# Per model family (paper/models/family.py), each destination format it can be written in: the writer, the format
# it is read back as (a Swin's "<format>-swin"), and which of write_checkpoint's options the format has a place for.
WRITERS = {"vit": {"npz": (npz.write_npz, "npz", ("layout",)), "timm": (timm.write_timm, "timm", ()),
                   "torchvision": (torchvision.write_torchvision, "torchvision", ()),
                   "timm-hub": (timm.write_timm_hub, "timm-hub", ("preprocessing",)),
                   "hf": (huggingface.write_hf, "hf", ("preprocessing",))},
           "swin": {"timm": (timm_swin.write_timm_swin, "timm-swin", ()),
                    "torchvision": (torchvision_swin.write_torchvision_swin, "torchvision-swin", ()),
                    "hf": (huggingface_swin.write_hf_swin, "hf-swin", ())}}
READERS = {"hf": huggingface.read_hf, "npz": npz.read_npz, "timm": timm.read_timm, "timm-hub": timm.read_timm_hub,
           "torchvision": torchvision.read_torchvision, "timm-swin": timm_swin.read_timm_swin,
           "torchvision-swin": torchvision_swin.read_torchvision_swin, "hf-swin": huggingface_swin.read_hf_swin}
# The model family (paper/models/family.py) of each format a file is read as
FORMAT_FAMILIES = {read_as: family for family, writers in WRITERS.items() for _, read_as, _ in writers.values()}
# A state_dict file's format, by the first test its keys pass: a Swin's before a ViT's (timm's both have
# "patch_embed.proj.weight")
STATE_DICT_TESTS = (("timm-swin", timm_swin.is_timm_swin_state_dict),
                    ("torchvision-swin", torchvision_swin.is_torchvision_swin_state_dict),
                    ("hf-swin", huggingface_swin.is_hf_swin_state_dict), ("timm", timm.is_timm_state_dict),
                    ("torchvision", torchvision.is_torchvision_state_dict), ("hf", huggingface.is_hf_state_dict))
# What a file of these formats does not record, and what reading it assumes (the other formats record both, or, as
# torchvision, refuse any other value when writing)
ASSUMED_WHEN_READ = {"timm": {"gelu": "exact", "layer_norm_eps": 1e-6, "fusion": "mean_logits"},
                     "npz": {"gelu": "tanh", "layer_norm_eps": 1e-6}, "timm-hub": {"fusion": "mean_logits"},
                     "hf": {"fusion": "mean_logits"}, "timm-swin": {"layer_norm_eps": 1e-5},
                     "torchvision-swin": {"layer_norm_eps": 1e-5}}
# What no reader can be told back (no flag sets it): a file that cannot record it is refused rather than written.
# A distilled model's fusion of its two heads (lowlevel/model.py `fuse`): timm's and transformers' code computes
# mean_logits, so "softmax_sum" written there would read back as another classifier.
REFUSED_WHEN_UNRECORDED = ("fusion",)
# Formats holding a hybrid's ResNet weights but not its numerics (GroupNorm groups and eps, the standardisation's eps):
# their readers compute timm's, BackboneConfig's defaults (a hub directory's architecture builds them), and no flag
# tells them others, so a hybrid with other numerics is refused too.
BACKBONE_NUMERICS_UNRECORDED = ("timm", "timm-hub", "npz")
# Formats that do not record a Swin's image size: read back, it is that of the known Swin with the same shapes
# (paper/formats/fields.py `swin_image_size_for`), or --image-size must give it
SIZELESS = ("timm-swin", "torchvision-swin")

def detect_format(path) -> str:
    """One of FORMATS, or a Swin's "timm-swin", "torchvision-swin", "hf-swin", from the file's content (a directory
    from its config.json)."""
    path = Path(path)
    if not path.exists():
        raise ValueError(f"{path}: expected a checkpoint file or directory, got a path that does not exist")
    if path.is_dir():
        if not (path / "config.json").exists():
            raise ValueError(f"{path}: expected a transformers or timm hub directory with config.json, got none")
        config = read_json(path / "config.json")
        if "architecture" in config:
            return "timm-hub"
        return "hf-swin" if config.get("model_type") == "swin" else "hf"
    regular_file(path)
    if is_npz(path):
        return "npz"
    if path.suffix.lower() == ".npz":               # named so, but no zip of .npy arrays: truncated or corrupt
        raise ValueError(f"{path}: expected an .npz archive (a zip of .npy arrays), got a file that is none "
                         f"(truncated or corrupt?)")
    sd = load_tensors(path)
    for fmt, test in STATE_DICT_TESTS:
        if test(sd):
            return fmt
    raise ValueError(f"{path}: expected a timm, torchvision or transformers ViT or Swin state_dict, got keys "
                     f"{sorted(sd)[:4]}...")


def model_overrides(model: str | None, fmt: str) -> dict:
    """The architecture fields of a paper or timm model name (its family's: the head, classes and pre-logits, and the
    numerics stay the checkpoint's own), as overrides a reader of `fmt` checks the weights against. A name of another
    family than the format's (a Swin's for a ViT's file) is refused."""
    if model is None:
        return {}
    cfg = paper_config(model)
    family, holds = family_of(cfg), next(f for f in FAMILIES if f.name == FORMAT_FAMILIES[fmt])
    if family is not holds:
        raise ValueError(f"model: expected a {holds.title}'s name for a {fmt} checkpoint, got {model!r}, a "
                         f"{family.title}'s")
    return {k: getattr(cfg, k) for k in family.architecture}


def read_checkpoint(path, model: str | None = None, **overrides) -> tuple[ViTConfig | SwinConfig, dict, str]:
    """Any supported checkpoint -> (cfg, params, format). The config is inferred from the weights and what the
    format stores, except what `model` (e.g. "ViT-B/16", "Swin-T") and `overrides` fix; a checkpoint that does not
    match them is refused, naming keys and, when the file reads without `model`, the model it holds. A head count
    found nowhere is refused, never guessed (paper/formats/fields.py; a Swin's relative-position tables have a
    column per head)."""
    fmt = detect_format(path)
    with naming(path):
        fixed = model_overrides(model, fmt)
    try:
        return (*READERS[fmt](path, **{**fixed, **overrides}), fmt)
    except ValueError as e:
        if model is None:
            raise
        try:
            cfg, _ = READERS[fmt](path, **overrides)
        except ValueError:
            raise e from None
        raise ValueError(f"{e}\nthe file holds {model_name(cfg) or described_config(cfg)}, not {model}") from e


def described_config(cfg: ViTConfig | SwinConfig) -> str:
    """A model no name fits, by its sizes: "a ViT of D=64, depth 6, patch 16", "a Swin of C=96, depths (2, 2, 6, 2)"."""
    family = family_of(cfg)
    sizes = f"C={cfg.dim}, depths {cfg.depths}" if family.name == "swin" else f"D={cfg.dim}, depth {cfg.depth}"
    return f"a {family.title} of {sizes}, patch {cfg.patch_size}" + (", with a ResNet" if getattr(cfg, "backbone", None)
                                                                    else "")


def read_preprocessing(path, fmt: str, channels: int | None = None) -> Preprocessing:
    """The checkpoint's preprocessing: a timm hub config.json's pretrained_cfg, a transformers directory's
    preprocessor_config.json, else the format's documented default. A mean or std of another length than the
    model's `channels` (when given), or a std or crop_pct that is not positive, is refused naming the file."""
    if fmt == "timm-hub":
        return checked_preprocessing(timm.read_hub_preprocessing(path), channels)
    if fmt in ("hf", "hf-swin"):
        if not Path(path).is_dir():
            return huggingface.PREPROCESSING
        return checked_preprocessing(huggingface.read_hf_preprocessing(path), channels,
                                     ("image_mean", "image_std", "crop_size"))
    return {"timm": timm.PREPROCESSING, "npz": npz.PREPROCESSING, "torchvision": torchvision.PREPROCESSING,
            "timm-swin": timm_swin.PREPROCESSING, "torchvision-swin": torchvision_swin.PREPROCESSING}[fmt]


def heads_source(path, fmt: str, cfg: ViTConfig | SwinConfig) -> str:
    """Where the reader found cfg's head count, when the caller did not give it."""
    if fmt == "hf-swin" and Path(path).is_dir():
        return "config.json"
    if family_of(cfg).heads_found_in:
        return family_of(cfg).heads_found_in
    if fmt == "npz":
        return "the attention kernels' shape (D, H, D_h)"
    if fmt == "hf" and Path(path).is_dir():
        return "config.json"
    if fmt == "timm-hub":
        config = read_json(Path(path) / "config.json")
        if "num_heads" in config.get("model_args", {}):
            return "config.json model_args"
        if config["architecture"] in TIMM:
            return f"config.json architecture {config['architecture']}"
    names = matching(cfg.dim, cfg.depth, cfg.mlp_dim, cfg.patch_size).get(cfg.num_heads, [])
    return f"known architecture {described(names)}"


def unrecorded(cfg: ViTConfig | SwinConfig, fmt: str) -> dict:
    """The fields of cfg that a file of `fmt` cannot record and its reader would take otherwise."""
    return {field: getattr(cfg, field) for field, assumed in ASSUMED_WHEN_READ.get(fmt, {}).items()
            if getattr(cfg, field) != assumed}


def size_unrecorded(cfg: ViTConfig | SwinConfig, fmt: str) -> bool:
    """Whether a file of `fmt` loses cfg's image size: its reader would not find it again without --image-size."""
    if fmt not in SIZELESS:
        return False
    try:
        side = swin_image_size_for(cfg.patch_size, cfg.dim, cfg.depths, cfg.num_heads, cfg.window_size)
    except ValueError:
        return True
    return cfg.image_size != (side, side)


def destination_format(path, fmt: str | None = None) -> str:
    """The format `path` is written in: `fmt`, which must suit the name, or the one the name implies."""
    suffix = Path(path).suffix.lower()
    implied = "npz" if suffix == ".npz" else "timm" if suffix in TENSOR_SUFFIXES else "hf"
    if fmt is None:
        return implied
    if fmt not in FORMATS:
        raise ValueError(f"format: expected one of {FORMATS}, got {fmt!r}")
    if fmt in FILE_FORMATS and suffix not in FILE_FORMATS[fmt]:
        raise ValueError(f"format: {fmt} is written to a file named *{' or *'.join(FILE_FORMATS[fmt])}, got {path}")
    if fmt not in FILE_FORMATS and implied != "hf":
        raise ValueError(f"format: {fmt} is written to a directory, got the file name {path}")
    return fmt


def require_default_numerics(cfg: ViTConfig | SwinConfig, fmt: str, path) -> None:
    """Refuse a hybrid whose ResNet numerics differ from what the readers of `fmt` compute, timm's."""
    b = getattr(cfg, "backbone", None)
    if b is None:
        return
    timms = BackboneConfig(layers=b.layers, width=b.width)
    if b != timms:
        raise ValueError(f"backbone: {fmt} cannot record the ResNet's numerics (num_groups={b.num_groups}, "
                         f"group_norm_eps={b.group_norm_eps:g}, std_eps={b.std_eps:g}); its readers compute timm's "
                         f"({timms.num_groups}, {timms.group_norm_eps:g}, {timms.std_eps:g}), so the file would hold "
                         f"another model (got {path})")


def write_checkpoint(params: dict, cfg: ViTConfig | SwinConfig, path, npz_layout: str = "vit2020",
                     fmt: str | None = None, preprocessing: Preprocessing | None = None) -> str:
    """Write in `fmt`, or the format the destination's name implies; returns it. npz_layout applies to the npz
    format alone; the preprocessing is written where the format has a place for it (a ViT's directories). Nothing
    is written if the params or config are refused."""
    fmt = destination_format(path, fmt)
    family = family_of(cfg)
    if fmt not in WRITERS[family.name]:
        raise ValueError(f"format: {fmt} cannot hold a {family.title} (got {path}); a {family.title} is written as "
                         f"{', '.join(WRITERS[family.name])}")
    write, read_as, takes = WRITERS[family.name][fmt]
    lost = [field for field in REFUSED_WHEN_UNRECORDED if field in unrecorded(cfg, read_as)]
    if lost:
        field = lost[0]
        raise ValueError(f"{field}: {fmt} cannot record {field}={getattr(cfg, field)!r}; its readers compute "
                         f"{ASSUMED_WHEN_READ[read_as][field]!r}, so the file would hold another classifier (got {path})")
    if read_as in BACKBONE_NUMERICS_UNRECORDED:
        require_default_numerics(cfg, fmt, path)
    options = {"layout": npz_layout, "preprocessing": preprocessing}
    write(params, cfg, path, **{k: options[k] for k in takes})
    return read_as
