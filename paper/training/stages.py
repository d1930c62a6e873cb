"""The ViT job paper.train runs: pre-training (the MLP head at a low resolution, or masked patch prediction without
labels, training/mpp.py) and fine-tuning (a zero-initialised linear head, E_pos interpolated to a higher resolution),
each a `loop.train_stage`, with everything checked before
the first step: --out, the batches against the processes, resumed checkpoints against the run, a teacher against
the data."""
import dataclasses
import json
import os
import tempfile
import time

import torch
import torch.distributed as dist

import lowlevel as vit
from lowlevel.lora import adapter_shapes
from lowlevel.mpp import MPPConfig
from paper.formats.atomic import write_text
from paper.models.dtypes import DTYPES
from paper.models.explicit_params import ExplicitParams
from paper.models.family import paper_config
from paper.models.heads import finetuning_head, pretraining_head
from paper.models.resolution import change_resolution
from paper.training import recipes
from paper.training.curves import plot_curves
from paper.training.data import load_data, to_unit_interval
from paper.training.distillation import (
    Distillation,
    load_teacher,
)
from paper.training.loop import Run, dtype_name, train_stage
from paper.training.lora import file_sha256, lora_config, lora_run
from paper.training.mpp import MaskedPatchPrediction, check_target, encoder_params, mpp_config, mpp_model
from paper.training.processes import Processes, start_processes
from paper.training.state import (
    check_resumable,
    checkpoint_config,
    load_checkpoint,
    require_file,
    require_whole_model,
)


def train_vit(name: str, params: dict, cfg: vit.ViTConfig, recipe, train_data, test_data,
              run: Run) -> tuple[dict, dict]:
    """`train_stage` for lowlevel's ViT: its params in (on the run's device and dtype), the trained tensors and the
    stage's log out. The model is a distilled student's two heads with run.distillation, LoRA's adapters over the
    frozen params in a fine-tuning stage with run.lora (then the trained tensors are the adapters and the head), the
    ViT with masked patch prediction's tensors in the mpp stage."""
    params = {k: v.to(run.procs.device, run.dtype) for k, v in params.items()}
    if recipe.stage == "mpp":
        model = MaskedPatchPrediction(params, cfg, run.mpp)
    elif run.lora and recipe.stage == "finetune":
        model = run.lora.model(params, cfg, run.seed)
    else:
        model = ExplicitParams(params, cfg, run.fast, heads=run.distillation is not None)
    log = train_stage(name, model, recipe, train_data, test_data, run)
    return {k: v.detach() for k, v in model.as_dict().items()}, log


def pretraining_model(base: vit.ViTConfig, recipe, in_channels: int, num_classes: int,
                      seed: int) -> tuple[dict, vit.ViTConfig]:
    """Pre-training's model: the MLP head (pre-logits + tanh), the recipe's resolution, dropout (Table 3) and
    stochastic depth, the official initialisation. -> (params, cfg)."""
    cfg = pretraining_head(dataclasses.replace(base, image_size=recipe.image_size, dropout=recipe.dropout,
                                               drop_path=recipe.drop_path, in_channels=in_channels), num_classes)
    return vit.init_params(cfg, torch.Generator().manual_seed(seed)), cfg


def finetuning_model(params: dict, cfg: vit.ViTConfig, recipe, num_classes: int) -> tuple[dict, vit.ViTConfig]:
    """Fine-tuning's model (§3.2): the whole head dropped for a zero-initialised linear one, E_pos interpolated to the
    recipe's higher resolution, patch size unchanged. -> (params, cfg)."""
    params, cfg = finetuning_head(params, dataclasses.replace(cfg, dropout=recipe.dropout, drop_path=recipe.drop_path),
                                  num_classes)
    return change_resolution(params, cfg, recipe.image_size, method="official")


def model_config(name: str, in_channels: int) -> vit.ViTConfig:
    """A small job's model ("digits", "mnist"), or a paper model by name (e.g. "ViT-B/16")."""
    if name in recipes.SMALL_JOBS:
        return recipes.SMALL_JOBS[name][0]
    return paper_config(name, in_channels=in_channels)


def check_patch_size(cfg: vit.ViTConfig, model: str, model_cfg: vit.ViTConfig, path: str) -> None:
    """Fine-tuning keeps the patch size (§3.2): a pre-trained checkpoint (pretrain.pt, or mpp.pt, whose objective
    predicted its patches) is refused for a --model of another, not fine-tuned as if --model were not given."""
    if model_cfg.patch_size != cfg.patch_size:
        raise ValueError(f"model: expected a model of the --init checkpoint's patch size {cfg.patch_size} "
                         f"(fine-tuning keeps it, §3.2), got --model {model} with patch size {model_cfg.patch_size} "
                         f"for {path}")


