"""LoRA (Hu et al. 2021, arXiv:2106.09685): fine-tune a frozen model through low-rank updates of its weights.

    h = W₀x + (α/r)·B A x        eq. (3), scaled as in §4.1; B ∈ R^{d×r} starts at 0, so ΔW = BA is 0 at the start

The adapters are a dict of their own, never mixed into the params; their names mirror the params':

    blocks.{i}.q.lora_A (r, D)    blocks.{i}.q.lora_B (D, r)     rows 0…D−1 of blocks.{i}.qkv.weight: W_q
    blocks.{i}.k.*, blocks.{i}.v.*                               rows D…2D−1 (W_k), 2D…3D−1 (W_v)
    blocks.{i}.qkv.lora_A (r, D)  blocks.{i}.qkv.lora_B (3D, r)  the whole fused matrix, one A for q, k and v
    blocks.{i}.proj.lora_A (r, D) blocks.{i}.proj.lora_B (D, r)  W_o, the attention's output projection
    blocks.{i}.fc1.lora_A (r, D)  blocks.{i}.fc1.lora_B (M, r)
    blocks.{i}.fc2.lora_A (r, M)  blocks.{i}.fc2.lora_B (D, r)
    head.lora_A (r, D)            head.lora_B (K, r)

q, k and v are what the paper adapts (W_q and W_v in most experiments, §5.1). "qkv" is what peft can do on timm's
fused projection: one LoRA pair over all 3D rows (peft#691), so q, k and v share A. `adapt` turns params + adapters
into the weights one forward reads (linear.py computes x W₀ᵀ + (α/r)·x Aᵀ Bᵀ); `merge` folds them in for inference
("No Additional Inference Latency", §4.1) and `unmerge` takes them out again.
"""
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .checks import check_config, check_params
from .config import ViTConfig, is_integer, is_real
from .linear import LowRank, Weight

__all__ = ["LoRAConfig", "adapter_shapes", "init_adapters", "adapt", "merge", "unmerge"]

BLOCK_TARGETS = ("q", "k", "v", "qkv", "proj", "fc1", "fc2")
TARGETS = (*BLOCK_TARGETS, "head")
INITS = ("peft", "paper")
# The parameter each target adapts, and which of its output rows, in units of D (None: all of them).
ADAPTED_WEIGHT = {"q": ("qkv", (0, 1)), "k": ("qkv", (1, 2)), "v": ("qkv", (2, 3)), "qkv": ("qkv", None),
                  "proj": ("proj", None), "fc1": ("fc1", None), "fc2": ("fc2", None)}


