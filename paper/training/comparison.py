"""The runs paper.compare makes (its docstring describes the experiment and the protocol): the models it trains, by
name, and their hyper-parameter grids; one run (a model, a training-set size, a seed, and for the grid its
hyper-parameters) as a job a worker process can take, trained to convergence on a validation split and recorded on
disk; the jobs of a sweep in the order their prerequisites allow (the pre-training before the pre-trained ViT, the
masked patch prediction before the ViT fine-tuned from it, the ResNet before its DeiT students); the choice of each
model's hyper-parameters from its grid."""
import dataclasses
import itertools
import json
import multiprocessing
import os
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from functools import cache

import torch
from tqdm import tqdm

import lowlevel as vit
from lowlevel.lora import LoRAConfig, init_adapters
from lowlevel.mpp import MPPConfig
from paper.analysis.probes import probe
from paper.formats.atomic import write_text
from paper.models.cnn import ResNetClassifier, ResNetConfig
from paper.models.explicit_params import ExplicitParams
from paper.training.classifier import Classifier
from paper.training.data import EvalView, ImageArray, eval_preprocessing, load_data
from paper.training.distillation import Distillation, load_teacher
from paper.training.early_stopping import EarlyStopping
from paper.training.loop import Run, evaluate, train_stage
from paper.training.lora import LoRAParams
from paper.training.mpp import MaskedPatchPrediction, encoder_params, mpp_model
from paper.training.processes import Processes
from paper.training.recipes import DIGITS_PRETRAIN, MNIST_HYBRID, MNIST_MODEL, MNIST_PRETRAIN, MPP_RECIPES
from paper.training.stages import finetuning_model, pretraining_model, with_steps
from paper.training.state import checkpoint_config, load_checkpoint

# Every model trains on MNIST by MNIST's pre-training recipe at 28×28, the pre-trained ViT too: Adam, warm-up and
# cosine decay to the step cap, clipping at 1, crops of 80-100% of the area, no flip, batches of 32; the ViTs get a
# linear head and no dropout. The learning rate, weight decay and (for the ViTs from scratch) warm-up are each
# model's own, chosen on a validation split by GRIDS below.
RECIPE = dataclasses.replace(MNIST_PRETRAIN, image_size=28, dropout=0.0)


@dataclasses.dataclass(frozen=True)
class HyperParameters:
    lr: float
    weight_decay: float     # decoupled, multiplied by the learning rate (torch.optim.AdamW)
    warmup: float           # the warm-up's share of the step cap


def grid(lrs, weight_decays, warmups) -> tuple[HyperParameters, ...]:
    return tuple(HyperParameters(*hp) for hp in itertools.product(lrs, weight_decays, warmups))


# The grid each model's hyper-parameters are chosen from: the best validation accuracy at TUNE_SIZE, seed 0 (the
# earliest in grid order of equals). The ViTs from scratch also choose their warm-up; a pre-trained ViT and the CNN
# warm up for 5% of the cap.
FROM_SCRATCH = grid((1e-3, 3e-3), (0.03, 0.3), (0.05, 0.2))
GRIDS = {"vit": FROM_SCRATCH, "vit-large": FROM_SCRATCH, "vit-avg": FROM_SCRATCH,
         "vit-pretrained": grid((1e-3, 3e-3), (0.03, 0.3), (0.05,)), "cnn": grid((1e-3, 3e-3), (0.03, 0.3), (0.05,))}
# The pre-trained ViT fine-tuned in part, each against full fine-tuning (vit-pretrained): the new head alone (a linear
# probe of the pre-trained features), or LoRA's adapters (Hu et al. 2021, eq. 3; lowlevel/lora.py, peft's
# initialisation) trained with the head, the base frozen; at two ranks on the paper's W_q, W_v, and at the smaller rank
# on every weight of a block. Their own learning rates: adapters and a zero-initialised head start small, so the grid
# reaches higher; every run warms up for 5% of the cap.
EVERY_WEIGHT = ("q", "k", "v", "proj", "fc1", "fc2")
PARTIAL = {"vit-head": None, "vit-lora-qv4": LoRAConfig(4, 4.0, ("q", "v")),
           "vit-lora-qv16": LoRAConfig(16, 16.0, ("q", "v")), "vit-lora-all4": LoRAConfig(4, 4.0, EVERY_WEIGHT)}
