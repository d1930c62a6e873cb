"""Look inside a ViT or DeiT checkpoint as the paper does (§4.5, Fig. 6 and 7): the class token's attention per head
and layer over your photos, attention rollout, mean attention distance per head and layer, the position
embeddings' similarity and the patch-embedding filters' principal components, as PNGs and one JSON of the numbers.

Any checkpoint paper.convert reads (timm .pth/.safetensors or hub directory, transformers directory, torchvision
.pth, official .npz) or one of paper.train's (runs/*/finetune.pt). Each photo is prepared as the checkpoint's own
preprocessing says (a transformers or timm hub directory's config, our checkpoint's record, else the format's
documented default); --mean, --std and --crop-pct replace it for a foreign format.

    python -m paper.attention vit_b_16.pth cat.jpg dog.jpg --out inside/
    python -m paper.attention runs/main/finetune.pt seven.png --out inside/
    python -m paper.attention gap.npz cat.jpg --out inside/ --no-class-token    # a model pooled without class token

Written into --out: attention.json; per photo <stem>_class_token.png (layers × heads) and <stem>_rollout.png (Fig. 6);
attention_distance.png (Fig. 7 right), position_similarity.png (Fig. 7 centre; learned embeddings only) and
filters_pca.png (Fig. 7 left). Refused in one line, before anything is written: an unreadable image, a grey photo
for a colour model, a model without a class token unless --no-class-token, and a Swin (no class token, attention
only inside its windows).
"""
from paper import cli
from paper.reports.attention_report import attention_report


def fraction(text: str) -> float:
    """argparse type of --crop-pct: a fraction in [0, 1]."""
    value = float(text)
    if not 0 <= value <= 1:
        raise ValueError(f"expected a fraction in [0, 1], got {value}")
    return value


def main(argv=None) -> None:
    parser = cli.parser("python -m paper.attention", __doc__)
    parser.add_argument("checkpoint", help="a ViT or DeiT checkpoint: any format paper.convert reads, or paper.train's")
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="photos to look at (any format PIL reads)")
    parser.add_argument("--out", required=True, help="folder for the PNGs and attention.json (made if missing)")
    parser.add_argument("--no-class-token", action="store_true",
                        help="draw only what needs no class token: attention distance, position similarity, "
                             "filters (the way to look inside a model pooled without one)")
    parser.add_argument("--mean", type=float, nargs="+", help="per-channel mean subtracted (one value: every channel), "
                                                              "instead of the checkpoint's")
    parser.add_argument("--std", type=float, nargs="+", help="per-channel std divided by, instead of the checkpoint's")
    parser.add_argument("--crop-pct", type=fraction, help="resize the shorter side to size / crop_pct and centre-crop; "
                                                         "0: resize straight to the size (instead of the checkpoint's)")
    cli.checkpoint_fields(parser, model=False)
    args = parser.parse_args(argv)
    lines = attention_report(args.checkpoint, args.images, args.out, class_token=not args.no_class_token,
                             num_heads=args.num_heads, image_size=tuple(args.image_size) if args.image_size else None,
                             mean=args.mean, std=args.std, crop_pct=args.crop_pct)
    print("\n".join(lines))


if __name__ == "__main__":
    cli.run(main)
