"""Randomness that does not leak: code run under `seeded(seed)` draws from torch's global generator seeded by `seed`
and leaves it as it found it (torchvision's ResNet initialises, and its RandAugment draws, from the global one)."""
import contextlib

import torch


@contextlib.contextmanager
def seeded(seed: int):
    """torch's global generator seeded by `seed` inside the block, as it was after it (CPU)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield
