"""Input checks that fail early with an error naming the parameter, what was expected and what was got."""
import torch


def check_images(images: torch.Tensor, *, patch_size: int, channels: int | None = None,
                 size: tuple[int, int] | None = None) -> None:
    """Images must be (B, C, H, W), with C and (H, W) as the config says and H, W multiples of P."""
    if not isinstance(images, torch.Tensor):
        raise ValueError(f"images: expected a torch.Tensor (B, C, H, W), got {type(images).__name__}")
    if images.ndim != 4:
        raise ValueError(f"images: expected rank 4 (B, C, H, W), got rank {images.ndim} with shape {tuple(images.shape)}")
    _, c, h, w = images.shape
    if channels is not None and c != channels:
        raise ValueError(f"images: expected {channels} channels (cfg.in_channels), got {c} in shape {tuple(images.shape)}")
    if size is not None and (h, w) != tuple(size):
        raise ValueError(f"images: expected height and width {tuple(size)} (cfg.image_size), got {(h, w)}")
    if h % patch_size or w % patch_size:
        raise ValueError(f"images: expected height and width divisible by patch_size={patch_size}, got {(h, w)}")


def check_params(params: dict, expected: dict[str, tuple[int, ...]], what: str = "params") -> None:
    """`params` must have exactly the keys of `expected`, each of the expected shape; lists every bad key."""
    missing = sorted(set(expected) - set(params))
    unexpected = sorted(set(params) - set(expected))
    misshaped = sorted(f"{k}: expected {tuple(expected[k])}, got {tuple(params[k].shape)}"
                       for k in set(expected) & set(params) if tuple(params[k].shape) != tuple(expected[k]))
    if missing or unexpected or misshaped:
        lines = [f"{what} do not match the config:"]
        lines += [f"  missing key: {k}" for k in missing]
        lines += [f"  unexpected key: {k}" for k in unexpected]
        lines += [f"  mis-shaped key {m}" for m in misshaped]
        raise ValueError("\n".join(lines))
