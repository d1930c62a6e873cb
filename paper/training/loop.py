"""The training loop, which knows nothing of the model: `train_stage` trains any module with a `cfg` (its image_size
sets the data's resolution), a `forward(images) -> logits` and an `as_dict()` of the tensors a checkpoint holds. Our
ViT (`ExplicitParams`), a distilled student (the same, returning its two heads' logits), LoRA's adapters over a frozen
base (`training.lora.LoRAParams`) and torchvision's ResNet-18 (`paper.models.cnn.ResNetClassifier`) all are;
masked patch prediction's model (`training.mpp.MaskedPatchPrediction`) returns (predictions, chosen) and brings its
own criterion and held-out score.

Each step takes the global batch, splits it over the processes and into micro-batches, averages the gradients
(accumulated over micro-batches, all-reduced over processes), clips their global norm, and steps."""
import contextlib
import dataclasses
import os
import time
from collections.abc import Callable

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Sampler
from tqdm import tqdm

from lowlevel.mpp import MPPConfig
from paper import cli
from paper.training.augment import batch_mixing, image_augmentation
from paper.training.data import EvalView, TrainStream, shard_positions
from paper.training.distillation import (
    Distillation,
    DistillationCriterion,
    LabelCriterion,
)
from paper.training.early_stopping import BestWeights, EarlyStopping
from paper.training.lora import LoRAParams, LoRARun, check_same_adapters
from paper.training.mpp import MaskedPatchPrediction, MPPCriterion
from paper.training.processes import Processes, all_reduce_sum, stop_requested
from paper.training.schedules import Schedule
from paper.training.state import (
    check_same_run,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)


def make_optimizer(parameters, recipe) -> torch.optim.Optimizer:
    """Pre-training: Adam, β1 0.9, β2 0.999 (§4.1), weight decay decoupled and multiplied by the learning rate:
    AdamW's form. The paper does not give the form; the same team's AugReg paper describes its own as "decoupled …
    but multiplied by the learning-rate" (Steiner et al. 2021, §3).
    Fine-tuning: SGD with momentum 0.9, no weight decay (Table 4 caption).
    Both fused: one kernel updates every tensor, where torch's default on the CPU loops over them in Python; the same
    update, rounded in another order (paper/reports/README.md, "Training loop", measures the gain)."""
    if recipe.optimizer == "adam":
        return torch.optim.AdamW(parameters, lr=recipe.base_lr, betas=(0.9, 0.999), weight_decay=recipe.weight_decay,
                                 fused=True)
    return torch.optim.SGD(parameters, lr=recipe.base_lr, momentum=0.9, weight_decay=recipe.weight_decay, fused=True)


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
            if bf16:                                                     # the loss in float32 (MPP's mask stays bool)
                outputs = tuple(o.float() if o.is_floating_point() else o for o in outputs) \
                    if isinstance(outputs, tuple) else outputs.float()
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


