"""Measuring the training loop, as `python -m paper.bench --model mnist-vit` (and `mnist-resnet18`) reports it: images/s
of whole training rounds and the share of each phase, our models against timm's equal ViT in the same loop.

A contender is a model with its recipe, its data stream, optimizer and schedule, built from the same pieces
`loop.train_stage` uses (TrainStream and StepBatches through a DataLoader, `make_optimizer`, `LabelCriterion`,
`evaluate`, `save_checkpoint`). One round of a contender is `steps` training steps, then one evaluation of the 1,000
test digits and one checkpoint written: paper.train --data mnist evaluates once every 150 steps (a tenth of its
pre-training), so the default round of 150 steps has its cadence; it writes one checkpoint per stage, so the
checkpoint's share here is an upper bound, and paper.compare evaluates once per run. Each phase is timed by a
`Phases` timer around the code of train_step's steps, laid out as train_step lays them out:

    data        the DataLoader's next batch (per-image crop, resize, collation) and the copy to the device
    forward     zero_grad, the forward pass (under bfloat16 autocast with --bf16, as paper.train --bf16
                runs it; through torch.compile with --compile) and the loss in float32
    backward    loss.backward()
    optimizer   clipping at global norm, the optimizer's and the schedule's step, the loss read back
    evaluation  `evaluate` on the test images
    checkpoint  `save_checkpoint` of params, optimizer and schedule

Each contender's first round warms it up and is not counted; under --compile it pays the compilation, and its seconds
are reported beside the rounds'. Evaluation runs the model as it is, not compiled. Within a round the contenders take
turns of TURN steps, in an order rotated from round to round, then each evaluates and writes its checkpoint: a turn
lasts a fraction of a second, so the drift of a machine shared with other work falls on all of them alike, while
TURN consecutive steps keep each model's weights and optimizer state warm in the caches as its own training would.
Each contender keeps training across its rounds. The ratio to timm's float32 ViT is taken within a round, then
summarised by its median and range over the rounds. With --bf16 every contender runs twice, in float32 and under
bfloat16 autocast, side by side in the same rounds.
"""
import contextlib
import dataclasses
import functools
import os
import tempfile
import time

import torch
import torch.nn as nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from paper.formats.timm import to_timm
from paper.models.explicit_params import ExplicitParams
from paper.references.vit import timm_vit
from paper.reports.statistics import median_range
from paper.training.comparison import RECIPE, build, mnist, stratified_subset
from paper.training.data import EvalView, ImageArray, TrainStream
from paper.training.distillation import LabelCriterion
from paper.training.loop import StepBatches, evaluate, make_optimizer
from paper.training.processes import Processes
from paper.training.recipes import MNIST_FINETUNE, MNIST_MODEL, MNIST_PRETRAIN
from paper.training.schedules import Schedule
from paper.training.stages import finetuning_model, pretraining_model, with_steps
from paper.training.state import rng_state, save_checkpoint

PHASES = ("data", "forward", "backward", "optimizer", "evaluation", "checkpoint")
TURN = 10                  # consecutive training steps of one contender before the next one's turn
TRAINING_IMAGES = 1000     # paper.compare's run at n=1000: a stratified subset of MNIST's 4,000 training digits
BATCH = 32                 # paper.compare's batch (its DEFAULTS), which replaces the recipe's 64


class Phases:
    """Seconds spent in each phase, summed over its `with phases(name):` blocks; each block is a profiler range named
    "phase NAME" too, so that a profile can tell the phases apart (loop_operators.py)."""

    def __init__(self):
        self.seconds = dict.fromkeys(PHASES, 0.0)

    @contextlib.contextmanager
    def __call__(self, name: str):
        start = time.perf_counter()
        try:
            with torch.profiler.record_function(f"phase {name}"):
                yield
        finally:
            self.seconds[name] += time.perf_counter() - start


class TimmModel(nn.Module):
    """timm's VisionTransformer holding our weights, in the shape train_stage trains: cfg, forward, as_dict."""

    def __init__(self, params: dict, cfg):
        super().__init__()
        self.cfg, self.net = cfg, timm_vit(cfg)
        self.net.load_state_dict(to_timm(params, cfg))

    def as_dict(self) -> dict:
        return self.net.state_dict()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)


class LoopContender:
    """One model in train_stage's loop, trained round by round (`run_round`) with its phases timed."""

    def __init__(self, name: str, model: nn.Module, recipe, train_data, test_data, total_steps: int, folder: str,
                 bf16: bool = False, compiled: bool = False):
        self.name, self.model, self.folder, self.bf16 = name, model.train(), folder, bf16
        self.forward = torch.compile(self.model) if compiled else self.model
        self.recipe = with_steps(recipe, total_steps, None)
        self.optimizer = make_optimizer(self.model.parameters(), self.recipe)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, Schedule(
            self.recipe.base_lr, self.recipe.total_steps, self.recipe.warmup_steps, self.recipe.decay))
        self.criterion, self.procs = LabelCriterion(self.recipe.label_smoothing), Processes()
        stream = TrainStream(train_data, model.cfg.image_size[0], 0, self.recipe.crop_area, self.recipe.flip)
        self.batches = iter(DataLoader(stream, batch_sampler=StepBatches(1, total_steps, self.recipe.batch_size,
                                                                         self.procs), generator=torch.Generator()))
        self.evaluation = EvalView(test_data, model.cfg.image_size[0])
        self.step = 0

    def train_steps(self, steps: int, phases: Phases) -> None:
        """`steps` training steps, each phase timed into `phases`."""
        for _ in range(steps):
            with phases("data"):
                images, labels = next(self.batches)
                images, labels = images.to(self.procs.device), labels.to(self.procs.device)
            with phases("forward"):
                self.optimizer.zero_grad(set_to_none=True)
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
                    outputs = self.forward(images)
                loss = self.criterion(outputs.float(), images, labels)
            with phases("backward"):
                loss.backward()
            with phases("optimizer"):
                nn.utils.clip_grad_norm_(self.model.parameters(), self.recipe.grad_clip)
                self.optimizer.step()
                self.scheduler.step()
                loss.item()
            self.step += 1

    def evaluate_and_save(self, phases: Phases) -> None:
        """One evaluation and one checkpoint, each timed into `phases`."""
        with phases("evaluation"):
            evaluate(self.model, self.evaluation, self.procs, torch.float32)
        with phases("checkpoint"):
            save_checkpoint(os.path.join(self.folder, f"{self.name.replace(' ', '_')}.pt"), cfg=self.model.cfg,
                            recipe=self.recipe, params=self.model.as_dict(), optimizer=self.optimizer.state_dict(),
                            scheduler=self.scheduler.state_dict(), step=self.step, rng=[rng_state()], log={},
                            seed=0, dtype="float32")