GRIDS |= {m: grid((1e-3, 3e-3, 1e-2, 3e-2), (0.03,), (0.05,)) for m in PARTIAL}
# The models that start from vit-pretrained's pre-training.
PRETRAINED = ("vit-pretrained", *PARTIAL)
# Models that take another's choice: the ViT without E_pos and DeiT's students the ViT's (DeiT trains its students
# by the ViT's recipe), the CIFAR-stem ResNet the stock stem's.
TUNED_AS = {"vit-no-pos": "vit", "vit-hard": "vit", "vit-soft": "vit", "cnn-cifar": "cnn"} | {m: m for m in GRIDS}
TUNE_SIZE = 1600
# What the committed grids chose (paper/results/compare.json's "chosen", and large_grid.json's for the larger ViT,
# whose grid ran alone; a test holds them equal): the hyper-parameters of every run that does not tune. A model
# without a committed choice needs --tune.
CHOSEN = {"vit": HyperParameters(3e-3, 0.3, 0.2), "vit-large": HyperParameters(1e-3, 0.03, 0.2),
          "vit-avg": HyperParameters(3e-3, 0.3, 0.2),
          "vit-pretrained": HyperParameters(3e-3, 0.03, 0.05), "vit-head": HyperParameters(3e-2, 0.03, 0.05),
          "vit-lora-qv4": HyperParameters(3e-2, 0.03, 0.05), "vit-lora-qv16": HyperParameters(1e-2, 0.03, 0.05),
          "vit-lora-all4": HyperParameters(1e-2, 0.03, 0.05), "cnn": HyperParameters(3e-3, 0.3, 0.05)}


# The digits-sized ViT with a linear head (MNIST_MODEL), a larger one, one that classifies the average of its patch
# tokens instead of its class token (timm's global_pool="avg"), and one without E_pos. The pre-trained ViTs end as
# MNIST_MODEL too: fine-tuning replaces the pre-training head by a linear one and E_pos's 4×4 grid by a 7×7 one.
VITS = {"vit": MNIST_MODEL, "vit-large": dataclasses.replace(MNIST_MODEL, dim=96, depth=6, mlp_dim=192),
        "vit-avg": dataclasses.replace(MNIST_MODEL, pool="avg"),
        "vit-no-pos": dataclasses.replace(MNIST_MODEL, pos_embed="none")} | dict.fromkeys(PRETRAINED, MNIST_MODEL)


# The DeiT students: MNIST_MODEL with a distillation token and head, by the kind of distillation they learn by.
DISTILLED = {"vit-hard": "hard", "vit-soft": "soft"}
VITS |= {name: dataclasses.replace(MNIST_MODEL, distilled=True) for name in DISTILLED}


# The remedies of the small-data gap, each the digits-sized ViT changed in one respect and trained as `vit` is, by the
# ViT's hyper-parameters (not retuned): the hybrid (§3.1; recipes.MNIST_HYBRID: its patches the cells of a conv stem
# and one bottleneck unit's feature map, the same encoder), the ViT with Shifted Patch Tokenization and Locality
# Self-Attention (Lee et al. 2021; lowlevel/locality.py), and the ViT pre-trained by masked patch prediction (§4.6,
# lowlevel.mpp, training/mpp.py) on the 4,000 training images without their labels, then fine-tuned as vit-pretrained
# is, by vit-pretrained's hyper-parameters.
REMEDIES = ("vit-hybrid", "vit-spt-lsa", "vit-mpp")
VITS |= {"vit-hybrid": MNIST_HYBRID, "vit-spt-lsa": dataclasses.replace(MNIST_MODEL, patch_embed="spt", attention="lsa"),
         "vit-mpp": MNIST_MODEL}
TUNED_AS |= {"vit-hybrid": "vit", "vit-spt-lsa": "vit", "vit-mpp": "vit-pretrained"}


CNNS = {"cnn": ResNetConfig(stem="stock"), "cnn-cifar": ResNetConfig(stem="cifar")}


LABELS = {"vit": "ViT, digits size (D 64, 4 layers)", "vit-large": "ViT, larger (D 96, 6 layers)",
          "vit-pretrained": "ViT, pre-trained on 8×8 digits", "cnn": "ResNet-18, stock stem",
          "vit-no-pos": "ViT without E_pos", "cnn-cifar": "ResNet-18, CIFAR stem",
          "vit-hard": "ViT distilled from the ResNet-18, hard", "vit-soft": "ViT distilled from the ResNet-18, soft",
          "vit-avg": "ViT, patch tokens averaged (not the class token)",
          "vit-head": "pre-trained ViT, the head alone", "vit-lora-qv4": "pre-trained ViT, LoRA q,v r=4",
          "vit-lora-qv16": "pre-trained ViT, LoRA q,v r=16", "vit-lora-all4": "pre-trained ViT, LoRA on every weight r=4",
          "vit-hybrid": "hybrid ViT, conv stem + 1 bottleneck unit (ViT's hyper-parameters)",
          "vit-spt-lsa": "ViT with SPT and LSA (ViT's hyper-parameters)",
          "vit-mpp": "ViT pre-trained by masked patch prediction, unlabelled"}


