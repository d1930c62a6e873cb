"""The self-supervised stage of `python -m paper.train --stages mpp finetune`: masked patch prediction (§4.6, App. B.1.2;
the objective is lowlevel.mpp) on the training images without their labels, then fine-tuning from its encoder.

    python -m paper.train --stages mpp finetune                          # the digits: 8 mean colours of a 2×2 patch
    python -m paper.train --stages mpp finetune --mpp-target downsized --mpp-steps 400
    python -m paper.train --stages finetune --init runs/mpp/mpp.pt --out runs/mpp_finetune

The stage runs through the one loop (`loop.train_stage`): `MaskedPatchPrediction` is the ViT with the objective's
[mask] embedding and head, whose forward gives (predictions, chosen), and `MPPCriterion` turns them and the batch's
uncorrupted pixels into lowlevel.mpp.loss. The corruption draws from `MaskedPatchPrediction.draws`, which the loop
seeds from the run's seed and the step before every step, so a resumed run corrupts exactly the patches the
uninterrupted one did. Fine-tuning drops the [mask] embedding and the head (`encoder_params`) and attaches the
zero-initialised linear head of §3.2, as after supervised pre-training.
"""
import dataclasses

import torch
import torch.nn as nn

import lowlevel as vit
from lowlevel import mpp as objective
from lowlevel.mpp import TARGETS, MPPConfig
from paper import cli

EVAL_SEED = 1204   # the held-out loss corrupts the same patches at every evaluation


def add_arguments(parser) -> None:
    parser.add_argument("--mpp", choices=("digits", "mnist", "jft"),
                        help="the mpp stage's recipe: a small job's (its pre-training recipe, the objective changed) "
                             "or 'jft', the paper's (App. B.1.2: Adam 2e-4, 1M steps of 4096, cosine); default: "
                             "--data's small job")
    parser.add_argument("--mpp-target", choices=TARGETS,
                        help="what each chosen patch predicts (App. B.1.2): its mean colour in 3 bits per channel "
                             "(default, §4.6), a 4×4 downsized patch in those colours, or its pixels (L2)")
    parser.add_argument("--mpp-steps", type=cli.positive, help="override the mpp recipe's steps (warm-up scaled in "
                                                                "proportion)")
    parser.add_argument("--mpp-batch", type=cli.positive, help="override the mpp recipe's global batch size")
    parser.add_argument("--mpp-lr", type=float, help="override the mpp recipe's base learning rate")


def mpp_config(args) -> MPPConfig | None:
    """The command line's MPP flags, checked before any training starts (None without the mpp stage)."""
    if "mpp" not in args.stages:
        given = [flag for flag, value in (("--mpp", args.mpp), ("--mpp-target", args.mpp_target),
                                          ("--mpp-steps", args.mpp_steps), ("--mpp-batch", args.mpp_batch),
                                          ("--mpp-lr", args.mpp_lr)) if value is not None]
        if given:
            raise ValueError(f"mpp: {' and '.join(given)} set up masked patch prediction, expected with --stages mpp "
                             f"…, got --stages {' '.join(args.stages)}")
        return None
    if "pretrain" in args.stages:
        raise ValueError("stages: expected one pre-training stage, mpp (self-supervised) or pretrain (supervised), got "
                         "both")
    if args.mpp_lr is not None and not args.mpp_lr > 0:
        raise ValueError(f"mpp_lr: expected a positive learning rate, got {args.mpp_lr}")
    return MPPConfig(target=args.mpp_target or "mean_colour")


def check_target(cfg: vit.ViTConfig, mpp: MPPConfig) -> None:
    """A target the model's patches allow (the downsized one needs a patch size that is a multiple of its 4 cells),
    found before the first step."""
    try:
        objective.check_mpp(cfg, mpp)
    except ValueError as e:
        raise ValueError(f"mpp_target: expected a target the model's patches allow, got --mpp-target {mpp.target} "
                         f"with patch size {cfg.patch_size} ({e})") from e


def mpp_model(base: vit.ViTConfig, recipe, in_channels: int, mpp: MPPConfig, seed: int) -> tuple[dict, vit.ViTConfig]:
    """The mpp stage's model: the ViT without a classification head (num_classes 0), at the recipe's resolution,
    dropout and stochastic depth, with the objective's [mask] embedding and head beside it. -> (params, cfg)."""
    cfg = dataclasses.replace(base, image_size=recipe.image_size, dropout=recipe.dropout, drop_path=recipe.drop_path,
                              in_channels=in_channels, representation_size=None, num_classes=0)
    g = torch.Generator().manual_seed(seed)
    return {**vit.init_params(cfg, g), **objective.init_params(cfg, mpp, g)}, cfg


def encoder_params(params: dict) -> dict:
    """What fine-tuning keeps of an MPP model: every tensor but the [mask] embedding and the MPP head."""
    return {k: v for k, v in params.items() if k != "mask_token" and not k.startswith("mpp_head.")}


class MaskedPatchPrediction(nn.Module):
    """The ViT and the objective's tensors as `train_stage` trains a model ('/' for '.', as ExplicitParams):
    forward(images (B, C, H, W)) -> (predictions (B, N, …), chosen (B, N) bool), lowlevel.mpp.forward. Its corruption
    draws from `draws`, which `reseed` replaces; the loop reseeds it before every step."""

    def __init__(self, params: dict, cfg: vit.ViTConfig, mpp: MPPConfig):
        super().__init__()
        self.cfg, self.mpp = cfg, mpp
        self.params = nn.ParameterDict({k.replace(".", "/"): nn.Parameter(v) for k, v in params.items()})
        self.draws = torch.Generator()

    def as_dict(self) -> dict:
        return {k.replace("/", "."): v for k, v in self.params.items()}

    def reseed(self, seed: int) -> None:
        """The corruption's random numbers from now on: a generator on the params' device, seeded by `seed`."""
        self.draws = torch.Generator(self.params["norm/weight"].device).manual_seed(seed)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return objective.forward(self.as_dict(), images, self.cfg, self.mpp, generator=self.draws,
                                 train=self.training)

    def fields(self) -> dict:
        """What an MPP checkpoint holds beyond a full one's keys: the objective's config."""
        return {"mpp": dataclasses.asdict(self.mpp)}


class MPPCriterion:
    """The mpp stage's loss, ((predictions, chosen), images, labels) -> lowlevel.mpp.loss: the targets come from the
    uncorrupted batch, taken back from the model's [−1, 1] to [0, 1] pixels; the labels are never read."""

    def __init__(self, cfg: vit.ViTConfig, mpp: MPPConfig):
        self.cfg, self.mpp = cfg, mpp

    def __call__(self, outputs: tuple[torch.Tensor, torch.Tensor], images: torch.Tensor,
                 labels: torch.Tensor) -> torch.Tensor:
        predictions, chosen = outputs
        targets = objective.targets((images + 1) / 2, self.cfg, self.mpp)
        return objective.loss(predictions, targets, chosen, self.mpp)

    def held_out(self, model: MaskedPatchPrediction, images: torch.Tensor, labels: torch.Tensor) -> float:
        """A held-out batch's loss summed over its images (`loop.evaluate`'s score), the corruption drawn afresh
        from EVAL_SEED: every image of a batch has the same number of chosen patches, so the mean over images is the
        mean over chosen patches."""
        model.reseed(EVAL_SEED)
        return self(model(images), images, labels).item() * len(images)
