"""Benchmark: our functional ViT (explicit and fast path) against timm and transformers, same weights, same batch.

    python -m paper.bench                              # ViT-B/16 @224, batch 8, fp32, CPU, all threads torch uses
    python -m paper.bench --sweep                      # and the sequence-length sweep, 224/384/512 for /16
    python -m paper.bench --sweep 224,384,512,768 --sweep-models ViT-B/16,Swin-T   # global vs windowed attention
    python -m paper.bench --dtype bfloat16 --device cuda --compile
    python -m paper.bench --model mnist-vit,mnist-resnet18 --threads 1   # the training loop of the small models
    python -m paper.bench --model mnist-vit --threads 1 --operators     # its time by kind of operator

The training loop (--model mnist-vit, mnist-resnet18, or both, comma-separated): paper.compare's ViT against timm's
equal model with its weights, paper.train --data mnist's two stages and paper.compare's ResNet-18, each trained in
train_stage's loop on the real MNIST digits in rounds of --steps steps (taken in turns of a few steps, contender
after contender), an evaluation and a checkpoint; images/s, the ratio to timm and each phase's share
(paper/reports/loop_measure.py states the method). It writes loop.json, loop.md and loop.png.

Method. One process holds every contender with the same weights (`init_params`, seed 0). Each round runs, for every
contender in a rotated order, one inference call (`torch.inference_mode`), each just after timing a large square
matmul, then, in the same order, one training step each (forward, cross-entropy, backward, SGD momentum 0.9); rounds
repeat `--repeats` times.
So noise from other work on the machine falls on all contenders alike, and each ratio ours/timm is taken within
a round, then summarised by its median and range over the rounds.

- images/s = batch / median time of one call.
- GFLOP/s = analytic forward FLOPs (2 × multiply-accumulates of every matmul) / time;
  a training step counts 3 × forward. The FLOPs are those the contender performs: the fast path, whose last block
  computes only the class token, is credited with less work than the others. The matmul peak is the fastest of
  three 4096² products, timed just before each inference call; "% of peak" divides each call's GFLOP/s by that
  peak (median and range over the rounds), so that the machine's speed, which drifts on a shared host, is the
  same on both sides of the ratio. The fraction of the fastest peak of the whole run, a lower bound, is reported
  too.
- Peak training memory: on CPU, each contender runs in a fresh process (so libraries and other contenders do not
  count) with glibc's mmap threshold fixed at 64 KiB (so freed tensors return to the system), and a thread samples
  the resident set size every millisecond during two training steps; the figure is the peak minus the resident set
  size just before the first step: activations, gradients, optimizer state and kernel workspace. On CUDA it is
  `torch.cuda.max_memory_allocated` above the allocation before the step.
- Activations saved: the bytes of the tensors autograd keeps from the forward for the backward (parameters left
  out), exact and allocator-independent; not measured under --compile.
"""
import dataclasses
import json
import os
import platform
import shlex
import sys
import tempfile

import torch
from tqdm import tqdm

from paper import cli
from paper.formats.atomic import write_text
from paper.models.family import paper_config
from paper.reports.bench_report import loop_markdown, loop_plot, markdown, operators_markdown, operators_plot, plot
from paper.reports.contenders import CONTENDERS
from paper.reports.loop_measure import TURN, measure_loop
from paper.reports.loop_operators import profile_operators
from paper.reports.measure import cpu_name, measure

SWEEP = (224, 384, 512)
SWEEP_CONTENDERS = ("ours explicit", "ours fast")
LOOP_MODELS = ("mnist-vit", "mnist-resnet18")


def sweep_sizes(text: str, patch_size: int) -> list[int]:
    """"224,384,512" -> [224, 384, 512], each rounded to a multiple of the patch size."""
    try:
        sizes = [int(s) for s in text.split(",")]
    except ValueError:
        raise ValueError(f"--sweep: expected comma-separated resolutions like '224,384,512', got {text!r}") from None
    return [patch_size * max(1, round(s / patch_size)) for s in sizes]


def sweep_models(args) -> list[str]:
    """--sweep-models as a list of names (each checked), --model when not given."""
    names = [n.strip() for n in (args.sweep_models or args.model).split(",") if n.strip()]
    if not names:
        raise ValueError(f"--sweep-models: expected comma-separated model names, got {args.sweep_models!r}")
    for name in names:
        paper_config(name)                                       # a ValueError naming the bad name
    return names