SWEEP = ("vit", "vit-large", "vit-avg", *PRETRAINED, "cnn")


# The pre-training of vit-pretrained: the main job's digits recipe (its batch of 64) at 16×16.
PRETRAIN = dataclasses.replace(DIGITS_PRETRAIN, image_size=16)


# The pre-training of vit-mpp: paper.train's MNIST masked patch prediction (recipes.MPP_RECIPES["mnist"], the MNIST
# pre-training recipe with the objective changed: 16×16, batches of 64), the paper's objective (each chosen 4×4 patch
# predicts its mean grey level in 3 bits), on the 4,000 training images without labels. Nothing to stop it early on
# (its validation would be a loss, not an accuracy): it runs --pretrain-steps, and its held-out loss on the test
# images is recorded, never used.
MPP_PRETRAIN = MPP_RECIPES["mnist"]
MPP = MPPConfig()
# The pre-training each pre-trained model starts from (a Job's model): supervised on the digits, or MPP on MNIST.
PRETRAININGS = ("pretraining", "mpp-pretraining")
STARTS_FROM = dict.fromkeys(PRETRAINED, "pretraining") | {"vit-mpp": "mpp-pretraining"}


PATCH_SIZE = MNIST_MODEL.patch_size


TRAIN_IMAGES = 4000


VALIDATION_SHARE = 5        # one image in five of each class of a subset is its validation split


@dataclasses.dataclass(frozen=True)
class Settings:
    sizes: tuple[int, ...]
    seeds: int
    steps: int              # the cap: at most this many steps (the schedule's length), fewer when stopped early
    batch: int
    eval_every: int         # steps between evaluations (validation, and the test digits for the compute view)
    patience: int           # evaluations without a better validation accuracy before a run stops
    pretrain_steps: int     # the cap of vit-pretrained's pre-training, stopped by the same rule, and of vit-mpp's,
    #                         which runs to it
    cifar_seeds: int
    tune: bool              # choose each model's hyper-parameters by its grid first (else: CHOSEN)
    threads: int
    out: str
    models: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class Job:
    model: str          # a key of LABELS, or of PRETRAININGS: "pretraining" (vit-pretrained's first stage, on the 8×8
    #                     digits), "mpp-pretraining" (vit-mpp's, on MNIST's training images without labels)
    size: int           # training images, validation split included (0 for a pre-training)
    seed: int
    hp: HyperParameters | None = None   # a tuning run's; None: the model's chosen ones

    @property
    def name(self) -> str:
        if self.model == "pretraining":
            return f"pretrained_seed{self.seed}"
        if self.model == "mpp-pretraining":
            return f"mpp_pretrained_seed{self.seed}"
        tuning = f"_lr{self.hp.lr:g}_wd{self.hp.weight_decay:g}_wu{self.hp.warmup:g}" if self.hp else ""
        return f"{self.model}_n{self.size}_seed{self.seed}{tuning}"

    def record_path(self, out: str) -> str:
        """Where the finished run's record lies: a rerun skips the runs whose record exists."""
        return os.path.join(out, "tuning" if self.hp else "runs", f"{self.name}.json")


@cache
def mnist() -> tuple[ImageArray, ImageArray]:
    """MNIST's 4,000 / 1,000 split, read once per process."""
    train, test, _ = load_data("mnist")
    return train, test


def stratified_subset(labels: torch.Tensor, size: int, seed: int) -> torch.Tensor:
    """size/K images of each of the K classes, drawn by `seed`; for one seed a smaller subset lies inside a larger one.
    -> sorted indices into labels."""
    classes = labels.unique()
    per_class, g = size // len(classes), torch.Generator().manual_seed(seed)
    chosen = []
    for c in classes:
        members = (labels == c).nonzero().flatten()
        chosen.append(members[torch.randperm(len(members), generator=g)[:per_class]])
    return torch.cat(chosen).sort().values