def top1_hits(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    """How many of the batch's images the model classifies right (a distilled student: its heads fused)."""
    return (model(images).argmax(-1).cpu() == labels).sum().item()


@torch.no_grad()
def evaluate(model: nn.Module, data: EvalView, procs: Processes, dtype: torch.dtype,
             batch_size: int = 512, score=top1_hits) -> float:
    """The mean over `data`'s images of `score(model, images, labels)`, a batch's sum: top-1 accuracy unless told
    otherwise (MPP's held-out loss). Each process scores every world_size-th image and the sums are summed."""
    model.eval()
    counts = torch.zeros(2, dtype=torch.float64, device=procs.device)
    mine = list(range(procs.rank, len(data), procs.world_size))
    for start in range(0, len(mine), batch_size):
        images, labels = zip(*(data[i] for i in mine[start:start + batch_size]), strict=True)
        counts[0] += score(model, torch.stack(images).to(procs.device, dtype), torch.tensor(labels))
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
    mpp: MPPConfig | None = None                # the mpp stage's objective (training/mpp.py)
    stopping: EarlyStopping | None = None       # stop on a validation split, keep the best weights (early_stopping.py)
    save: bool = True         # False: no checkpoint at all (paper.compare keeps only the models it names)
    progress: bool = True     # False: no progress bar (paper.compare shows one for the whole sweep)
    # What else defines the run, checked when it resumes: the data set, the distillation objective, the teacher's
    # bytes and the MPP objective (stages.py `run_identity`); a LoRA run's adapters are checked by
    # training.lora.check_same_adapters.
    identity: dict = dataclasses.field(default_factory=dict)


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def train_stage(name: str, model: nn.Module, recipe, train_data, test_data, run: Run) -> dict:
    """Train `model` in place by `recipe` for its total_steps, checkpointing to OUT/NAME.pt. -> the stage's log.
    With run.distillation the model returns two heads' logits and learns from run.teacher too. A MaskedPatchPrediction
    learns lowlevel.mpp's objective without labels, its corruption seeded from (seed, step), and is evaluated by its
    held-out loss ("test_loss") instead of the test accuracy. The training stream
    depends on the seed and the recipe's stage only, so two models trained by one recipe and seed see the same
    batches. Ctrl-C or SIGTERM: the step in hand is finished and saved, then KeyboardInterrupt.
    With run.stopping each evaluation scores the validation split too, the stage ends once it has not improved for
    the patience, and the model ends (and is saved) with the weights of its best validation accuracy."""
    procs, path, cfg = run.procs, os.path.join(run.out, f"{name}.pt"), model.cfg
    if run.stopping and run.resume:
        raise ValueError("resume: expected no early stopping, whose best weights live in memory only; a stopped "
                         "run is rerun, not resumed")
    lora = run.lora if isinstance(model, LoRAParams) else None
    masked = isinstance(model, MaskedPatchPrediction)
    extra = lora.fields() if lora else model.fields() if masked else {}
    model = model.to(procs.device, run.dtype).train()
    if masked:
        criterion = MPPCriterion(cfg, model.mpp)
    elif run.distillation is not None:
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
        check_same_run(state, cfg, recipe, run.seed, dtype_name(run.dtype), run.identity, path)
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

    # Each stage its own stream; the label-free mpp stage reads pre-training's, the same images in the same order.
    stream_seed = 2 * run.seed + (recipe.stage == "finetune")
    stream = TrainStream(train_data, cfg.image_size[0], stream_seed, recipe.crop_area, recipe.flip,
                         image_augmentation(recipe))
    mixing = batch_mixing(recipe, cfg.num_classes)
    loader = DataLoader(stream, batch_sampler=StepBatches(done + 1, recipe.total_steps, recipe.batch_size, procs),
                        num_workers=run.workers, generator=torch.Generator())  # not the global RNG dropout draws from
    evaluation = EvalView(test_data, cfg.image_size[0])
    measure, score = ("test_loss", criterion.held_out) if masked else ("test_accuracy", top1_hits)
    best = BestWeights(run.stopping, cfg.image_size[0]) if run.stopping else None
    since_eval = []                                                  # training losses since the last evaluation
    bar = tqdm(total=recipe.total_steps, initial=done, desc=name, disable=procs.rank != 0 or not run.progress,
               dynamic_ncols=True)
    start = time.perf_counter()
    with bar, cli.interrupts_deferred() as interrupt:       # the bar closed first, so an error line comes after it
        for step, (images, labels) in enumerate(loader, start=done + 1):
            lr = scheduler.get_last_lr()[0]
            images, labels = images.to(procs.device, run.dtype), labels.to(procs.device)
            step_seed = (stream_seed * 2 ** 32 + step) * 1024 + procs.rank
            if mixing:                                               # Mixup/CutMix: labels become mixed targets
                images, labels = mixing(images, labels, seed=step_seed)
            if masked:                                               # MPP's corruption: this step's patches
                model.reseed(step_seed)
            loss = train_step(trained, optimizer, scheduler, images, labels, accum_steps=run.accum_steps,
                              grad_clip=recipe.grad_clip, procs=procs, bf16=run.bf16, criterion=criterion)
            log["train"].append({"step": step, "loss": loss, "lr": lr})
            since_eval.append(loss)
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}")
            last = step == recipe.total_steps
            if last or (run.eval_every and step % run.eval_every == 0):
                record = {"step": step, "train_loss": sum(since_eval) / len(since_eval),
                          measure: evaluate(model, evaluation, procs, run.dtype, score=score)}
                since_eval = []
                if best:
                    record["val_accuracy"] = evaluate(model, best.view, procs, run.dtype)
                    best.observe(model, step, record["val_accuracy"])
                    last = last or best.patience_spent(step)
                log["eval"].append(record)
            stop = stop_requested(interrupt, procs)
            if best and last:
                log["best"] = best.restore(model)
                log["stopped_at"] = step
            if run.save and (stop or last or (run.save_every and step % run.save_every == 0)):
                save(path, model, cfg, recipe, optimizer, scheduler, step, log, procs, run, extra)
            if stop:
                raise KeyboardInterrupt(f"{name} stopped after step {step} of {recipe.total_steps}; {path} holds it, "
                                        f"--resume goes on from there")
            if last:
                break
    log.setdefault("seconds", 0.0)
    log["seconds"] += time.perf_counter() - start
    return log


def save(path, model, cfg, recipe, optimizer, scheduler, step, log, procs: Processes, run: Run, extra: dict) -> None:
    """Rank 0 writes the checkpoint with every process's random-number state (and `extra` keys: a LoRA run's, an MPP
    run's)."""
    rng = [rng_state()]
    if procs.world_size > 1:
        rng = [None] * procs.world_size
        dist.all_gather_object(rng, rng_state())
    if procs.rank == 0:
        save_checkpoint(path, cfg=cfg, recipe=recipe, params=model.as_dict(), optimizer=optimizer.state_dict(),
                        scheduler=scheduler.state_dict(), step=step, rng=rng, log=log, seed=run.seed,
                        dtype=dtype_name(run.dtype), identity=run.identity, **extra)
    if procs.world_size > 1:
        dist.barrier()