@dataclass(frozen=True)
class LoRAConfig:
    """Which weights get adapters and how they are scaled. Defaults: peft's r = α = 8 on the paper's W_q, W_v."""
    rank: int = 8                                # r
    alpha: float = 8.0                           # α; the paper sets it to the first r it tries and does not tune it
    targets: tuple[str, ...] = ("q", "v")        # among TARGETS
    blocks: tuple[int, ...] | None = None        # the blocks adapted; None: every one
    rslora: bool = False                         # scale by α/√r (rsLoRA, arXiv:2312.03732) instead of α/r
    dropout: float = 0.0                         # on each adapter's input (loralib, peft); not in eq. (3)

    def __post_init__(self):
        if not isinstance(self.targets, tuple | list) or not all(isinstance(t, str) for t in self.targets):
            raise ValueError(f"targets: expected a tuple of names among {TARGETS}, got {self.targets!r}")
        object.__setattr__(self, "targets", tuple(self.targets))
        if self.blocks is not None:
            if not isinstance(self.blocks, tuple | list) or not all(is_integer(i) for i in self.blocks):
                raise ValueError(f"blocks: expected None (every block) or a tuple of block indices, got {self.blocks!r}")
            object.__setattr__(self, "blocks", tuple(sorted(set(self.blocks))))
        if not is_integer(self.rank) or self.rank < 1:
            raise ValueError(f"rank: expected a positive integer, got {self.rank!r}")
        if not is_real(self.alpha) or not 0 < self.alpha < math.inf:
            raise ValueError(f"alpha: expected a finite positive number, got {self.alpha!r}")
        unknown = [t for t in self.targets if t not in TARGETS]
        if unknown or not self.targets or len(set(self.targets)) != len(self.targets):
            raise ValueError(f"targets: expected distinct names among {TARGETS}, got {self.targets}")
        if "qkv" in self.targets and {"q", "k", "v"} & set(self.targets):
            raise ValueError(f"targets: 'qkv' adapts q, k and v together, so it cannot be combined with them, "
                             f"got {self.targets}")
        if self.blocks is not None and (not self.blocks or min(self.blocks) < 0):
            raise ValueError(f"blocks: expected None (every block) or block indices >= 0, got {self.blocks}")
        if not isinstance(self.rslora, bool):
            raise ValueError(f"rslora: expected True or False, got {self.rslora!r}")
        if not is_real(self.dropout) or not 0 <= self.dropout < 1:
            raise ValueError(f"dropout: expected a rate in [0, 1), got {self.dropout!r}")

    @property
    def scaling(self) -> float:
        """α/r (§4.1), or α/√r with rsLoRA (peft's use_rslora)."""
        return self.alpha / (math.sqrt(self.rank) if self.rslora else self.rank)


def adapted_layers(cfg: ViTConfig, lora: LoRAConfig) -> list[str]:
    """The adapter names, "blocks.{i}.{target}" and "head", in a fixed order (block by block, TARGETS order)."""
    check_config(cfg, ViTConfig)
    check_config(lora, LoRAConfig, "lora")
    blocks = range(cfg.depth) if lora.blocks is None else lora.blocks
    if blocks and max(blocks) >= cfg.depth:
        raise ValueError(f"blocks: expected indices below depth={cfg.depth}, got {lora.blocks}")
    targets = [t for t in BLOCK_TARGETS if t in lora.targets]
    names = [f"blocks.{i}.{t}" for i in blocks for t in targets]
    if "head" in lora.targets:
        if not cfg.num_classes:
            raise ValueError("targets: 'head' needs a classifier, got cfg.num_classes=0")
        names.append("head")
    return names


def adapted_weight(name: str, cfg: ViTConfig) -> tuple[str, tuple[int, int], int]:
    """An adapter name -> (the parameter it adapts, its rows (start, stop), the weight's input width)."""
    if name == "head":
        width = cfg.representation_size or cfg.dim
        return "head.weight", (0, cfg.num_classes), width
    _, i, target = name.split(".")
    part, thirds = ADAPTED_WEIGHT[target]
    out = {"qkv": 3 * cfg.dim, "proj": cfg.dim, "fc1": cfg.mlp_dim, "fc2": cfg.dim}[part]
    rows = (0, out) if thirds is None else (thirds[0] * cfg.dim, thirds[1] * cfg.dim)
    return f"blocks.{i}.{part}.weight", rows, cfg.mlp_dim if part == "fc2" else cfg.dim


def adapter_shapes(cfg: ViTConfig, lora: LoRAConfig) -> dict[str, tuple[int, int]]:
    """Every adapter tensor's name and shape: lora_A (r, in), lora_B (rows, r). A rank above the smaller side of
    an adapted (rows × in) matrix is refused: ΔW = BA has rank at most min(rows, in), so the extra rank would add
    parameters and nothing else (§4.1 takes r ≪ min(d, k))."""
    shapes = {}
    for name in adapted_layers(cfg, lora):
        _, (start, stop), width = adapted_weight(name, cfg)
        if lora.rank > min(stop - start, width):
            raise ValueError(f"rank: expected at most {min(stop - start, width)}, the smaller side of {name}'s "
                             f"({stop - start} × {width}) update, got {lora.rank}")
        shapes.update({f"{name}.lora_A": (lora.rank, width), f"{name}.lora_B": (stop - start, lora.rank)})
    return shapes


