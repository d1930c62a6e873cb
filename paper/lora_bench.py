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
- Step time: one training step (paper.training.loop.train_step: forward, cross-entropy, backward, clipping, SGD) on a batch
  of --batch (default the recipe's, 64), the rows interleaved in rounds so that noise from other work falls on all
  alike; the median over rounds.
- Peak memory: paper.bench's measure: in a fresh process per row, the resident-set growth at its peak over two
  training steps (gradients, optimizer state, activations, workspace; the weights are allocated before).
- Activations saved: paper.bench's exact count of the bytes autograd keeps from the forward for the backward, weights
  (frozen or trained) left out.
"""
import json
import os

from paper import cli
from paper.formats.atomic import write_text
from paper.reports.lora_measure import fine_tuning_model, markdown, measure
from paper.training.recipes import SMALL_JOBS


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
