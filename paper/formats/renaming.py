"""A state dict that is our parameters renamed one to one, the patch projection (D, C·P·P) stored as the conv kernel
(D, C, P, P) it is: what timm's and torchvision's ViT and Swin state dicts are. Each format gives its name function.
And transformers' two spellings of a name (saved, in memory), for its ViT and its Swin."""
import torch

from lowlevel import check_params


def respelled(name: str, renames: list[tuple[str, str]], to_saved: bool) -> str:
    """A transformers name between its saved (transformers 4) and in-memory (transformers 5) spellings: `renames`
    holds (saved, in memory) pieces, replaced in order."""
    for saved, memory in renames:
        name = name.replace(memory, saved) if to_saved else name.replace(saved, memory)
    return name


def conv_shape(cfg, shapes: dict) -> tuple[int, int, int, int]:
    """The patch projection (D, C·P·P) as a Conv2d kernel, (D, C, P, P); a hybrid's C is its feature map's."""
    d, cpp = shapes["patch.weight"]
    p = cfg.patch_size
    return d, cpp // (p * p), p, p


def renamed(params: dict, shapes: dict, cfg, key) -> dict[str, torch.Tensor]:
    """Our `params` (checked against `shapes`) -> {key(name): tensor}, copies, the patch projection as a kernel."""
    check_params(params, shapes)
    sd = {key(k): v.detach().clone() for k, v in params.items()}
    sd[key("patch.weight")] = sd[key("patch.weight")].reshape(conv_shape(cfg, shapes))
    return sd


def unrenamed(sd: dict, shapes: dict, cfg, key, what: str, buffers: dict | None = None) -> dict[str, torch.Tensor]:
    """The inverse of `renamed`: `sd` must hold exactly our parameters under key(name) (and `buffers`, {key: shape},
    which are checked and dropped); every missing, unexpected or mis-shaped key is named before anything is
    converted. Returns the parameters in `shapes`' order."""
    names = {key(k): k for k in shapes}
    expected = {t: (conv_shape(cfg, shapes) if k == "patch.weight" else shapes[k]) for t, k in names.items()}
    check_params(sd, {**expected, **(buffers or {})}, what=what)
    params = {names[t]: sd[t].detach().clone() for t in names}
    params["patch.weight"] = params["patch.weight"].reshape(shapes["patch.weight"])
    return {k: params[k] for k in shapes}
