"""Convert a ViT checkpoint between formats: timm (.pth/.safetensors), Hugging Face transformers (a save_pretrained
directory or its state_dict) and the official Google .npz. The source format is recognised from the file, the
destination's from its name; the config is inferred from the weights unless --model names it.

    python -m paper.convert ViT-B_16.npz vit-b16-hf/              # official npz -> from_pretrained directory
    python -m paper.convert vit-b16-hf/ vit_b16.safetensors       # transformers -> timm state_dict
    python -m paper.convert model.pth model.npz --model ViT-B/16  # refuse anything that is not a ViT-B/16
    python -m paper.convert base.pth tuned.npz --adapter lora-dir/  # a peft LoRA adapter merged into the weights
"""
import argparse
import sys

from tqdm import tqdm

from paper.checkpoints import read_checkpoint, write_checkpoint
from paper.configs import model_name, param_count
from paper.formats.peft import apply_peft


def convert(src, dst, model: str | None = None, gelu: str | None = None, npz_layout: str = "vit2020",
            adapter=None) -> str:
    """Read `src` (and merge the peft LoRA directory `adapter` into it), write `dst`; returns a one-line summary.
    Nothing is written if reading or checking fails."""
    overrides = {"gelu": gelu} if gelu else {}
    with tqdm(total=2 + bool(adapter), desc="convert", unit="step", file=sys.stderr) as bar:
        bar.set_postfix_str(f"reading {src}")
        cfg, params, src_format = read_checkpoint(src, model, **overrides)
        bar.update()
        if adapter:
            bar.set_postfix_str(f"merging {adapter}")
            cfg, params = apply_peft(params, cfg, adapter)
            src_format += f" + LoRA {adapter}"
            bar.update()
        bar.set_postfix_str(f"writing {dst}")
        dst_format = write_checkpoint(params, cfg, dst, npz_layout)
        bar.update()
    name = model_name(cfg) or f"D={cfg.dim} L={cfg.depth}"
    return (f"{src} ({src_format}) -> {dst} ({dst_format}): {name} at {cfg.image_size[0]}x{cfg.image_size[1]}, "
            f"{cfg.num_classes} classes, {param_count(cfg):,} parameters, eps {cfg.layer_norm_eps:g}, GELU {cfg.gelu}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m paper.convert", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("src", help="checkpoint to read: .npz, .pth, .safetensors, or a save_pretrained directory")
    parser.add_argument("dst", help="where to write: *.npz official format; *.pth, *.pt, *.safetensors timm "
                                    "state_dict; any other name a save_pretrained directory")
    parser.add_argument("--model", help="paper or timm model name (ViT-B/16, vit_large_patch16_384) fixing the "
                                        "architecture and image size; the checkpoint is refused if it differs. "
                                        "Classes and pre-logits stay the checkpoint's")
    parser.add_argument("--gelu", choices=("exact", "tanh"),
                        help="GELU flavour the model computes, written into a transformers config (default: tanh "
                             "for an official .npz, as trained; otherwise what the source says, exact for timm)")
    parser.add_argument("--npz-layout", choices=("vit2020", "big_vision"), default="vit2020",
                        help="official .npz naming to write (default: the 2020 released files')")
    parser.add_argument("--adapter", metavar="DIR",
                        help="a peft LoRA adapter directory (adapter_config.json + adapter_model.safetensors) for src's "
                             "transformers or timm model: its adapters are merged into the weights (W₀ + (α/r)·BA) and "
                             "a head it trained whole (modules_to_save) replaces src's")
    args = parser.parse_args(argv)
    try:
        print(convert(args.src, args.dst, args.model, args.gelu, args.npz_layout, args.adapter))
    except ValueError as e:
        parser.exit(2, f"convert: error: {e}\n")


if __name__ == "__main__":
    main()
