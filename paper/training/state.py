"""Checkpoints: everything a run needs to go on exactly where it stopped, written so that a good file is never
replaced by a broken or half-written one.

A checkpoint holds the model config, the recipe, the seed and dtype of the run, the params, the optimizer and
scheduler state, the step, the random-number state of every process (dropout draws from it) and the log so far. The
data stream needs no state: it is a pure function of (seed, step) (see data.py). It also names its model ("vit" or
"resnet18") and the evaluation preprocessing its inputs had, so that `paper.training.classifier.load_classifier` can rebuild
both from the file alone (a frozen teacher, say). An MPP checkpoint (mpp.pt) also records its objective's config
("mpp"), and its params hold the [mask] embedding and the MPP head beside a ViT without a classification head.
"""
import dataclasses
import os

import torch

from lowlevel import ViTConfig, check_params, param_shapes
from lowlevel.lora import LoRAConfig, adapter_shapes
from lowlevel.mpp import MPPConfig
from lowlevel.mpp import param_shapes as objective_shapes
from paper.formats.atomic import write_atomically
from paper.formats.files import reason
from paper.models.cnn import ResNetConfig
from paper.models.finite import non_finite
from paper.training.data import eval_preprocessing
from paper.training.recipes import Recipe

KEYS = ("config", "recipe", "params", "optimizer", "scheduler", "step", "rng", "log", "seed", "dtype", "model",
        "preprocessing")
HEAD = ("head.weight", "head.bias")
MODELS = {"vit": ViTConfig, "resnet18": ResNetConfig}   # a checkpoint's "model" -> the class of its "config"


def model_name(cfg: ViTConfig | ResNetConfig) -> str:
    """"vit" or "resnet18": what a checkpoint of a model with config `cfg` says it holds."""
    return next(name for name, cls in MODELS.items() if isinstance(cfg, cls))


def checkpoint_config(state: dict) -> ViTConfig | ResNetConfig:
    """The config of the model a loaded checkpoint holds."""
    return MODELS[state["model"]](**state["config"])


def optimizer_tensors(state_dict: dict) -> dict:
    return {f"optimizer.{i}.{name}": v for i, s in state_dict["state"].items() for name, v in s.items()}


def save_checkpoint(path: str, *, cfg: ViTConfig | ResNetConfig, recipe: Recipe, params: dict, optimizer: dict,
                    scheduler: dict, step: int, rng: list, log: dict, seed: int, dtype: str, **extra) -> None:
    """Write a checkpoint atomically; refuse (ValueError, the existing file untouched) if any value is not finite.
    The model's name and evaluation preprocessing follow from `cfg`. `extra` keys are stored beside the others (a LoRA
    run's adapter config and base reference)."""
    params = {k: v.detach().cpu() for k, v in params.items()}
    bad = non_finite(params) + non_finite(optimizer_tensors(optimizer))
    if bad:
        raise ValueError(f"params: expected finite values to save at step {step}, got NaN or inf in {bad[:5]}"
                         f"{' …' if len(bad) > 5 else ''}; {path} is left as it was")
    state = {"model": model_name(cfg), "config": dataclasses.asdict(cfg),
             "preprocessing": eval_preprocessing(cfg.image_size), "recipe": dataclasses.asdict(recipe),
             "params": params, "optimizer": optimizer, "scheduler": scheduler, "step": step, "rng": rng, "log": log,
             "seed": seed, "dtype": dtype, **extra}
    write_atomically(path, lambda tmp: torch.save(state, tmp))


def require_file(path: str, field: str, expected: str) -> None:
    """A path that must name a file: a directory or nothing there is a ValueError naming `field` and saying which."""
    if not os.path.isfile(path):
        got = "is a directory" if os.path.isdir(path) else "does not exist" if not os.path.exists(path) else \
            "is no regular file"
        raise ValueError(f"{field}: expected {expected}, got {path!r}, which {got}")


