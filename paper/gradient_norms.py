"""Per-example gradient norms: which training images pull hardest on a trained model (data debugging).

    python -m paper.train                            # once: the main job writes runs/main/finetune.pt
    python -m paper.gradient_norms                   # every digits training image's |∇_θ L(x, y)|, the top 16 drawn

Because `lowlevel.forward` is a pure function of (params, images), torch.func gives every example's gradient in
one batched call: vmap over the examples of grad of the one-example loss. An image whose gradient is large is one
the model gets badly wrong or finds ambiguous: mislabelled, unusual, or simply hard. The command writes
gradient_norms.png (the images with the largest norms, with label, prediction and norm) and gradient_norms.json.
"""
import json
import os
import time

import torch
from tqdm import tqdm

import lowlevel as vit
from paper import cli
from paper.analysis.gradient_norms import per_example_gradient_norms
from paper.formats.atomic import write_text
from paper.reports.gradient_norms_figure import plot_top
from paper.training.data import EvalView, load_data
from paper.training.state import checkpoint_config, load_checkpoint, require_whole_model


def main(argv=None) -> dict:
    parser = cli.parser("python -m paper.gradient_norms", __doc__)
    parser.add_argument("--checkpoint", default=os.path.join("runs", "main", "finetune.pt"),
                        help="a checkpoint written by paper.train (default: the main job's fine-tuned model)")
    parser.add_argument("--top", type=cli.positive, default=16, help="how many of the largest norms to draw (default 16)")
    parser.add_argument("--out", default=os.path.join("runs", "gradient_norms"), help="output folder")
    args = parser.parse_args(argv)
    state = load_checkpoint(args.checkpoint)
    require_whole_model(state, args.checkpoint)
    cfg = checkpoint_config(state)
    if not isinstance(cfg, vit.ViTConfig):
        raise ValueError(f"checkpoint: expected a ViT's checkpoint, got {args.checkpoint!r} holding a {state['model']!r}")
    params = {k: v.double() for k, v in state["params"].items()}
    train, _, _ = load_data("digits")
    view = EvalView(train, cfg.image_size[0])
    images, labels = zip(*(view[i] for i in tqdm(range(len(view)), desc="images", leave=False)), strict=True)
    images, labels = torch.stack(images).double(), torch.tensor(labels)

    start = time.perf_counter()
    norms = per_example_gradient_norms(params, images, labels, cfg)
    seconds = time.perf_counter() - start
    with torch.no_grad():
        predictions = vit.forward(params, images, cfg).argmax(-1)
    top = norms.argsort(descending=True)[:args.top]
    rows = [{"index": int(i), "label": int(labels[i]), "prediction": int(predictions[i]), "norm": float(norms[i])}
            for i in top]
    result = {"checkpoint": args.checkpoint, "images": len(labels), "seconds": seconds,
              "median_norm": float(norms.median()), "misclassified": int((predictions != labels).sum()), "top": rows}
    write_text(os.path.join(args.out, "gradient_norms.json"), json.dumps(result, indent=1))
    plot_top((images[top] + 1) / 2, [r["label"] for r in rows], [r["prediction"] for r in rows],
             [r["norm"] for r in rows], os.path.join(args.out, "gradient_norms.png"),
             f"largest per-example gradient norms of {len(labels)} training images (median {result['median_norm']:.3f})")
    print(f"{len(labels)} per-example gradients in {seconds:.1f} s (one vmap call); median norm "
          f"{result['median_norm']:.3f}; {result['misclassified']} training images misclassified")
    for r in rows:
        print(f"  image {r['index']:4d}: label {r['label']}, predicted {r['prediction']}, norm {r['norm']:.3f}")
    print(f"gradient_norms.png and gradient_norms.json in {args.out}")
    return result


if __name__ == "__main__":
    cli.run(main)