def split_validation(data: ImageArray, seed: int) -> tuple[ImageArray, ImageArray]:
    """Every VALIDATION_SHARE-th image of each class (at least one), drawn by `seed`, held out. -> (train, validation)."""
    g, held_out = torch.Generator().manual_seed(seed + 7919), []
    for c in data.labels.unique():
        members = (data.labels == c).nonzero().flatten()
        count = max(1, round(len(members) / VALIDATION_SHARE))
        held_out.append(members[torch.randperm(len(members), generator=g)[:count]])
    validation = torch.zeros(len(data), dtype=torch.bool)
    validation[torch.cat(held_out)] = True
    return (ImageArray(data.images[~validation], data.labels[~validation]),
            ImageArray(data.images[validation], data.labels[validation]))


def test_images() -> tuple[torch.Tensor, torch.Tensor]:
    """The 1,000 test digits as one batch, pixels in [0, 1] as the data set gives them, and their labels."""
    _, test = mnist()
    images, labels = zip(*(test[i] for i in range(len(test))), strict=True)
    return torch.stack(images), torch.tensor(labels)


def build(model: str, seed: int) -> torch.nn.Module:
    """A fresh model trained from scratch, initialised from `seed`. The ViTs run lowlevel's fast path: the same
    function as the explicit one (tests/lowlevel/test_fast_path.py), about 1.3 times faster to train, and nothing here
    needs the intermediates only the explicit path returns."""
    if model in CNNS:
        return ResNetClassifier(CNNS[model], seed)
    cfg = VITS[model]
    if model in PARTIAL:
        return fine_tuned_in_part(model, vit.init_params(cfg, torch.Generator().manual_seed(seed)), cfg, seed)
    return ExplicitParams(vit.init_params(cfg, torch.Generator().manual_seed(seed)), cfg, fast=True,
                          heads=cfg.distilled)


def fine_tuned_in_part(model: str, params: dict, cfg: vit.ViTConfig, seed: int) -> LoRAParams:
    """`params` frozen, with the fresh adapters of `model` (drawn by `seed`) or none: only they and the head train."""
    lora = PARTIAL[model]
    adapters = {} if lora is None else init_adapters(cfg, lora, "peft", torch.Generator().manual_seed(seed))
    return LoRAParams(params, adapters, cfg, lora)


def parameter_counts(model: str, module: torch.nn.Module) -> tuple[int, int]:
    """(all, trained) parameters of a built model: a model fine-tuned in part trains only its adapters and head."""
    trained = sum(p.numel() for p in module.parameters())
    return trained + (sum(t.numel() for t in module.base.values()) if model in PARTIAL else 0), trained


def recipe_of(hp: HyperParameters, s: Settings):
    """RECIPE with the run's hyper-parameters, its step cap and batch."""
    return dataclasses.replace(RECIPE, base_lr=hp.lr, weight_decay=hp.weight_decay, total_steps=s.steps,
                               warmup_steps=round(hp.warmup * s.steps), batch_size=s.batch)


def convergence(log: dict, model, train: ImageArray, batch: int, procs: Processes) -> dict:
    """What an early-stopped stage's log says of its run: steps and epochs taken, the training loss over its last
    evaluation period, the best validation accuracy, and the test and training accuracy of the weights that reached
    it (the model, restored to them)."""
    best = next(r for r in log["eval"] if r["step"] == log["best"]["step"])
    return {"steps": log["stopped_at"], "epochs": log["stopped_at"] * batch / len(train),
            "best_step": best["step"], "val_accuracy": best["val_accuracy"], "test_accuracy": best["test_accuracy"],
            "final_train_loss": log["eval"][-1]["train_loss"],
            "train_accuracy": evaluate(model, EvalView(train, model.cfg.image_size[0]), procs, torch.float32),
            "train_seconds": log["seconds"], "curve": log["eval"]}


