"""DeiT's data augmentation (Touvron et al. 2021, §6 and Table 9) with torchvision's transforms (v2): RandAugment,
random erasing, and Mixup or CutMix; label smoothing is in the loss (distillation.py `true_label_loss`).

Per image, after data.py's random crop and flip: RandAugment on the [0, 1] image, the scaling to [-1, 1], then random
erasing with N(0, 1) noise. That is the official code's order: timm's create_transform (deit datasets.py) erases
after normalising, in its "pixel" mode, per-pixel normal values (torchvision's value="random"). Per batch: Mixup or
CutMix, one of the two at random for each batch (deit main.py: timm's Mixup with switch_prob 0.5), the targets mixed
with the images.

torchvision draws from torch's global random generator. Each call here seeds a fork of it from the stream position
(or the step), so the run stays a pure function of (seed, step), as data.py promises: a resumed run sees the same
augmentations, and nothing else sees its random numbers move.
"""

import torch
from torchvision.transforms import v2

from paper.models.seeding import seeded
from paper.training.data import to_unit_interval

# torchvision's RandAugment spreads the magnitudes over `num_magnitude_bins` levels from 0 to the maximum; timm's
# (the official code's) magnitude m is m/10 of the maximum (timm auto_augment.py _LEVEL_DENOM = 10). With 11 levels,
# torchvision's level m is that same m/10.
MAGNITUDE_LEVELS = 11


class ImageAugmentation:
    """RandAugment, the scaling to [-1, 1], random erasing: (C, H, W) in [0, 1] -> the model's (C, H, W) input."""

    def __init__(self, rand_augment: tuple[int, int] | None, erasing: float):
        self.rand_augment = None
        if rand_augment:
            num_ops, magnitude = rand_augment
            self.rand_augment = v2.RandAugment(num_ops=num_ops, magnitude=magnitude,
                                               num_magnitude_bins=MAGNITUDE_LEVELS)
        # scale and ratio ranges are torchvision's defaults, the same as timm's RandomErasing's
        self.erasing = v2.RandomErasing(p=erasing, value="random") if erasing else None

    def __call__(self, image: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        with seeded(int(torch.randint(2 ** 62, (1,), generator=generator))):
            if self.rand_augment is not None:
                image = self.rand_augment(image)
            x = to_unit_interval(image)
            return self.erasing(x) if self.erasing is not None else x


class BatchMixing:
    """Mixup (Beta(α, α) weights) or CutMix (a Beta(α, α) share of the area), one of the two per batch when both are
    on: (images (B, C, H, W), labels (B,)) -> (mixed images, mixed targets (B, K) in the images' dtype)."""

    def __init__(self, mixup_alpha: float, cutmix_alpha: float, num_classes: int):
        mixes = [v2.MixUp(alpha=mixup_alpha, num_classes=num_classes)] if mixup_alpha else []
        mixes += [v2.CutMix(alpha=cutmix_alpha, num_classes=num_classes)] if cutmix_alpha else []
        if not mixes:
            raise ValueError("mixup_alpha, cutmix_alpha: expected at least one positive, got both 0")
        self.mix = mixes[0] if len(mixes) == 1 else v2.RandomChoice(mixes)   # 50/50, the official switch_prob 0.5

    def __call__(self, images: torch.Tensor, labels: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        with seeded(seed):
            images, targets = self.mix(images, labels)
        return images, targets.to(images.dtype)


def image_augmentation(recipe) -> ImageAugmentation | None:
    """The recipe's per-image augmentations, or None when it has none."""
    if not (recipe.rand_augment or recipe.random_erasing):
        return None
    return ImageAugmentation(recipe.rand_augment, recipe.random_erasing)


def batch_mixing(recipe, num_classes: int) -> BatchMixing | None:
    """The recipe's Mixup/CutMix, or None when it has neither."""
    if not (recipe.mixup_alpha or recipe.cutmix_alpha):
        return None
    return BatchMixing(recipe.mixup_alpha, recipe.cutmix_alpha, num_classes)
