"""A short pre-training stage in float64 on a small random data set: tests/training/test_training.py runs it in-process as one
process and under `torch.distributed.run` as 2 gloo processes (`tests/training/distributed_worker.py OUT_DIR ACCUM_STEPS`)."""
import sys

import torch

import lowlevel as vit
from paper.models.heads import pretraining_head
from paper.training.data import ImageArray
from paper.training.loop import Run
from paper.training.processes import Processes, start_processes
from paper.training.recipes import Recipe
from paper.training.stages import train_vit

CFG = pretraining_head(vit.ViTConfig(image_size=8, patch_size=4, in_channels=1, dim=16, depth=1, num_heads=2,
                                     mlp_dim=32), 10)  # dropout 0: the processes' dropout streams differ
RECIPE = Recipe(stage="pretrain", optimizer="adam", base_lr=1e-3, total_steps=4, warmup_steps=1, decay="cosine",
                batch_size=16, weight_decay=0.1, grad_clip=1.0, image_size=8, crop_area=(0.5, 1.0), flip=True)


def pretrain(out: str, accum_steps: int, procs: Processes) -> None:
    g = torch.Generator().manual_seed(0)
    data = ImageArray(torch.rand(40, 1, 8, 8, generator=g), torch.randint(0, 10, (40,), generator=g))
    run = Run(out=out, procs=procs, dtype=torch.float64, accum_steps=accum_steps)
    train_vit("pretrain", vit.init_params(CFG, torch.Generator().manual_seed(0)), CFG, RECIPE, data, data, run)


if __name__ == "__main__":
    torch.set_num_threads(1)
    pretrain(sys.argv[1], int(sys.argv[2]), start_processes("cpu"))
    torch.distributed.destroy_process_group()
