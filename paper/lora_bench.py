"""Full fine-tuning against LoRA on the main job's fine-tuning stage (digits at 12×12, 300 SGD steps, batch 64):
trainable parameters, optimizer-state bytes, peak training memory, step time and test accuracy.

    python -m paper.train --stages pretrain                     # the base, once (or the whole main job)
    python -m paper.lora_bench --init runs/main/pretrain.pt     # -> runs/lora_bench/lora.json, lora.md

Rows: full fine-tuning; LoRA on W_q, W_v (the paper's choice, §5.1); LoRA on q, k, v, proj, fc1, fc2; each LoRA at
two ranks, α = r (the default of --lora).
- Test accuracy, trainable parameters, optimizer-state bytes: one `python -m paper.train --stages finetune --init
  BASE [--lora R --lora-targets …]` run per row (seed 0, one thread), read from its log and its checkpoint (SGD's
  momentum: one buffer per trained tensor).
- Step time: one training step (paper.train.train_step: forward, cross-entropy, backward, clipping, SGD) on a batch
  of 64, the rows interleaved in rounds so that noise from other work falls on all alike; the median over rounds.
- Peak memory: paper.bench's measure: in a fresh process per row, the resident-set growth at its peak over two
  training steps (gradients, optimizer state, activations, workspace; the weights are allocated before).
- Activations saved: paper.bench's exact count of the bytes autograd keeps from the forward for the backward, weights
  (frozen or trained) left out.
"""
import dataclasses
import json
import os
import statistics
from types import SimpleNamespace

import torch
from tqdm import tqdm

import lowlevel as vit
from lowlevel.lora import LoRAConfig

from . import cli
from .atomic import write_text
from .bench import activation_bytes, batch_of, in_fresh_process, peak_resident_growth, timed
from .heads import finetuning_head
from .lora_training import LoRARun
from .recipes import DIGITS_FINETUNE
from .resolution import change_resolution
from .schedules import Schedule
from .train import ExplicitParams, Processes, make_optimizer, train_step
from .train import main as train
from .train_state import load_checkpoint

ALL = ("q", "k", "v", "proj", "fc1", "fc2")
ROWS = {"full fine-tuning": None, **{f"LoRA {','.join(t)}, r={r}": LoRAConfig(r, float(r), t)
                                     for t in (("q", "v"), ALL) for r in (4, 16)}}
KIB, MIB = 2 ** 10, 2 ** 20


def fine_tuning_model(init: str, lora: LoRAConfig | None):
    """The model `python -m paper.train --stages finetune --init INIT [--lora …]` trains: the new zero head, E_pos
    interpolated to the fine-tuning resolution, and the adapters when `lora` is given."""
    state = load_checkpoint(init)
    cfg = dataclasses.replace(vit.ViTConfig(**state["config"]), dropout=DIGITS_FINETUNE.dropout)
    params, cfg = finetuning_head(state["params"], cfg, cfg.num_classes)
    params, cfg = change_resolution(params, cfg, DIGITS_FINETUNE.image_size, method="official")
    return (LoRARun(lora, init, "").model(params, cfg, seed=0) if lora else ExplicitParams(params, cfg)).train(), cfg


def stepper(init: str, lora: LoRAConfig | None, batch: int):
    """A function doing one training step of the row on a fixed random batch."""
    model, cfg = fine_tuning_model(init, lora)
    optimizer = make_optimizer(model.parameters(), DIGITS_FINETUNE)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, Schedule(DIGITS_FINETUNE.base_lr, DIGITS_FINETUNE.total_steps,
                                                                      DIGITS_FINETUNE.warmup_steps, DIGITS_FINETUNE.decay))
    images, labels = batch_of(cfg, batch, torch.float32, "cpu")
    return lambda: train_step(model, optimizer, scheduler, images, labels, accum_steps=1,
                              grad_clip=DIGITS_FINETUNE.grad_clip, procs=Processes())