def contenders(models: list[str], total_steps: int, folder: str, bf16: bool, compiled: bool) -> list[LoopContender]:
    """mnist-vit: paper.compare's ViT (`comparison.build`, seed 0) and timm's equal model with its weights, on the
    compare recipe and its n=1000 subset, and paper.train --data mnist's two stages (ours, the model stages.py builds,
    on all 4,000 digits); mnist-resnet18: paper.compare's ResNet-18, stock stem. With `bf16`, each of them twice: in
    float32, and under bfloat16 autocast (named with " bf16"), from the same weights."""
    train, test = mnist()
    recipe = with_steps(RECIPE, None, BATCH)
    subset = ImageArray(*(t[stratified_subset(train.labels, TRAINING_IMAGES, 0)] for t in (train.images, train.labels)))
    out = []
    for mixed in (False, True) if bf16 else (False,):
        contender = functools.partial(LoopContender, total_steps=total_steps, folder=folder, bf16=mixed,
                                      compiled=compiled)
        tag = " bf16" if mixed else ""
        if "mnist-vit" in models:
            ours = build("vit", 0)
            params = {k: v.detach().clone() for k, v in ours.as_dict().items()}
            pre_params, pre_cfg = pretraining_model(MNIST_MODEL, MNIST_PRETRAIN, 1, 10, 0)
            fine_params, fine_cfg = finetuning_model(pre_params, pre_cfg, MNIST_FINETUNE, 10)
            out += [contender(f"ours ViT{tag}", ours, recipe, subset, test),
                    contender(f"timm ViT{tag}", TimmModel(params, ours.cfg), recipe, subset, test),
                    contender(f"paper.train pretrain{tag}", ExplicitParams(pre_params, pre_cfg), MNIST_PRETRAIN, train,
                              test),
                    contender(f"paper.train finetune{tag}", ExplicitParams(fine_params, fine_cfg), MNIST_FINETUNE,
                              train, test)]
        if "mnist-resnet18" in models:
            out.append(contender(f"ours ResNet-18{tag}", build("cnn", 0), recipe, subset, test))
    return out


def turns(steps: int) -> list[int]:
    """A round's `steps` as turns of TURN steps, the last one shorter when TURN does not divide them."""
    return [TURN] * (steps // TURN) + [steps % TURN] * bool(steps % TURN)


def measure_loop(models: list[str], steps: int, rounds: int, bf16: bool = False, compiled: bool = False) -> dict:
    """One warm-up round each, then `rounds` interleaved rounds. -> per contender: the warm-up's seconds, seconds per
    round, images/s (median, range), phase seconds summed over the rounds and their shares; per round, the ratio of
    timm's float32 ViT's seconds to those of each other ViT of compare's (ours, and timm's under autocast)."""
    with tempfile.TemporaryDirectory() as folder:
        runs = contenders(models, steps * (rounds + 1), folder, bf16, compiled)
        times = {c.name: [] for c in runs}
        phases = {c.name: Phases() for c in runs}
        warm_up = {c.name: Phases() for c in runs}
        with tqdm(total=(rounds + 1) * len(runs), desc="training loop", unit="round") as bar:
            for c in runs:                                                  # warm-up: not counted
                c.train_steps(steps, warm_up[c.name])
                c.evaluate_and_save(warm_up[c.name])
                bar.update()
            for r in range(rounds):
                order = runs[r % len(runs):] + runs[:r % len(runs)]
                before = {c.name: sum(phases[c.name].seconds.values()) for c in order}
                for turn in turns(steps):
                    for c in order:
                        c.train_steps(turn, phases[c.name])
                for c in order:
                    c.evaluate_and_save(phases[c.name])
                    times[c.name].append(sum(phases[c.name].seconds.values()) - before[c.name])
                bar.update(len(order))
    result = {}
    for c in runs:
        total = sum(phases[c.name].seconds.values())
        result[c.name] = {
            "recipe": dataclasses.asdict(c.recipe) | {"total_steps": None},
            "image_size": list(c.model.cfg.image_size), "batch": c.recipe.batch_size,
            "warm_up_s": sum(warm_up[c.name].seconds.values()), "round_s": times[c.name],
            "images_per_s": median_range([c.recipe.batch_size * steps / t for t in times[c.name]]),
            "phase_s": phases[c.name].seconds,
            "phase_share": {k: v / total for k, v in phases[c.name].seconds.items()}}
    for name in times:                          # each ViT of compare's, ours or timm's under autocast, against timm's
        if name.startswith(("ours ViT", "timm ViT bf16")) and "timm ViT" in times:
            result[name]["vs_timm"] = median_range([t_timm / t for t, t_timm in
                                                    zip(times[name], times["timm ViT"], strict=True)])
    return result