def with_steps(recipe, steps: int | None, batch_size: int | None):
    """The recipe with another length (warm-up scaled in proportion) or global batch."""
    if steps:
        warmup = min(round(recipe.warmup_steps * steps / recipe.total_steps), steps - 1)
        recipe = dataclasses.replace(recipe, total_steps=steps, warmup_steps=warmup)
    if batch_size:
        recipe = dataclasses.replace(recipe, batch_size=batch_size)
    return recipe


def stage_recipes(args) -> dict:
    """The recipes of the stages the command line names, by stage, with its overrides."""
    if args.pretrain in recipes.SMALL_JOBS:
        pre = recipes.SMALL_JOBS[args.pretrain][1]
    elif args.pretrain == "deit":                 # Table 9's learning rate scales with the batch
        pre = recipes.deit_recipe(args.pretrain_batch or recipes.DEIT_BATCH)
    else:
        pre = recipes.pretrain_recipe(args.pretrain, args.model, args.pretrain_epochs)
    if args.finetune in recipes.SMALL_JOBS:
        fine = recipes.SMALL_JOBS[args.finetune][2]
        fine = dataclasses.replace(fine, base_lr=args.finetune_lr or fine.base_lr)
    else:
        fine = recipes.finetune_recipe(args.finetune, args.finetune_lr or recipes.FINETUNE_LR)
    stages = {"pretrain": with_steps(pre, args.pretrain_steps, args.pretrain_batch),
              "finetune": with_steps(fine, args.finetune_steps, args.finetune_batch)}
    if "mpp" in args.stages:
        mpp = recipes.MPP_RECIPES[args.mpp]
        mpp = dataclasses.replace(mpp, base_lr=args.mpp_lr or mpp.base_lr)
        stages["mpp"] = with_steps(mpp, args.mpp_steps, args.mpp_batch)
    return {name: stages[name] for name in ("mpp", "pretrain", "finetune") if name in args.stages}


def distillation_teacher(path: str, image: torch.Tensor, num_classes: int, run: Run):
    """The frozen teacher (distillation.load_teacher: a ViT or a ResNet) on the run's device and dtype, checked on one
    of the data's images (in [0, 1]) to predict the data's classes."""
    teacher = load_teacher(path, run.procs.device, run.dtype)
    try:
        classes = teacher(to_unit_interval(image[None]).to(run.procs.device, run.dtype)).shape[-1]
    except ValueError as e:
        raise ValueError(f"teacher: expected a model of the data's images, but {path} refuses them: {e}") from e
    if classes != num_classes:
        raise ValueError(f"teacher: expected a model of the data's {num_classes} classes, got {classes} in {path}")
    return teacher