def run_job(job: Job, s: Settings, hp: HyperParameters | None) -> dict:
    """Train one model on one subset until its validation accuracy stops improving, test its best weights; on the
    largest set, probe them too. Writes and returns the run's record."""
    torch.set_num_threads(s.threads)
    train, test = mnist()
    checkpoints, procs = os.path.join(s.out, "checkpoints"), Processes()
    run = Run(out=checkpoints, procs=procs, seed=job.seed, progress=False, eval_every=s.eval_every,   # the CNNs:
              save=not job.hp and (job.model in (*PRETRAININGS, "cnn") or                          # any student's
                                   (job.size == max(s.sizes) and job.seed == 0                     # teacher
                                    and job.model not in PARTIAL)))       # (adapters alone: not a classifier)
    if job.model == "pretraining":
        digits_train, digits_test, _ = load_data("digits")
        data = ImageArray(torch.cat([digits_train.images, digits_test.images]),   # all 1,797: the test set is MNIST's
                          torch.cat([digits_train.labels, digits_test.labels]))
        train_part, run.stopping = split_validation_stopping(data, job.seed, s.patience, s.pretrain_steps)
        recipe = with_steps(PRETRAIN, s.pretrain_steps, None)
        params, cfg = pretraining_model(MNIST_MODEL, recipe, 1, 10, job.seed)
        model = ExplicitParams(params, cfg, fast=True)
        log = train_stage(job.name, model, recipe, train_part, test, run)
        result = {"model": job.model, "size": len(data), "seed": job.seed,   # test: MNIST before fine-tuning, 16×16
                  **convergence(log, model, train_part, recipe.batch_size, procs)}
        return write_record(job, s, result)
    if job.model == "mpp-pretraining":
        return write_record(job, s, mpp_pretraining(job, run, train, test, s.pretrain_steps))
    data = ImageArray(*(t[stratified_subset(train.labels, job.size, job.seed)] for t in (train.images, train.labels)))
    train_part, run.stopping = split_validation_stopping(data, job.seed, s.patience, s.steps)
    recipe = recipe_of(hp, s)
    if job.model in STARTS_FROM:                  # an MPP checkpoint's [mask] embedding and head are dropped
        state = load_checkpoint(os.path.join(checkpoints, f"{prerequisite(job).name}.pt"))
        params, cfg = finetuning_model(encoder_params(state["params"]), checkpoint_config(state), recipe, 10)
        model = (fine_tuned_in_part(job.model, params, cfg, job.seed) if job.model in PARTIAL
                 else ExplicitParams(params, cfg, fast=True))
    elif job.model in DISTILLED:
        run.distillation = Distillation(DISTILLED[job.model])
        run.teacher = load_teacher(os.path.join(checkpoints, f"cnn_n{job.size}_seed{job.seed}.pt"))
        model = build(job.model, job.seed)
    else:
        model = build(job.model, job.seed)
    log = train_stage(job.name, model, recipe, train_part, test, run)
    result = {"model": job.model, "size": job.size, "seed": job.seed, "hp": dataclasses.asdict(hp),
              **convergence(log, model, train_part, recipe.batch_size, procs)}
    if job.size == max(s.sizes) and not job.hp:
        classify = Classifier(model, eval_preprocessing(model.cfg.image_size))
        result["probes"] = probe(classify, *test_images(), PATCH_SIZE, job.seed)
    return write_record(job, s, result)


def mpp_pretraining(job: Job, run: Run, train: ImageArray, test: ImageArray, steps: int) -> dict:
    """vit-mpp's first stage: masked patch prediction on every training image, its labels never read, for `steps`
    steps (no early stopping). -> its record: steps, epochs, the training loss over the last evaluation period and
    the held-out MPP loss on the test images."""
    recipe = with_steps(MPP_PRETRAIN, steps, None)
    params, cfg = mpp_model(MNIST_MODEL, recipe, 1, MPP, job.seed)
    model = MaskedPatchPrediction(params, cfg, MPP)
    log = train_stage(job.name, model, recipe, train, test, run)
    last = log["eval"][-1]
    return {"model": job.model, "size": len(train), "seed": job.seed, "steps": last["step"],
            "epochs": last["step"] * recipe.batch_size / len(train), "final_train_loss": last["train_loss"],
            "test_loss": last["test_loss"], "train_seconds": log["seconds"], "curve": log["eval"]}


