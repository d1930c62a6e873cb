"""Full fine-tuning against LoRA on a small job's fine-tuning stage (the main job's: digits at 12×12, 300 SGD steps,
batch 64; the MNIST job's: 28×28, 500 steps, batch 64): trainable parameters, optimizer-state bytes, peak training
memory, step time and test accuracy.

    python -m paper.train --stages pretrain                     # the base, once (or the whole main job)
    python -m paper.lora_bench                                  # -> runs/lora_bench/lora.json, lora.md
    python -m paper.train --data mnist --out runs/mnist         # the MNIST job, its base in runs/mnist
    python -m paper.lora_bench --data mnist                     # -> runs/lora_bench_mnist/lora.json, lora.md

Rows: full fine-tuning; LoRA on W_q, W_v (the paper's choice, §5.1); LoRA on q, k, v, proj, fc1, fc2; each LoRA at
two ranks, α = r (the default of --lora).
- Test accuracy, trainable parameters, optimizer-state bytes: one `python -m paper.train --data DATA --stages
  finetune --init BASE [--lora R --lora-targets …]` run per row (seed 0, one thread), read from its log and its
  checkpoint (SGD's momentum: one buffer per trained tensor).
- Step time: one training step (paper.train.train_step: forward, cross-entropy, backward, clipping, SGD) on a batch
  of --batch (default the recipe's, 64), the rows interleaved in rounds so that noise from other work falls on all
  alike; the median over rounds.
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
from .recipes import SMALL_JOBS
from .resolution import change_resolution
from .schedules import Schedule
from .train import ExplicitParams, Processes, make_optimizer, train_step
from .train import main as train
from .train_state import load_checkpoint

ALL = ("q", "k", "v", "proj", "fc1", "fc2")
ROWS = {"full fine-tuning": None, **{f"LoRA {','.join(t)}, r={r}": LoRAConfig(r, float(r), t)
                                     for t in (("q", "v"), ALL) for r in (4, 16)}}
KIB, MIB = 2 ** 10, 2 ** 20


def fine_tuning_model(data: str, init: str, lora: LoRAConfig | None):
    """The model `python -m paper.train --data DATA --stages finetune --init INIT [--lora …]` trains: the new zero
    head, E_pos interpolated to the fine-tuning resolution, and the adapters when `lora` is given."""
    recipe, state = SMALL_JOBS[data][2], load_checkpoint(init)
    cfg = dataclasses.replace(vit.ViTConfig(**state["config"]), dropout=recipe.dropout)
    params, cfg = finetuning_head(state["params"], cfg, cfg.num_classes)
    params, cfg = change_resolution(params, cfg, recipe.image_size, method="official")
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
            log = train([*flags, "--out", folder])
            state = load_checkpoint(os.path.join(folder, "finetune.pt"))
            momentum = [t for s in state["optimizer"]["state"].values() for t in s.values() if torch.is_tensor(t)]
            call = f"from paper.lora_bench import memory_here; print(memory_here({data!r}, {init!r}, {row!r}, {batch}))"
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
    parser.add_argument("--data", choices=sorted(SMALL_JOBS), default="digits",
                        help="the small job whose fine-tuning stage is measured (default digits, the main job)")
    parser.add_argument("--init", help="the pre-trained base (default: runs/main/pretrain.pt for digits, "
                                       "runs/mnist/pretrain.pt for mnist, as python -m paper.train writes them)")
    parser.add_argument("--batch", type=cli.positive,
                        help="batch for step time and memory (default: the fine-tuning recipe's)")
    parser.add_argument("--rounds", type=cli.positive, default=50,
                        help="interleaved rounds of one step per row (step time)")
    parser.add_argument("--out", help="folder for the runs and lora.* (default runs/lora_bench, "
                                      "runs/lora_bench_mnist for mnist)")
    args = parser.parse_args(argv)
    base = {"digits": "main", "mnist": "mnist"}[args.data]
    init = args.init or os.path.join("runs", base, "pretrain.pt")
    out = args.out or os.path.join("runs", "lora_bench" + ("" if args.data == "digits" else f"_{args.data}"))
    batch = args.batch or SMALL_JOBS[args.data][2].batch_size
    if not os.path.isfile(init):
        raise ValueError(f"init: expected a pre-trained checkpoint, got {init!r}, which does not exist "
                         f"(python -m paper.train --data {args.data} --out runs/{base} writes it)")
    results = measure(args.data, init, out, batch, args.rounds)
    model, _ = fine_tuning_model(args.data, init, None)
    table = markdown(results, sum(p.numel() for p in model.parameters()))
    write_text(os.path.join(out, "lora.json"), json.dumps(results, indent=1))
    write_text(os.path.join(out, "lora.md"), table)
    print(table)
    return results


if __name__ == "__main__":
    cli.run(main)