def init_adapters(cfg: ViTConfig, lora: LoRAConfig, init: str = "peft",
                  generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """Float32 adapters, B = 0 in both (§4.1: "so ΔW = BA is zero at the beginning of training"), A by `init`:
    "peft":  Kaiming-uniform with a = √5, i.e. U(±1/√in), torch's default for a linear layer's weight: loralib
             layers.py:124 and peft's default (peft/tuners/lora/layer.py:338).
    "paper": Gaussian ("random Gaussian initialization for A", §4.1). The paper gives no σ; this is σ = 1/r, peft's
             init_lora_weights="gaussian" (layer.py:340), the one Gaussian A in the two reference codebases."""
    if init not in INITS:
        raise ValueError(f"init: expected one of {INITS}, got {init!r}")
    out = {}
    for name, shape in adapter_shapes(cfg, lora).items():
        t = torch.empty(shape)
        if name.endswith(".lora_B"):
            out[name] = t.zero_()
        elif init == "peft":
            out[name] = torch.nn.init.kaiming_uniform_(t, a=math.sqrt(5), generator=generator)
        else:
            out[name] = torch.nn.init.normal_(t, std=1 / lora.rank, generator=generator)
    return out


def adapt(params: dict, adapters: dict, cfg: ViTConfig, lora: LoRAConfig, *, train: bool = False) -> dict:
    """The params with every adapted weight replaced by a `LowRank` over it, for one call of `forward` (or
    `forward_intermediates`); the params themselves are not changed. `train` turns the adapters' dropout on.
    q and v of one block become one nested LowRank over the same qkv weight, each adapting its own rows."""
    check_params(adapters, adapter_shapes(cfg, lora), what="adapters")
    out = dict(params)
    rate = lora.dropout if train else 0.0
    for name in adapted_layers(cfg, lora):
        weight, rows, width = adapted_weight(name, cfg)
        if weight not in out:
            raise ValueError(f"params: expected {weight!r}, which adapter {name!r} adapts, got no such key")
        out[weight] = LowRank(out[weight], adapters[f"{name}.lora_A"], adapters[f"{name}.lora_B"], lora.scaling, rate,
                              rows)
    return out


def deltas(weight: Weight) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """W₀ and the ΔW = (α/r)·B A of every LowRank over it, each a full (out, in) matrix, zero outside its rows
    (peft's get_delta_weight, layer.py:1067). A plain tensor is (itself, [])."""
    updates = []
    while isinstance(weight, LowRank):
        updates.append(weight)
        weight = weight.weight
    rows = weight.shape[0]
    return weight, [F.pad(u.lora_B @ u.lora_A * u.scaling, (0, 0, u.rows[0], rows - u.rows[1])) for u in updates]


def fold(params: dict, adapters: dict, cfg: ViTConfig, lora: LoRAConfig, combine) -> dict:
    """New params with combine(W, ΔW) for every adapter; the others are the same tensors."""
    out = {}
    for name, weight in adapt(params, adapters, cfg, lora).items():
        weight, updates = deltas(weight)
        for delta in updates:
            weight = combine(weight, delta)
        out[name] = weight
    return out


def merge(params: dict, adapters: dict, cfg: ViTConfig, lora: LoRAConfig) -> dict:
    """New params with W = W₀ + (α/r)·BA for every adapter (§4.1: "explicitly compute and store W = W₀ + BA"):
    the function `adapt` gives, with no extra work at inference."""
    return fold(params, adapters, cfg, lora, torch.add)


def unmerge(params: dict, adapters: dict, cfg: ViTConfig, lora: LoRAConfig) -> dict:
    """The inverse of `merge`: new params with W₀ = W − (α/r)·BA (§4.1: "recover W₀ by subtracting BA"), equal to the
    original up to rounding (float64: about 1e-16)."""
    return fold(params, adapters, cfg, lora, torch.sub)
