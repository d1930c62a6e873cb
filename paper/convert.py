"""Convert a ViT, DeiT or Swin checkpoint between formats: timm (.pth/.safetensors, or a hub directory), torchvision
(.pth), Hugging Face transformers (a save_pretrained directory or its state_dict) and the official Google .npz (ViT
only). The source format is recognised from the file, the destination's from its name or --to; the config is inferred
from the weights and from what the format stores. What neither tells is never guessed: a head count found nowhere
(nor in the table of known architectures) is refused until --num-heads gives it.

    python -m paper.convert ViT-B_16.npz vit-b16-hf/                    # official npz -> from_pretrained directory
    python -m paper.convert vit-b16-hf/ vit_b16.safetensors             # transformers -> timm state_dict
    python -m paper.convert vit_b_16.pth tv.pth --to torchvision        # torchvision in, torchvision out
    python -m paper.convert model.pth hub/ --to timm-hub                # -> timm.create_model("local-dir:hub")
    python -m paper.convert model.pth model.npz --model ViT-B/16        # refuse anything that is not a ViT-B/16
    python -m paper.convert custom.pth out/ --num-heads 4               # a model no known architecture matches
    python -m paper.convert deit_b.pth deit-b-hf/ --model DeiT-B⚗        # timm DeiT -> DeiTForImageClassificationWithTeacher
    python -m paper.convert swin_t.pth swin_t_timm.pth                  # torchvision swin_t -> timm SwinTransformer
    python -m paper.convert swin_t_timm.pth swin_t.pth --to torchvision # and back
    python -m paper.convert base.pth tuned.npz --adapter lora-dir/        # a peft LoRA adapter merged into the weights

An existing destination is kept unless --force; the destination appears whole or not at all.
"""
import os
import sys

from tqdm import tqdm

from paper import cli
from paper.formats import checkpoints
from paper.formats.peft import apply_peft
from paper.models.family import model_name, param_count


def convert(src, dst, model: str | None = None, gelu: str | None = None, npz_layout: str | None = None,
            num_heads: int | None = None, image_size: tuple[int, int] | None = None, to: str | None = None,
            force: bool = False, adapter=None) -> str:
    """Read `src` (and merge the peft LoRA directory `adapter` into it), write `dst`; returns a one-line summary.
    Nothing is written if reading, merging or checking fails, or if `dst` exists and not `force`."""
    fmt = checkpoints.destination_format(dst, to)
    if npz_layout is not None and fmt != "npz":
        raise ValueError(f"--npz-layout: expected only with an .npz destination, got {dst} ({fmt})")
    if os.path.lexists(dst) and not force:
        raise ValueError(f"dst: expected a new destination, got {dst}, which exists; pass --force to replace it")
    overrides = {k: v for k, v in (("gelu", gelu), ("num_heads", num_heads), ("image_size", image_size)) if v}
    with tqdm(total=2 + bool(adapter), desc="convert", unit="step", file=sys.stderr) as bar:
        bar.set_postfix_str(f"reading {src}")
        cfg, params, src_format = checkpoints.read_checkpoint(src, model, **overrides)
        bar.update()
        if adapter:
            bar.set_postfix_str(f"merging {adapter}")
            cfg, params = apply_peft(params, cfg, adapter)
            bar.update()
        bar.set_postfix_str(f"writing {dst}")
        preprocessing = checkpoints.read_preprocessing(src, src_format, cfg.in_channels)
        written = checkpoints.write_checkpoint(params, cfg, dst, npz_layout or "vit2020", fmt, preprocessing)
        bar.update()
    name = model_name(cfg) or f"D={cfg.dim} L={cfg.depth}"
    heads = "--num-heads" if num_heads else f"--model {model}" if model else checkpoints.heads_source(src, src_format, cfg)
    lost = checkpoints.unrecorded(cfg, written)
    notes = [f"the file cannot record GELU {cfg.gelu}: read it back with --gelu {cfg.gelu}"] if "gelu" in lost else []
    if "layer_norm_eps" in lost:
        assumed = checkpoints.ASSUMED_WHEN_READ[written]["layer_norm_eps"]
        notes.append(f"the file cannot record eps {cfg.layer_norm_eps:g}: its readers assume {assumed:g}")
    if checkpoints.size_unrecorded(cfg, written):
        h, w = cfg.image_size
        notes.append(f"the file cannot record image size {h}x{w}: read it back with --image-size {h} {w}")
    note = "; ".join(notes)
    merged = f" + LoRA {adapter}" if adapter else ""
    return (f"{src} ({src_format}){merged} -> {dst} ({written}): {name} at {cfg.image_size[0]}x{cfg.image_size[1]}, "
            f"{cfg.num_heads} heads ({heads}), {cfg.num_classes} classes, {param_count(cfg):,} parameters, "
            f"eps {cfg.layer_norm_eps:g}, GELU {cfg.gelu}" + (f" ({note})" if note else ""))


def main(argv=None) -> None:
    parser = cli.parser("python -m paper.convert", __doc__)
    parser.add_argument("src", help="checkpoint to read: .npz, .pth, .safetensors, or a directory (transformers "
                                    "save_pretrained or timm hub)")
    parser.add_argument("dst", help="where to write: *.npz official format; *.pth, *.pt, *.safetensors timm "
                                    "state_dict; any other name a save_pretrained directory (see --to)")
    parser.add_argument("--to", choices=checkpoints.FORMATS, help="the destination's format when its name does not say it: "
                                                      "torchvision (a .pth; a ViT's or a Swin's), timm-hub (a "
                                                      "directory)")
    cli.checkpoint_fields(parser)
    parser.add_argument("--gelu", choices=("exact", "tanh"),
                        help="GELU flavour the model computes, written into a transformers config (default: tanh "
                             "for an official .npz, as trained; otherwise what the source says, exact for timm)")
    parser.add_argument("--npz-layout", choices=("vit2020", "big_vision"),
                        help="official .npz naming to write (default: the 2020 released files'); .npz only")
    parser.add_argument("--force", action="store_true", help="replace an existing destination")
    parser.add_argument("--adapter", metavar="DIR",
                        help="a peft LoRA adapter directory (adapter_config.json + adapter_model.safetensors) for src's "
                             "transformers or timm model: its adapters are merged into the weights (W₀ + (α/r)·BA) and "
                             "a head it trained whole (modules_to_save) replaces src's")
    args = parser.parse_args(argv)
    print(convert(args.src, args.dst, args.model, args.gelu, args.npz_layout, args.num_heads,
                  tuple(args.image_size) if args.image_size else None, args.to, args.force, args.adapter))


if __name__ == "__main__":
    cli.run(main)