def split_validation_stopping(data: ImageArray, seed: int, patience: int, cap: int) -> tuple[ImageArray,
                                                                                             EarlyStopping]:
    """The training part of `data`, and early stopping on the rest, not before the second half of the schedule."""
    train_part, validation = split_validation(data, seed)
    return train_part, EarlyStopping(validation, patience, earliest=cap // 2)


def write_record(job: Job, s: Settings, result: dict) -> dict:
    write_text(job.record_path(s.out), json.dumps(result, indent=1))
    return result


def tuning_jobs(s: Settings) -> list[Job]:
    """Each grid run of the models the sweep needs choices for (TUNE_SIZE images, seed 0), after the pre-training
    the pre-trained ViT's grid starts from."""
    owners = dict.fromkeys(TUNED_AS[m] for m in s.models)
    return ([Job("pretraining", 0, 0)] if set(PRETRAINED) & set(owners) else []) + [
        Job(m, TUNE_SIZE, 0, hp) for m in owners for hp in GRIDS[m]]


def choose(records: list[dict]) -> dict[str, HyperParameters]:
    """Per model, the grid point of the best validation accuracy (the earliest in grid order of equals)."""
    chosen = {}
    for m in dict.fromkeys(r["model"] for r in records):
        runs = [r for r in records if r["model"] == m]
        best = max(runs, key=lambda r: r["val_accuracy"])            # max keeps the first of equals
        chosen[m] = HyperParameters(**best["hp"])
    return chosen


def jobs(s: Settings) -> list[Job]:
    """Every training run, the costliest first (so that two workers finish together), pre-training before all."""
    largest, seeds, sizes = max(s.sizes), range(s.seeds), sorted(s.sizes, reverse=True)
    todo = ([Job("pretraining", 0, seed) for seed in seeds]
            + [Job("cnn-cifar", largest, seed) for seed in range(s.cifar_seeds)]
            + [Job("mpp-pretraining", 0, seed) for seed in seeds]
            + [Job(m, n, seed) for m in ("cnn", "vit-large", "vit-hybrid", "vit-spt-lsa", "vit", "vit-avg")
               for n in sizes for seed in seeds]
            + [Job("vit-no-pos", largest, seed) for seed in seeds]
            + [Job(m, n, seed) for m in (*PRETRAINED, "vit-mpp", *DISTILLED) for n in sizes for seed in seeds])
    wanted = {*s.models, *(STARTS_FROM[m] for m in s.models if m in STARTS_FROM)}
    return [job for job in todo if job.model in wanted]


def prerequisite(job: Job) -> Job | None:
    """The job whose checkpoint `job` starts from: its seed's pre-training, or its subset's teacher."""
    if job.model in STARTS_FROM:
        return Job(STARTS_FROM[job.model], 0, job.seed)
    return Job("cnn", job.size, job.seed) if job.model in DISTILLED else None


def hyper_parameters(job: Job, chosen: dict[str, HyperParameters]) -> HyperParameters | None:
    """What `job` trains by: its grid point, or the choice of the model it is tuned as (None: a pre-training)."""
    return job.hp or chosen.get(TUNED_AS.get(job.model))


def read_record(job: Job, s: Settings, hp: HyperParameters | None) -> dict | None:
    """The record an earlier invocation wrote of `job`, if it trained with `hp` (a choice changed since, by a grid
    grown or rerun, makes the run one to train again)."""
    if not os.path.exists(job.record_path(s.out)):
        return None
    with open(job.record_path(s.out)) as f:
        record = json.load(f)
    return record if record.get("hp") in (None, hp and dataclasses.asdict(hp)) else None


def run_all(todo: list[Job], s: Settings, workers: int, chosen: dict[str, HyperParameters]) -> list[dict]:
    """Run the jobs, `workers` processes at a time (one: in this process, in order); a job starts once its
    prerequisite has finished, a job whose record an earlier invocation wrote is read, not run. A progress bar counts
    steps against the caps."""
    results, done_jobs = [], set()
    cap = {job: s.pretrain_steps if job.model in PRETRAININGS else s.steps for job in todo}
    hp = {job: hyper_parameters(job, chosen) for job in todo}
    with tqdm(total=sum(cap.values()), desc="compare", unit="step", dynamic_ncols=True) as bar:
        def finished(job: Job, result: dict) -> None:
            results.append(result)
            done_jobs.add(job)
            bar.update(cap[job])
            score = (f"{result['test_accuracy']:.1%}" if "test_accuracy" in result
                     else f"MPP loss {result['test_loss']:.3f}")
            bar.set_postfix_str(f"{job.model} n={result['size']} seed {job.seed}: {score}")

        waiting = []
        for job in todo:
            record = read_record(job, s, hp[job])
            if record:
                finished(job, record)
            else:
                waiting.append(job)
        if workers == 1:
            for job in waiting:
                finished(job, run_job(job, s, hp[job]))
            return results
        running = {}
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            while waiting or running:
                for job in [j for j in waiting if prerequisite(j) in (None, *done_jobs)]:
                    running[pool.submit(run_job, job, s, hp[job])] = job
                    waiting.remove(job)
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in done:
                    finished(running.pop(future), future.result())
    return results