def saved_activations(init: str, lora: LoRAConfig | None, batch: int) -> int:
    model, cfg = fine_tuning_model(init, lora)
    weights = [*model.parameters(), *getattr(model, "base", {}).values()]
    return activation_bytes(SimpleNamespace(train_logits=model, parameters=weights),
                            batch_of(cfg, batch, torch.float32, "cpu")[0])


def memory_here(init: str, row: str, batch: int) -> int:
    """In a fresh process: the peak resident-set growth over two training steps of `row`."""
    torch.set_num_threads(1)
    return peak_resident_growth(stepper(init, ROWS[row], batch))


def row_flags(lora: LoRAConfig | None) -> list[str]:
    return [] if lora is None else ["--lora", str(lora.rank), "--lora-targets", ",".join(lora.targets)]


def measure(init: str, out: str, batch: int, rounds: int) -> dict:
    torch.set_num_threads(1)
    results = {}
    with tqdm(total=len(ROWS), desc="fine-tuning runs", unit="run") as bar:
        for row, lora in ROWS.items():
            folder = os.path.join(out, "full" if lora is None else f"lora_{'-'.join(lora.targets)}_r{lora.rank}")
            log = train(["--stages", "finetune", "--init", init, "--out", folder, *row_flags(lora)])
            state = load_checkpoint(os.path.join(folder, "finetune.pt"))
            momentum = [t for s in state["optimizer"]["state"].values() for t in s.values() if torch.is_tensor(t)]
            call = f"from paper.lora_bench import memory_here; print(memory_here({init!r}, {row!r}, {batch}))"
            results[row] = {"command": " ".join(["python -m paper.train --stages finetune --init", init,
                                                 *row_flags(lora)]),
                            "trainable": sum(v.numel() for v in state["params"].values()),
                            "optimizer_bytes": sum(t.numel() * t.element_size() for t in momentum),
                            "peak_memory_bytes": int(in_fresh_process(call, f"the training memory of {row!r}")),
                            "activation_bytes": saved_activations(init, lora, batch),
                            "test_accuracy": log["test_accuracy"]}
            bar.update()
    steps = {row: stepper(init, lora, batch) for row, lora in ROWS.items()}
    times = {row: [] for row in ROWS}
    names = list(ROWS)
    for step in steps.values():                                              # warm-up
        step()
    for r in tqdm(range(rounds), desc="step time", unit="round"):
        for row in names[r % len(names):] + names[:r % len(names)]:
            times[row].append(timed(steps[row], "cpu"))
    for row in ROWS:
        results[row]["step_s"] = {"median": statistics.median(times[row]), "min": min(times[row]),
                                  "max": max(times[row])}
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


def main(argv=None) -> dict:
    parser = cli.parser("python -m paper.lora_bench", __doc__)
    parser.add_argument("--init", default=os.path.join("runs", "main", "pretrain.pt"),
                        help="the pre-trained base (python -m paper.train --stages pretrain writes it)")
    parser.add_argument("--batch", type=cli.positive, default=DIGITS_FINETUNE.batch_size,
                        help="batch for step time and memory")
    parser.add_argument("--rounds", type=cli.positive, default=50,
                        help="interleaved rounds of one step per row (step time)")
    parser.add_argument("--out", default=os.path.join("runs", "lora_bench"), help="folder for the runs and lora.*")
    args = parser.parse_args(argv)
    if not os.path.isfile(args.init):
        raise ValueError(f"init: expected a pre-trained checkpoint, got {args.init!r}, which does not exist "
                         "(python -m paper.train --stages pretrain writes runs/main/pretrain.pt)")
    results = measure(args.init, args.out, args.batch, args.rounds)
    model, _ = fine_tuning_model(args.init, None)
    table = markdown(results, sum(p.numel() for p in model.parameters()))
    write_text(os.path.join(args.out, "lora.json"), json.dumps(results, indent=1))
    write_text(os.path.join(args.out, "lora.md"), table)
    print(table)
    return results


if __name__ == "__main__":
    cli.run(main)
