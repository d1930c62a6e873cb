"""Two probes of what a trained classifier takes for granted about images (`paper.compare` runs them).

- Shift: each test digit moved k = 1…4 pixels up, down, left or right (each image its own direction, drawn from a
  seed), the pixels that come in black like MNIST's background. A CNN's convolutions are translation-equivariant
  and its global average pooling makes the whole network nearly shift-invariant; a ViT has neither, and at patch
  size 4 a 4-pixel shift moves the digit by exactly one patch, onto other position embeddings.
- Permuted patches: each test digit cut into its P×P patches and the patches shuffled (each image its own
  permutation). Without position embeddings a ViT sees a set: attention and the MLP treat every patch token alike,
  so its logits do not change at all. With E_pos, and for a CNN, the digit is gone.

Images are (B, C, H, W) with pixels in [0, 1], before any preprocessing; a classifier takes them as
`paper.training.classifier.Classifier` does.
"""
import torch
import torch.nn.functional as F

import lowlevel as vit

DIRECTIONS = ((1, 0), (-1, 0), (0, 1), (0, -1))   # (dy, dx): down, up, right, left
MAX_SHIFT = 4


def shift(images: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """(B, C, H, W) moved dy pixels down and dx pixels right (negative: up, left): out[..., i, j] = in[..., i-dy, j-dx]
    where that pixel exists, else 0."""
    h, w = images.shape[-2:]
    padded = F.pad(images, (max(dx, 0), max(-dx, 0), max(dy, 0), max(-dy, 0)))   # (B, C, H+|dy|, W+|dx|)
    top, left = max(-dy, 0), max(-dx, 0)
    return padded[..., top:top + h, left:left + w]


def shift_each(images: torch.Tensor, k: int, directions: torch.Tensor) -> torch.Tensor:
    """Image b moved k pixels in DIRECTIONS[directions[b]]. (B, C, H, W), directions (B,) -> (B, C, H, W)."""
    out = torch.empty_like(images)
    for d, (dy, dx) in enumerate(DIRECTIONS):
        mine = directions == d
        out[mine] = shift(images[mine], k * dy, k * dx)
    return out


def permute_patches(images: torch.Tensor, patch_size: int, permutations: torch.Tensor) -> torch.Tensor:
    """Patch n of image b's output is patch permutations[b, n] of its input (patches in row-major grid order).
    (B, C, H, W), permutations (B, N) -> (B, C, H, W)."""
    grid = images.shape[-2] // patch_size, images.shape[-1] // patch_size
    patches = vit.patchify(images, patch_size)                                      # (B, N, C·P·P)
    shuffled = patches.gather(1, permutations[..., None].expand_as(patches))
    return vit.unpatchify(shuffled, patch_size, grid)


@torch.no_grad()
def accuracy(classify, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 500) -> float:
    """Top-1 accuracy of classify(images) -> logits."""
    correct = sum((classify(images[i:i + batch_size]).argmax(-1) == labels[i:i + batch_size]).sum().item()
                  for i in range(0, len(labels), batch_size))
    return correct / len(labels)


def probe(classify, images: torch.Tensor, labels: torch.Tensor, patch_size: int, seed: int) -> dict:
    """{"shift": accuracy at k = 0, 1, …, MAX_SHIFT pixels, "permuted": accuracy with shuffled patches}. The directions
    and permutations depend on `seed` alone, so every model probed with one seed sees the same images."""
    g = torch.Generator().manual_seed(seed)
    directions = torch.randint(len(DIRECTIONS), (len(labels),), generator=g)
    num_patches = (images.shape[-2] // patch_size) * (images.shape[-1] // patch_size)
    permutations = torch.rand(len(labels), num_patches, generator=g).argsort(dim=1)
    return {"shift": [accuracy(classify, shift_each(images, k, directions), labels) for k in range(MAX_SHIFT + 1)],
            "permuted": accuracy(classify, permute_patches(images, patch_size, permutations), labels)}
