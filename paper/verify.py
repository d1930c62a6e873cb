"""Verify numerical equivalence: our forward against timm's, transformers' and torchvision's (a Swin: against
timm's and torchvision's); the checks are paper/references/equivalence.py and on_photo.py.

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
from paper import cli
from paper.models.family import FAMILIES, paper_config
from paper.references.equivalence import verify
from paper.references.on_photo import verify_checkpoint
from paper.reports.verify_tables import format_checkpoint_table, format_tables

VERIFY_DTYPES = ("float32", "float64")
DEFAULT_MODELS = tuple(name for family in reversed(FAMILIES) for name in family.models)


def main(argv=None) -> None:
    parser = cli.parser("python -m paper.verify", __doc__)
    parser.add_argument("--models", nargs="+", metavar="NAME",
                        help=f"paper, timm or torchvision model names (default: {' '.join(DEFAULT_MODELS)})")
    parser.add_argument("--checkpoint", help="verify this checkpoint's own weights instead (any format paper.convert "
                                             "reads)")
    parser.add_argument("--image", help="the photo for --checkpoint (default: scikit-learn's bundled china.jpg)")
    cli.checkpoint_fields(parser, model=False)
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
        print(format_tables(verify(models, args.dtypes, args.batch, args.seed)))
        return
    if args.models:
        parser.error("--models: expected either --models or --checkpoint, got both")
    overrides = cli.checkpoint_overrides(args)
    print(format_checkpoint_table(verify_checkpoint(args.checkpoint, args.image, args.dtypes, **overrides)))


if __name__ == "__main__":
    cli.run(main)