def check_out(out: str) -> None:
    """--out is a directory this process can write in (made if missing): found now, not when the first checkpoint
    is saved at the end of a stage."""
    if os.path.exists(out) and not os.path.isdir(out):
        raise ValueError(f"out: expected a directory, got {out!r}, which is a file")
    try:
        os.makedirs(out, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as e:
        raise ValueError(f"out: expected a directory this run can write in, got {out!r} ({e.strerror})") from e


def check_batches(stages: dict, accum_steps: int, procs: Processes) -> None:
    """Each stage's global batch splits evenly over the processes and their micro-batches."""
    for name, recipe in stages.items():
        parts = procs.world_size * accum_steps
        if recipe.batch_size % parts:
            raise ValueError(f"{name}_batch: expected a multiple of {parts} (--accum {accum_steps} × "
                             f"{procs.world_size} process(es)), got {recipe.batch_size}")


def run_identity(data: str, data_dir: str | None, distillation: Distillation | None, teacher: str | None,
                 mpp: MPPConfig | None = None) -> dict:
    """What defines a run beside its model, recipe, seed and dtype, stored in its checkpoints and compared on resume:
    the data set, the distillation objective (kind, λ, τ, reduction), the teacher, by its bytes, and the MPP
    objective (target, rates, bits) of an mpp stage. A field missing from an older checkpoint's record reads as None."""
    if teacher:
        require_file(teacher, "teacher", "a checkpoint file of paper.train or paper.compare")
    return {"data": data, "data_dir": data_dir,
            "distillation": dataclasses.asdict(distillation) if distillation else None,
            "teacher_sha256": file_sha256(teacher) if teacher else None,
            "mpp": dataclasses.asdict(mpp) if mpp else None}


def check_resume(stages: dict, run: Run) -> None:
    """With --resume, some stage of the run left a checkpoint to go on from, and each existing stage checkpoint was
    written by this run (its recipe, seed, dtype and identity) and claims no step beyond the recipe's (its model
    config is checked when the stage starts)."""
    paths = [os.path.join(run.out, f"{name}.pt") for name in stages]
    if not any(os.path.exists(path) for path in paths):
        raise ValueError(f"resume: expected a checkpoint to go on from in {run.out} ({' or '.join(paths)}), got none; "
                         f"drop --resume to start a new run")
    for name, recipe in stages.items():
        path = os.path.join(run.out, f"{name}.pt")
        if os.path.exists(path):
            check_resumable(load_checkpoint(path), recipe, run.seed, dtype_name(run.dtype), run.identity, path)


def run_training(args) -> dict:
    """The job paper.train's command line describes (`args`, its parsed flags): the stages it names, trained, with
    log.json and curves.png written beside the checkpoints in args.out. -> the log."""
    if args.bf16 and args.dtype == "float64":
        raise ValueError("bf16: expected float32 parameters for bfloat16 autocast, got --dtype float64")
    if args.stages == ["finetune"] and not args.init:
        raise ValueError("init: expected a pretrain.pt (or an mpp.pt) to fine-tune from when --stages is finetune "
                         "alone, got none")
    if bool(args.distill) != bool(args.teacher):
        raise ValueError(f"distill, teacher: expected both (--distill hard|soft --teacher CHECKPOINT) or neither, got "
                         f"--distill {args.distill} and --teacher {args.teacher}")
    lora = lora_config(args)
    mpp = mpp_config(args)
    torch.set_num_threads(args.threads)
    procs = start_processes(args.device)
    distillation = Distillation(args.distill, args.distill_lambda, args.distill_tau,
                                args.distill_reduction) if args.distill else None
    run = Run(out=args.out, procs=procs, dtype=DTYPES[args.dtype], bf16=args.bf16, fast=args.fast, accum_steps=args.accum,
              seed=args.seed, resume=args.resume, workers=args.workers, save_every=args.save_every,
              identity=run_identity(args.data, args.data_dir, distillation, args.teacher, mpp), mpp=mpp)
    stages = stage_recipes(args)
    pre_stage = next((name for name in ("mpp", "pretrain") if name in stages), None)   # at most one (mpp_config)
    check_batches(stages, args.accum, procs)
    check_out(args.out)
    if args.resume:
        check_resume(stages, run)
    train, test, num_classes = load_data(args.data, args.data_dir)
    in_channels = train[0][0].shape[0]
    base = model_config(args.model, in_channels)
    if mpp is not None:
        check_target(base, mpp)
    if lora is not None and pre_stage:
        adapter_shapes(base, lora)                   # a rank the model cannot hold: refused now, not after pre-training
    log = {"command": vars(args), "world_size": procs.world_size, "stages": {}}
    if args.distill:
        run.distillation = distillation
        run.teacher = distillation_teacher(args.teacher, test[0][0], num_classes, run)
        base = dataclasses.replace(base, distilled=True)
        log["distillation"] = dataclasses.asdict(run.distillation)
    started = time.perf_counter()

    if pre_stage == "pretrain":
        params, cfg = pretraining_model(base, stages["pretrain"], in_channels, num_classes, args.seed)
    elif pre_stage == "mpp":
        params, cfg = mpp_model(base, stages["mpp"], in_channels, mpp, args.seed)
    if pre_stage:
        run.eval_every = args.eval_every or max(1, stages[pre_stage].total_steps // 10)
        params, log["stages"][pre_stage] = train_vit(pre_stage, params, cfg, stages[pre_stage], train, test, run)
    else:
        state = load_checkpoint(args.init)
        require_whole_model(state, args.init, "init")
        cfg, params = checkpoint_config(state), state["params"]
        if not isinstance(cfg, vit.ViTConfig):
            raise ValueError(f"init: expected a ViT's pretrain.pt to fine-tune, got {args.init!r} holding a "
                             f"{state['model']!r}")
        if args.distill and not cfg.distilled:
            raise ValueError(f"init: expected a distilled checkpoint for --distill, got {args.init} without a "
                             f"distillation token")
        check_patch_size(cfg, args.model, base, args.init)

    if "finetune" in args.stages:
        base_path = os.path.join(args.out, f"{pre_stage}.pt") if pre_stage else args.init
        run.lora = lora_run(lora, base_path)
        fine = stages["finetune"]
        params, cfg = finetuning_model(encoder_params(params), cfg, fine, num_classes)
        run.eval_every = args.eval_every or max(1, fine.total_steps // 10)
        params, log["stages"]["finetune"] = train_vit("finetune", params, cfg, fine, train, test, run)

    last = list(log["stages"].values())[-1]["eval"][-1]
    measure = "test_accuracy" if "test_accuracy" in last else "test_loss"      # the mpp stage alone: its loss
    log[measure] = last[measure]
    log["seconds"] = time.perf_counter() - started
    if procs.rank == 0:
        write_text(os.path.join(args.out, "log.json"), json.dumps(log, indent=1, default=str))
        plot_curves(log, os.path.join(args.out, "curves.png"))
        result = (f"test accuracy {100 * last[measure]:.2f}%" if measure == "test_accuracy" else
                  f"masked patch prediction loss {last[measure]:.4f}")
        print(f"{result} on {len(test)} held-out images; {log['seconds']:.0f} s; checkpoints, log.json and "
              f"curves.png in {args.out}")
    if procs.world_size > 1:
        dist.destroy_process_group()
    return log
