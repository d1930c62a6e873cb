"""LoRA fine-tuning in `python -m paper.train --lora R`: the base frozen, the optimizer holding only the adapters and
the new head, the checkpoint holding only them and a reference to the base checkpoint with its SHA-256.

    python -m paper.train --lora 8                                        # W_q and W_v of every block (§5.1), α = r
    python -m paper.train --lora 4 --lora-alpha 8 --lora-targets q,k,v,proj,fc1,fc2
    python -m paper.train --stages finetune --init runs/main/pretrain.pt --lora 8 --out runs/lora

The fine-tuning stage starts as full fine-tuning does (§3.2: the zero-initialised linear head, E_pos interpolated to
the new resolution); then every weight but the head is frozen, and the adapters (lowlevel.lora, peft's default
initialisation, B = 0) are trained with the new head, which is trained whole as peft's `modules_to_save` trains a new
classifier. Pre-training is always full: LoRA adapts a pre-trained model.
"""
import dataclasses
import hashlib

import torch
import torch.nn as nn

import lowlevel as vit
from lowlevel.lora import LoRAConfig, adapt, init_adapters
from paper import cli

HEAD = ("head.weight", "head.bias")


def add_arguments(parser) -> None:
    parser.add_argument("--lora", type=cli.positive, metavar="R",
                        help="fine-tune through rank-R LoRA adapters, the base frozen (default: full fine-tuning)")
    parser.add_argument("--lora-alpha", type=float, metavar="A",
                        help="LoRA's α: the update is scaled by α/r (default: r, as the paper sets α to the first r "
                             "it tries)")
    parser.add_argument("--lora-targets", metavar="T,…",
                        help="comma-separated weights to adapt in every block: q, k, v (row slices of the fused qkv), "
                             "qkv (all of it with one A, as peft on timm), proj, fc1, fc2 (default: q,v, the paper's "
                             "W_q and W_v)")


class LoRAParams(nn.Module):
    """The frozen base as plain tensors (no optimizer, DDP or gradient clipping sees them) and the trainable adapters
    and head in a ParameterDict ('/' for '.', as in train.ExplicitParams). Without a LoRA config (`lora` None, no
    adapters) the head alone trains: a linear probe of the base's features."""

    def __init__(self, base: dict, adapters: dict, cfg: vit.ViTConfig, lora: LoRAConfig | None):
        super().__init__()
        self.cfg, self.lora = cfg, lora
        self.base = {k: v.detach() for k, v in base.items() if k not in HEAD}
        trained = {**adapters, **{k: base[k] for k in HEAD}}
        self.params = nn.ParameterDict({k.replace(".", "/"): nn.Parameter(v) for k, v in trained.items()})

    def as_dict(self) -> dict:
        """The trained tensors: the adapters and the head."""
        return {k.replace("/", "."): v for k, v in self.params.items()}

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        trained = self.as_dict()
        params = {**self.base, **{k: trained.pop(k) for k in HEAD}}
        adapted = params if self.lora is None else adapt(params, trained, self.cfg, self.lora, train=self.training)
        return vit.forward(adapted, images, self.cfg, train=self.training)


def file_sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclasses.dataclass(frozen=True)
class LoRARun:
    """What the fine-tuning stage needs to train through adapters: their config and the base it adapts."""
    lora: LoRAConfig
    base: str                 # the base checkpoint (pretrain.pt, or --init)
    base_sha256: str          # its hash when this run started

    def model(self, params: dict, cfg: vit.ViTConfig, seed: int) -> LoRAParams:
        """The base `params` (the fine-tuning model: new head, new resolution) with fresh adapters."""
        if cfg.distilled:
            raise ValueError("distilled: LoRA fine-tunes a model with one head, trained whole beside the adapters, got a "
                             f"distilled base ({self.base}) with a distillation head")
        like = params["norm.weight"]
        adapters = init_adapters(cfg, self.lora, "peft", torch.Generator().manual_seed(seed))
        return LoRAParams(params, {k: v.to(like.device, like.dtype) for k, v in adapters.items()}, cfg, self.lora)

    def fields(self) -> dict:
        """What a LoRA checkpoint holds beyond a full one's keys."""
        return {"lora": dataclasses.asdict(self.lora), "base": {"path": self.base, "sha256": self.base_sha256}}


def lora_config(args) -> LoRAConfig | None:
    """The command line's --lora flags, checked before any training starts (None without --lora)."""
    if args.lora is None:
        given = [flag for flag, value in (("--lora-alpha", args.lora_alpha), ("--lora-targets", args.lora_targets))
                 if value is not None]
        if given:
            raise ValueError(f"lora: {' and '.join(given)} set up LoRA adapters, expected with --lora R, got no "
                             f"--lora (the run would fine-tune every weight)")
        return None
    if "finetune" not in args.stages:
        raise ValueError("lora: expected the finetune stage, which LoRA trains, got --stages pretrain alone")
    if args.fast:
        raise ValueError("fast: the fast path takes plain weights, not LoRA adapters; drop --fast or --lora")
    if args.distill:
        raise ValueError(f"distill: LoRA fine-tunes a model with one head, whole, beside the adapters; a distilled "
                         f"student's two heads are not supported, got --distill {args.distill} with --lora")
    targets = tuple(t.strip() for t in (args.lora_targets or "q,v").split(",") if t.strip())
    if "head" in targets:
        raise ValueError("lora_targets: the new head is trained whole (the zero-initialised layer of §3.2), so it "
                         "cannot be a LoRA target, got 'head'")
    alpha = float(args.lora if args.lora_alpha is None else args.lora_alpha)
    return LoRAConfig(rank=args.lora, alpha=alpha, targets=targets)


def lora_run(lora: LoRAConfig | None, base: str) -> LoRARun | None:
    """Adapters of `lora` over the base checkpoint at `base`, as its bytes are now (None without LoRA)."""
    return None if lora is None else LoRARun(lora, base, file_sha256(base))


def check_same_adapters(state: dict, run: LoRARun | None, path: str) -> None:
    """A checkpoint resumes only with the LoRA setting that wrote it, and over the same base checkpoint."""
    if run is None:
        if "lora" in state:
            raise ValueError(f"checkpoint: expected a full fine-tuning checkpoint, got {path!r} of LoRA adapters "
                             f"{state['lora']}; resume it with the same --lora flags")
        return
    if "lora" not in state:
        raise ValueError(f"checkpoint: expected a checkpoint of LoRA adapters (--lora), got {path!r} of full "
                         "fine-tuning")
    saved = {k: tuple(v) if isinstance(v, list) else v for k, v in state["lora"].items()}
    if saved != dataclasses.asdict(run.lora):
        raise ValueError(f"checkpoint: expected the adapters of this run, {dataclasses.asdict(run.lora)}, got {path!r}"
                         f" with {saved}")
    if state["base"]["sha256"] != run.base_sha256:
        raise ValueError(f"checkpoint: expected adapters over the base checkpoint {run.base!r} as it was when they were "
                         f"trained (SHA-256 {state['base']['sha256'][:16]}…), got {path!r} over a base that now "
                         f"hashes to {run.base_sha256[:16]}…; the base has changed")