def parse_args(argv=None):
    p = cli.parser("python -m paper.bench", __doc__.split("\n\n")[0], epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    p.add_argument("--model", default="ViT-B/16",
                   help="paper or timm name, e.g. ViT-B/16, vit_small_patch16_384; or the training loop of "
                        f"{', '.join(LOOP_MODELS)} (comma-separated)")
    p.add_argument("--resolution", type=int, help="image side in pixels (default: from the name, else 224)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                   help="weights, activations and matmul peak")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--threads", type=int, default=torch.get_num_threads(),
                   help="torch.set_num_threads for every contender (default: torch's, %(default)s here)")
    p.add_argument("--bf16", action="store_true",
                   help="bfloat16 autocast over float32 weights, as paper.train --bf16 trains (the matmul peak in "
                        "bfloat16)")
    p.add_argument("--compile", action="store_true", help="torch.compile every contender's forward")
    p.add_argument("--operators", action="store_true",
                   help="training loop: profile --steps steps of every contender with torch.profiler and split their "
                        "time by kind of operator (loop_operators.json, .md and .png), instead of timing rounds")
    p.add_argument("--repeats", type=int, default=5, help="interleaved rounds")
    p.add_argument("--steps", type=int, default=150, help="training steps per round of the training loop")
    p.add_argument("--only", default=",".join(CONTENDERS),
                   help=f"comma-separated contenders (default all: {', '.join(CONTENDERS)})")
    p.add_argument("--sweep", nargs="?", const=",".join(map(str, SWEEP)), metavar="SIZES",
                   help="also time explicit vs fast attention at these resolutions (default %(const)s)")
    p.add_argument("--sweep-models", metavar="NAMES",
                   help="comma-separated models the sweep runs, e.g. ViT-B/16,Swin-T (default: --model)")
    p.add_argument("--no-memory", action="store_true",
                   help="skip the peak-memory measurement (a fresh process per contender, seconds each)")
    p.add_argument("--out", default="runs/bench", help="folder for bench.json, bench.md and bench.png")
    return p.parse_args(argv)


def check_args(args) -> list[str]:
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = [n for n in names if n not in CONTENDERS]
    if unknown or not names:
        raise ValueError(f"--only: expected names among {CONTENDERS}, got {args.only!r}")
    for flag in ("batch", "repeats", "threads", "steps"):
        if getattr(args, flag) < 1:
            raise ValueError(f"--{flag}: expected a positive integer, got {getattr(args, flag)}")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device: expected an available device, got {args.device!r} (torch sees no CUDA device)")
    if not args.device.startswith("cuda") and args.device != "cpu":
        raise ValueError(f"--device: expected cpu, cuda or cuda:N, got {args.device!r}")
    return names


def loop_models(text: str) -> list[str] | None:
    """--model as training-loop names, or None for a model name; a mix is refused."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not any(n in LOOP_MODELS for n in names):
        return None
    if not all(n in LOOP_MODELS for n in names):
        raise ValueError(f"--model: expected training-loop names among {LOOP_MODELS} or one model name, got {text!r}")
    return names


def report(result: dict, out: str, stem: str, table_of, plot_to) -> dict:
    """OUT/STEM.json, OUT/STEM.md (printed too) and OUT/STEM.png of a result. -> the result."""
    table = table_of(result)
    write_text(os.path.join(out, f"{stem}.json"), json.dumps(result, indent=1))
    write_text(os.path.join(out, f"{stem}.md"), table)
    plot_to(result, os.path.join(out, f"{stem}.png"))
    print(table)
    return result


def main_loop(models: list[str], args, argv) -> dict:
    """The training loop's benchmark: loop.json, loop.md and loop.png in --out."""
    if args.device != "cpu":
        raise ValueError(f"--device: the training loop is measured on the CPU, got {args.device!r}")
    if args.dtype != "float32":
        raise ValueError(f"--dtype: the training loop trains float32 weights (--bf16 for bfloat16 autocast), got "
                         f"{args.dtype}")
    torch.set_num_threads(args.threads)
    run = {"models": models, "steps": args.steps, "rounds": args.repeats, "turn": TURN, "device_name": cpu_name(),
           "bf16": args.bf16, "compile": args.compile,
           "threads": args.threads, "torch": torch.__version__, "python": platform.python_version(),
           "command": shlex.join(["python", "-m", "paper.bench", *(sys.argv[1:] if argv is None else argv)])}
    if args.operators:
        with tempfile.TemporaryDirectory() as folder:
            result = {"run": run, "operators": profile_operators(models, args.steps, args.bf16, args.compile, folder)}
        return report(result, args.out, "loop_operators", operators_markdown, operators_plot)
    result = {"run": run, "loop": measure_loop(models, args.steps, args.repeats, args.bf16, args.compile)}
    return report(result, args.out, "loop", loop_markdown, loop_plot)


def main(argv=None) -> dict:
    args = parse_args(argv)
    names = check_args(args)
    models = loop_models(args.model)
    if models:
        return main_loop(models, args, argv)
    torch.set_num_threads(args.threads)
    overrides = {"image_size": args.resolution} if args.resolution else {}
    cfg = paper_config(args.model, **overrides)
    sweep = [(m, size) for m in sweep_models(args) for size in sweep_sizes(args.sweep, paper_config(m).patch_size)] \
        if args.sweep else []
    steps = 2 * len(names) + args.repeats * len(names) + len(sweep) * (2 + args.repeats) * len(SWEEP_CONTENDERS)
    device_name = torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else cpu_name()
    run = {"model": args.model, "batch": args.batch, "dtype": args.dtype, "bf16": args.bf16, "device": args.device,
           "device_name": device_name, "threads": args.threads, "compile": args.compile, "repeats": args.repeats,
           "torch": torch.__version__, "python": platform.python_version(),
           "command": shlex.join(["python", "-m", "paper.bench", *(sys.argv[1:] if argv is None else argv)])}
    with tqdm(total=steps, desc="benchmark", unit="run") as progress:
        result = {"run": run, "config": dataclasses.asdict(cfg), "main": measure(cfg, tuple(names), args, progress),
                  "sweep": [{"model": m, **measure(paper_config(m, image_size=s), SWEEP_CONTENDERS, args, progress)}
                            for m, s in sweep]}
    return report(result, args.out, "bench", markdown, plot)


if __name__ == "__main__":
    cli.run(main)