def load_checkpoint(path: str) -> dict:
    """Read a checkpoint onto the CPU; a missing, unreadable or foreign file is a ValueError naming it."""
    require_file(path, "checkpoint", "a checkpoint file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch.load raises pickle, zip and OS errors alike
        raise ValueError(f"checkpoint: expected a checkpoint written by paper.train, "
                         f"could not read {path!r} ({reason(e)})") from e
    missing = [k for k in KEYS if not isinstance(state, dict) or k not in state]
    if missing:
        raise ValueError(f"checkpoint: expected the keys {KEYS} in {path!r}, missing {missing}")
    if state["model"] not in MODELS:
        raise ValueError(f"checkpoint: expected a model of {tuple(MODELS)} in {path!r}, got {state['model']!r}")
    check_recorded_config(state, path)
    return state


def check_recorded_config(state: dict, path) -> None:
    """A ViT checkpoint's params must be those of its recorded config: the whole model's (with an MPP checkpoint's
    [mask] embedding and head, of its recorded MPP config), a LoRA checkpoint's adapters (of its recorded LoRA config)
    and head, or a linear probe's head; a config the params contradict (a
    class count, a depth, a rank) is refused, naming the file and the keys, never believed or ignored."""
    if state["model"] != "vit":
        return
    try:
        cfg = checkpoint_config(state)
        lora = LoRAConfig(**state["lora"]) if "lora" in state else None
        mpp = objective_shapes(cfg, MPPConfig(**state["mpp"])) if "mpp" in state else {}
    except (TypeError, ValueError) as e:
        raise ValueError(f"checkpoint: expected a ViT config in {path!r}, got one that is refused ({e})") from e
    shapes = {**param_shapes(cfg), **mpp}
    head = {k: shapes[k] for k in HEAD if k in shapes}
    if lora is not None:
        shapes = {**adapter_shapes(cfg, lora), **head}
    elif set(state["params"]) == set(HEAD):                       # a linear probe trains the head alone
        shapes = head
    check_params(state["params"], shapes, what=f"checkpoint: {path}: params (against its recorded config)")


def require_whole_model(state: dict, path, what: str = "checkpoint") -> None:
    """A LoRA checkpoint holds adapters and a head over the base it names, not a model: wherever a model is read
    (--init, a teacher, paper.attention, paper.gradient_norms) it is refused by name."""
    if "lora" in state:
        raise ValueError(f"{what}: expected a whole model, got {str(path)!r} holding only LoRA adapters over "
                         f"{state['base']['path']!r}")


def check_resumable(state: dict, recipe: Recipe, seed: int, dtype: str, identity: dict, path: str) -> None:
    """What a run can check before its first step: the checkpoint was written by a run with the same recipe, seed,
    dtype and identity (its data, distillation objective and teacher), and claims no step beyond the recipe's."""
    differences = [f"{what}: checkpoint {state.get(what)!r}, this run {value!r}"
                   for what, value in (("seed", seed), ("dtype", dtype)) if state.get(what) != value]
    if differences:
        raise ValueError(f"checkpoint: expected a checkpoint of this run's seed and dtype, got {path!r} with:\n  "
                         + "\n  ".join(differences))
    check_same(state, "recipe", dataclasses.asdict(recipe), path)
    if "identity" not in state:
        raise ValueError(f"checkpoint: expected a record of the run's data, distillation and teacher to resume, got "
                         f"{path!r} without one; start a new run in another --out")
    check_same(state, "identity", identity, path)
    if not 0 <= state["step"] <= recipe.total_steps:
        raise ValueError(f"checkpoint: expected a step between 0 and the recipe's {recipe.total_steps}, got {path!r} "
                         f"at step {state['step']}")


def check_same(state: dict, what: str, current: dict, path: str) -> None:
    saved = {k: tuple(v) if isinstance(v, list) else v for k, v in state[what].items()}
    diff = [f"{k}: checkpoint {saved.get(k)!r}, this run {current.get(k)!r}"
            for k in sorted(set(saved) | set(current)) if saved.get(k) != current.get(k)]
    if diff:
        raise ValueError(f"checkpoint: expected a checkpoint of this run's {what}, got {path!r} with a different "
                         f"one:\n  " + "\n  ".join(diff))


def check_same_run(state: dict, cfg: ViTConfig | ResNetConfig, recipe: Recipe, seed: int, dtype: str,
                   identity: dict, path: str) -> None:
    """A checkpoint may only be resumed by the run that wrote it: same model, model config, recipe, seed, dtype and
    identity."""
    if state["model"] != model_name(cfg):
        raise ValueError(f"checkpoint: expected a checkpoint of this run's model {model_name(cfg)!r}, got {path!r} "
                         f"holding a {state['model']!r}")
    check_same(state, "config", dataclasses.asdict(cfg), path)
    check_resumable(state, recipe, seed, dtype, identity, path)


def rng_state() -> dict:
    """This process's random-number state (CPU, and CUDA where there is one)."""
    state = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
