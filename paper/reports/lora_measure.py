"""Measuring full fine-tuning against LoRA on a small job's fine-tuning stage, as paper.lora_bench reports it (its docstring
states the method): each row trained by `python -m paper.train`, then timed and weighed here."""
import json
import os
import subprocess
import sys
from types import SimpleNamespace

import torch
from tqdm import tqdm

from lowlevel.lora import LoRAConfig
from paper.models.explicit_params import ExplicitParams
from paper.reports.measure import MIB, activation_bytes, batch_of, in_fresh_process, peak_resident_growth, timed
from paper.reports.statistics import median_range
from paper.training.loop import make_optimizer, train_step
from paper.training.lora import LoRARun
from paper.training.processes import Processes
from paper.training.recipes import SMALL_JOBS
from paper.training.schedules import Schedule
from paper.training.stages import finetuning_model
from paper.training.state import checkpoint_config, load_checkpoint

ALL = ("q", "k", "v", "proj", "fc1", "fc2")


ROWS = {"full fine-tuning": None, **{f"LoRA {','.join(t)}, r={r}": LoRAConfig(r, float(r), t)
                                     for t in (("q", "v"), ALL) for r in (4, 16)}}


KIB = 2 ** 10


def fine_tuning_model(data: str, init: str, lora: LoRAConfig | None):
    """The model `python -m paper.train --data DATA --stages finetune --init INIT [--lora …]` trains (stages.py's
    `finetuning_model`): the new zero head, E_pos interpolated to the fine-tuning resolution, and the adapters when
    `lora` is given."""
    recipe, state = SMALL_JOBS[data][2], load_checkpoint(init)
    cfg = checkpoint_config(state)
    params, cfg = finetuning_model(state["params"], cfg, recipe, cfg.num_classes)
    return (LoRARun(lora, init, "").model(params, cfg, seed=0) if lora else ExplicitParams(params, cfg)).train(), cfg


def stepper(data: str, init: str, lora: LoRAConfig | None, batch: int):
    """A function doing one training step of the row on a fixed random batch."""
    recipe = SMALL_JOBS[data][2]
    model, cfg = fine_tuning_model(data, init, lora)
    optimizer = make_optimizer(model.parameters(), recipe)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, Schedule(recipe.base_lr, recipe.total_steps,
                                                                      recipe.warmup_steps, recipe.decay))
    images, labels = batch_of(cfg, batch, torch.float32, "cpu")
    return lambda: train_step(model, optimizer, scheduler, images, labels, accum_steps=1,
                              grad_clip=recipe.grad_clip, procs=Processes())


def saved_activations(data: str, init: str, lora: LoRAConfig | None, batch: int) -> int:
    model, cfg = fine_tuning_model(data, init, lora)
    weights = [*model.parameters(), *getattr(model, "base", {}).values()]
    return activation_bytes(SimpleNamespace(train_logits=model, parameters=weights),
                            batch_of(cfg, batch, torch.float32, "cpu")[0])


def memory_here(data: str, init: str, row: str, batch: int) -> int:
    """In a fresh process: the peak resident-set growth over two training steps of `row`."""
    torch.set_num_threads(1)
    return peak_resident_growth(stepper(data, init, ROWS[row], batch))


def row_flags(lora: LoRAConfig | None) -> list[str]:
    return [] if lora is None else ["--lora", str(lora.rank), "--lora-targets", ",".join(lora.targets)]


def measure(data: str, init: str, out: str, batch: int, rounds: int) -> dict:
    torch.set_num_threads(1)
    results = {}
    with tqdm(total=len(ROWS), desc="fine-tuning runs", unit="run") as bar:
        for row, lora in ROWS.items():
            folder = os.path.join(out, "full" if lora is None else f"lora_{'-'.join(lora.targets)}_r{lora.rank}")
            flags = ["--data", data, "--stages", "finetune", "--init", init, *row_flags(lora)]
            subprocess.run([sys.executable, "-m", "paper.train", *flags, "--out", folder], check=True)
            with open(os.path.join(folder, "log.json")) as f:
                log = json.load(f)
            state = load_checkpoint(os.path.join(folder, "finetune.pt"))
            momentum = [t for s in state["optimizer"]["state"].values() for t in s.values() if torch.is_tensor(t)]
            call = f"from paper.reports.lora_measure import memory_here; print(memory_here({data!r}, {init!r}, {row!r}, {batch}))"
            results[row] = {"command": " ".join(["python -m paper.train", *flags]),
                            "trainable": sum(v.numel() for v in state["params"].values()),
                            "optimizer_bytes": sum(t.numel() * t.element_size() for t in momentum),
                            "peak_memory_bytes": int(in_fresh_process(call, f"the training memory of {row!r}")),
                            "activation_bytes": saved_activations(data, init, lora, batch),
                            "test_accuracy": log["test_accuracy"]}
            bar.update()
    steps = {row: stepper(data, init, lora, batch) for row, lora in ROWS.items()}
    times = {row: [] for row in ROWS}
    names = list(ROWS)
    for step in steps.values():                                              # warm-up
        step()
    for r in tqdm(range(rounds), desc="step time", unit="round"):
        for row in names[r % len(names):] + names[:r % len(names)]:
            times[row].append(timed(steps[row], "cpu"))
    for row in ROWS:
        results[row]["step_s"] = median_range(times[row])
    return results


def markdown(results: dict, total: int) -> str:
    lines = ["| fine-tuning | trainable parameters | optimizer state | peak memory | activations saved | "
             "step time (median, ms) | test accuracy |", "|---|---:|---:|---:|---:|---:|---:|"]
    for row, r in results.items():
        lines.append(f"| {row} | {r['trainable']:,} ({100 * r['trainable'] / total:.1f}%) | "
                     f"{r['optimizer_bytes'] / KIB:.1f} KiB | {r['peak_memory_bytes'] / MIB:.1f} MiB | "
                     f"{r['activation_bytes'] / MIB:.1f} MiB | "
                     f"{1000 * r['step_s']['median']:.1f} | {100 * r['test_accuracy']:.2f}% |")
    return "\n".join(lines) + "\n"
