"""Export a ViT, DeiT or Swin checkpoint as a file that runs without this project: OUT.onnx through PyTorch's ONNX
exporter (for onnxruntime and other ONNX runtimes), OUT.pt2 through torch.export (an ExportedProgram that
torch.export.load runs). The file computes our forward on float32 images (batch, C, H, W), the batch dynamic, C, H,
W the checkpoint's; a distilled DeiT gives its two heads fused, as forward does. The explicit path is exported
unless --fast (the fused one: the same function).

Before the file is kept it is loaded back (onnxruntime; torch.export.load), run on new images of batch sizes 1 and 3
and compared with our forward in float32; above 1e-4 of the logits' scale it is removed and the export refused.

    python -m paper.export vit_s16.pth vit_s16.onnx                     # any checkpoint paper.convert reads
    python -m paper.export deit_s_distilled.pth deit.pt2 --fast         # the fast path, as a torch.export program
    python -m paper.export custom.pth custom.onnx --num-heads 4         # what the checkpoint does not tell

An existing destination is kept unless --force; the destination appears whole or not at all.
"""
import os

from paper import cli
from paper.formats import checkpoints
from paper.formats.export import destination_suffix, export
from paper.models.family import family_of, model_name, param_count


def export_checkpoint(src, out, fast: bool = False, model: str | None = None, num_heads: int | None = None,
                      image_size: tuple[int, int] | None = None, force: bool = False) -> str:
    """Read `src`, export it to `out`; returns the two lines the command prints: what was written, and how well the
    written file agrees with our forward. Nothing is written if reading, exporting or the check fails."""
    destination_suffix(out)                             # before the checkpoint is read
    if os.path.lexists(out) and not force:
        raise ValueError(f"OUT: expected a new destination, got {out}, which exists; pass --force to replace it")
    overrides = {k: v for k, v in (("num_heads", num_heads), ("image_size", image_size)) if v}
    cfg, params, src_format = checkpoints.read_checkpoint(src, model, **overrides)
    done = export(params, cfg, out, fast)
    name = model_name(cfg) or f"a {family_of(cfg).title}"
    c, (h, w) = cfg.in_channels, cfg.image_size
    batches = " and ".join(map(str, done.batches))
    return (f"{src} ({src_format}) -> {out} ({done.format}): {name} ({param_count(cfg):,} parameters), "
            f"{'fast' if fast else 'explicit'} path, "
            f"images (batch, {c}, {h}, {w}) float32 -> logits, in {done.seconds:.1f} s\n"
            f"{done.runner} agrees with our forward to {done.max_abs_difference:.1e} (max abs logit difference, "
            f"batches {batches}; tolerance {done.tolerance:.1e})")


def main(argv=None) -> None:
    parser = cli.parser("python -m paper.export", __doc__)
    parser.add_argument("checkpoint", help="the checkpoint to export: any file or directory paper.convert reads")
    parser.add_argument("out", help="where to write: *.onnx an ONNX model, *.pt2 a torch.export ExportedProgram")
    parser.add_argument("--fast", action="store_true", help="export the fast path (fused attention) instead of the "
                                                            "explicit one; the same function")
    cli.checkpoint_fields(parser)
    parser.add_argument("--force", action="store_true", help="replace an existing destination")
    args = parser.parse_args(argv)
    print(export_checkpoint(args.checkpoint, args.out, args.fast, args.model, args.num_heads,
                            tuple(args.image_size) if args.image_size else None, args.force))


if __name__ == "__main__":
    cli.run(main)
