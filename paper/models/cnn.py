"""The CNN baseline: torchvision's ResNet-18 (He et al. 2016), built by the library, not by hand, for grey digits.

torchvision's `resnet18` is made for 224-px RGB photos: its stem is a 7×7 stride-2 convolution over 3 channels, then a
3×3 stride-2 max-pool, and nothing else in the network depends on the channel count or the image size (global average
pooling before the head). Two stems are in use for small images (../shared/FAMILY.md §6):

    stem      conv1                            max-pool    28×28 input -> layer4 map    params (1 channel, 10 classes)
    "stock"   7×7, stride 2, padding 3         3×3, s 2    1×1 (32× down-sampling)      11,175,370
    "cifar"   3×3, stride 1, padding 1         none        4×4 (8× down-sampling)       11,172,810

"cifar" is the adaptation of the PyTorch Lightning CIFAR-10 baseline (`create_model()`: exactly these two
replacements) and of kuangliu/pytorch-cifar's ResNet18. Either way only conv1 is replaced, for one input channel,
and it gets torchvision's own initialisation of conv1 (kaiming normal, fan_out, ReLU gain; torchvision
models/resnet.py `ResNet.__init__`), so the network is torchvision's in everything else.
"""
import dataclasses

import torch
import torch.nn as nn
import torchvision

from paper.models.seeding import seeded

STEMS = ("stock", "cifar")


@dataclasses.dataclass(frozen=True)
class ResNetConfig:
    stem: str = "stock"                       # see the table above
    in_channels: int = 1
    num_classes: int = 10
    image_size: tuple[int, int] = (28, 28)    # the resolution it trains and is evaluated at (any size runs)

    def __post_init__(self):
        if isinstance(self.image_size, int):
            object.__setattr__(self, "image_size", (self.image_size, self.image_size))
        else:
            object.__setattr__(self, "image_size", tuple(self.image_size))
        if self.stem not in STEMS:
            raise ValueError(f"stem: expected one of {STEMS}, got {self.stem!r}")
        for name in ("in_channels", "num_classes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: expected a positive integer, got {getattr(self, name)}")


def resnet18(cfg: ResNetConfig, seed: int = 0) -> torchvision.models.ResNet:
    """torchvision's ResNet-18 with cfg's stem, channels and classes, initialised by torchvision from `seed` (the global
    random stream is left as it was)."""
    with seeded(seed):
        net = torchvision.models.resnet18(num_classes=cfg.num_classes)
        if cfg.stem == "stock":
            net.conv1 = nn.Conv2d(cfg.in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        else:
            net.conv1 = nn.Conv2d(cfg.in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
            net.maxpool = nn.Identity()
        nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")
    return net


class ResNetClassifier(nn.Module):
    """The ResNet as paper/train.py trains a model: `cfg`, `forward(images) -> logits`, and `as_dict()`, the tensors a
    checkpoint holds (torchvision's state_dict, BatchNorm's running statistics included)."""

    def __init__(self, cfg: ResNetConfig, seed: int = 0):
        super().__init__()
        self.cfg = cfg
        self.net = resnet18(cfg, seed)

    def as_dict(self) -> dict:
        return self.net.state_dict()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)
