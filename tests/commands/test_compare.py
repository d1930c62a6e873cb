"""ViT against the CNN: both trained by one loop on identical batches, the subsets stratified and nested, the probes'
inputs what they claim (the transforms, not the accuracies), any checkpoint loaded as a frozen classifier with its
preprocessing, and `python -m paper.compare --quick`'s code path end to end, small."""
import dataclasses
import json
import math
import os
import re
import shlex
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image
from scipy import ndimage

import lowlevel as vit
import paper.training.loop as train_module
from lowlevel.lora import adapter_shapes
from paper import compare
from paper.analysis.probes import DIRECTIONS, permute_patches, probe, shift, shift_each
from paper.models.cnn import ResNetClassifier, ResNetConfig
from paper.reports.compare_report import markdown
from paper.reports.statistics import separated
from paper.train import main
from paper.training import comparison
from paper.training.classifier import load_classifier
from paper.training.data import EvalView, ImageArray
from paper.training.loop import Run, train_stage
from paper.training.processes import Processes
from paper.training.stages import with_steps
from paper.training.state import check_same_run, load_checkpoint
from tests.helpers import random_params, typed_figures

TRAIN_STEP = train_module.train_step
REPO = Path(__file__).resolve().parents[2]


def digits28(n: int, seed: int) -> ImageArray:
    g = torch.Generator().manual_seed(seed)
    return ImageArray(torch.randint(0, 256, (n, 1, 28, 28), generator=g, dtype=torch.uint8),
                      torch.arange(n) % 10)


def batches_seen(model, recipe, data, seed, tmp_path, monkeypatch) -> list:
    """The (images, labels) of every training step `train_stage` takes with this model."""
    seen = []

    def recording_step(model, optimizer, scheduler, images, labels, **kw):
        seen.append((images.clone(), labels.clone()))
        return TRAIN_STEP(model, optimizer, scheduler, images, labels, **kw)

    monkeypatch.setattr(train_module, "train_step", recording_step)
    train_stage("stage", model, recipe, data, data, Run(out=str(tmp_path), procs=Processes(), seed=seed, save=False,
                                                        progress=False))
    return seen


def test_a_vit_the_pre_trained_vit_and_the_cnn_trained_with_one_seed_see_identical_batches(tmp_path, monkeypatch):
    """The comparison's fairness: one loop, one recipe, and for a seed the same images, crops and labels in the same
    order, whichever model trains; another seed, other batches."""
    from paper.models.explicit_params import ExplicitParams
    from paper.training.stages import finetuning_model, pretraining_model

    data, recipe = digits28(40, 0), with_steps(comparison.RECIPE, 3, 8)
    pre_trained = ExplicitParams(*finetuning_model(*pretraining_model(comparison.MNIST_MODEL, comparison.PRETRAIN, 1, 10, 0),
                                                   recipe, 10))
    models = {"vit": comparison.build("vit", 0), "vit-pretrained": pre_trained, "cnn": comparison.build("cnn", 0)}
    runs = {name: batches_seen(model, recipe, data, 5, tmp_path, monkeypatch) for name, model in models.items()}
    assert len(runs["vit"]) == 3
    for name in ("vit-pretrained", "cnn"):
        assert len(runs[name]) == 3
        for (xv, yv), (x, y) in zip(runs["vit"], runs[name], strict=True):
            assert xv.shape == (8, 1, 28, 28) and torch.equal(xv, x) and torch.equal(yv, y)
    other = batches_seen(comparison.build("vit", 0), recipe, data, 6, tmp_path, monkeypatch)
    assert not torch.equal(other[0][0], runs["vit"][0][0])


def test_stratified_subsets_hold_each_class_equally_and_nest_for_one_seed():
    labels = torch.arange(4000) % 10
    labels = labels[torch.randperm(4000, generator=torch.Generator().manual_seed(0))]
    small, large = comparison.stratified_subset(labels, 100, 1), comparison.stratified_subset(labels, 630, 1)
    assert np.bincount(labels[small].numpy()).tolist() == [10] * 10
    assert np.bincount(labels[large].numpy()).tolist() == [63] * 10
    assert len(set(small.tolist())) == 100 and set(small.tolist()) <= set(large.tolist())
    assert torch.equal(small, comparison.stratified_subset(labels, 100, 1))
    assert not torch.equal(small, comparison.stratified_subset(labels, 100, 2))


@given(dy=st.integers(-6, 6), dx=st.integers(-6, 6), seed=st.integers(0, 99))
def test_shift_moves_every_pixel_and_fills_with_black_as_scipy(dy, dx, seed):
    """scipy.ndimage.shift with order 0 and a constant 0 outside: out[i, j] = in[i - dy, j - dx]."""
    images = torch.rand(2, 1, 9, 7, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    expected = ndimage.shift(images.numpy(), (0, 0, dy, dx), order=0, mode="constant", cval=0.0)
    assert np.array_equal(shift(images, dy, dx).numpy(), expected)


def test_each_image_is_shifted_in_its_own_direction():
    images = torch.rand(8, 1, 12, 12, generator=torch.Generator().manual_seed(0))
    directions = torch.tensor([0, 1, 2, 3, 3, 2, 1, 0])
    out = shift_each(images, 3, directions)
    for b, d in enumerate(directions.tolist()):
        dy, dx = DIRECTIONS[d]
        assert torch.equal(out[b], shift(images[b:b + 1], 3 * dy, 3 * dx)[0])
    assert set(DIRECTIONS) == {(1, 0), (-1, 0), (0, 1), (0, -1)}


def test_permuted_patches_are_the_input_patches_moved_as_the_permutation_says():
    """Checked block by block by slicing, independently of patchify."""
    g = torch.Generator().manual_seed(0)
    images, p = torch.rand(3, 2, 12, 8, generator=g), 4                  # a 3×2 grid of 4×4 patches, 2 channels
    permutations = torch.stack([torch.randperm(6, generator=g) for _ in range(3)])
    out = permute_patches(images, p, permutations)
    for b in range(3):
        for n in range(6):
            r, c = divmod(n, 2)
            src_r, src_c = divmod(permutations[b, n].item(), 2)
            assert torch.equal(out[b, :, r * p:(r + 1) * p, c * p:(c + 1) * p],
                               images[b, :, src_r * p:(src_r + 1) * p, src_c * p:(src_c + 1) * p])
    inverse = permutations.argsort(dim=1)
    assert torch.equal(permute_patches(out, p, inverse), images)


def test_a_vit_without_position_embeddings_cannot_tell_permuted_patches_apart():
    """The probe's premise, in float64: without E_pos the logits of permuted digits equal the originals' to rounding;
    with E_pos they do not."""
    images = torch.rand(4, 1, 28, 28, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    permutations = torch.stack([torch.randperm(49, generator=torch.Generator().manual_seed(b)) for b in range(4)])
    permuted = permute_patches(images, 4, permutations)
    for name, same in (("vit-no-pos", True), ("vit", False)):
        cfg = comparison.VITS[name]
        params = random_params(cfg, seed=2, scale=0.1)
        a, b = vit.forward(params, images, cfg), vit.forward(params, permuted, cfg)
        assert a.abs().max() > 1e-2
        assert (a - b).abs().max().item() < 1e-12 if same else (a - b).abs().max().item() > 1e-4


def test_probe_shows_every_model_of_a_seed_the_same_images():
    """The probe's transformed images depend on the seed alone; shift 0 is the plain test set."""
    images = torch.rand(20, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    labels = torch.arange(20) % 10
    seen = {0: [], 1: []}

    def recorder(key):
        def classify(x):
            seen[key].append(x.clone())
            return torch.zeros(len(x), 10)
        return classify

    probe(recorder(0), images, labels, 4, seed=3)
    probe(recorder(1), images, labels, 4, seed=3)
    assert len(seen[0]) == 6 and all(torch.equal(a, b) for a, b in zip(seen[0], seen[1], strict=True))
    assert torch.equal(seen[0][0], images)
    assert all((x[:, :, :4].sum((1, 2, 3)) == 0).sum() >= 1 for x in seen[0][4:5])   # shift 4: black rows came in


def test_load_classifier_rebuilds_a_trained_cnn_with_its_running_statistics_and_preprocessing(tmp_path):
    """A CNN checkpoint -> a frozen callable on [0, 1] images whose logits equal the trained model's on the images
    as the loop evaluates them (EvalView), BatchNorm's running statistics included."""
    data, recipe = digits28(16, 0), with_steps(comparison.RECIPE, 2, 8)
    model = ResNetClassifier(ResNetConfig(), 0)
    train_stage("cnn", model, recipe, data, data, Run(out=str(tmp_path), procs=Processes(), progress=False))
    teacher = load_classifier(tmp_path / "cnn.pt")
    assert teacher.model.net.bn1.running_mean.abs().sum() > 0            # trained statistics, not the defaults
    images = torch.stack([data[i][0] for i in range(16)])
    view = EvalView(data, 28)
    with torch.no_grad():
        expected = model.eval()(torch.stack([view[i][0] for i in range(16)]))
    assert torch.equal(teacher(images), expected)
    assert not any(p.requires_grad for p in teacher.parameters())
    assert not teacher.train().model.training                           # stays frozen inside a student's loop


def test_load_classifier_rebuilds_the_mnist_vit_from_paper_train(tmp_path):
    """`python -m paper.train --data mnist` in miniature: pre-trained at 16×16 with the MLP head, fine-tuned at 28×28
    (E_pos 4×4 -> 7×7) with a linear head; its checkpoint loads as a classifier of 28×28 digits, and any image size
    is resized to it."""
    log = main(["--data", "mnist", "--pretrain-steps", "2", "--finetune-steps", "2", "--pretrain-batch", "8",
                "--finetune-batch", "8", "--out", str(tmp_path)])
    assert log["stages"]["pretrain"]["config"]["image_size"] == (16, 16)
    assert log["stages"]["finetune"]["config"]["image_size"] == (28, 28)
    state = load_checkpoint(str(tmp_path / "finetune.pt"))
    assert state["model"] == "vit" and state["preprocessing"] == {"resize": [28, 28], "mean": 0.5, "std": 0.5}
    assert state["params"]["pos"].shape == (1, 50, 64) and "pre_logits.weight" not in state["params"]
    classify = load_classifier(tmp_path / "finetune.pt")
    images = torch.rand(3, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    cfg = vit.ViTConfig(**state["config"])
    assert torch.equal(classify(images), vit.forward(state["params"], images * 2 - 1, cfg))
    assert classify(torch.rand(3, 1, 20, 20)).shape == (3, 10)


def test_a_checkpoint_of_one_model_is_not_resumed_as_another(tmp_path):
    data, recipe = digits28(16, 0), with_steps(comparison.RECIPE, 1, 8)
    train_stage("cnn", ResNetClassifier(ResNetConfig(), 0), recipe, data, data,
                Run(out=str(tmp_path), procs=Processes(), progress=False))
    state = load_checkpoint(str(tmp_path / "cnn.pt"))
    with pytest.raises(ValueError, match="checkpoint: expected a checkpoint of this run's model 'vit', got .*cnn.pt'"
                                         " holding a 'resnet18'"):
        check_same_run(state, comparison.VITS["vit"], recipe, 0, "float32", {}, str(tmp_path / "cnn.pt"))
    with pytest.raises(ValueError, match="init: expected a ViT's pretrain.pt to fine-tune, got .* holding a 'resnet18'"):
        main(["--stages", "finetune", "--init", str(tmp_path / "cnn.pt"), "--out", str(tmp_path)])


@pytest.mark.parametrize("argv, message", [
    (["--sizes", "100", "105"], r"--sizes: expected distinct multiples of 10 \(the classes\) from 10 to 4000, got "
                                r"\[100, 105\]"),
    (["--sizes", "5000"], "--sizes: expected distinct multiples of 10"),
    (["--seeds", "0"], "--seeds: expected a positive integer, got 0"),
    (["--pretrain-steps", "-1"], "--pretrain-steps: expected a positive integer, got -1"),
    (["--seeds", "2", "--cifar-seeds", "3"], "--cifar-seeds: expected 0 to --seeds=2, got 3"),
    (["--models", "vit", "vit-soft"], "--models: expected cnn beside vit-soft \\(their teacher\\), got vit vit-soft"),
])
def test_bad_flags_are_refused_naming_the_flag(argv, message):
    with pytest.raises(ValueError, match=message):
        compare.main(argv)


def test_a_model_without_a_committed_choice_needs_tune(monkeypatch):
    monkeypatch.delitem(comparison.CHOSEN, "vit-large")
    with pytest.raises(ValueError, match="--models: expected models with committed hyper-parameters .* or --tune, "
                                         "got vit-large, whose grid no committed result ran"):
        compare.main(["--models", "vit-large"])


def test_help_describes_the_command(capsys):
    with pytest.raises(SystemExit) as exit_help:
        compare.main(["--help"])
    out = capsys.readouterr().out
    assert exit_help.value.code == 0 and "python -m paper.compare" in out and "--quick" in out


SMALL = ["--sizes", "20", "40", "--steps", "3", "--eval-every", "1", "--patience", "1", "--batch", "8",
         "--pretrain-steps", "2", "--workers", "1"]


@pytest.fixture
def hundred_test_digits(monkeypatch):
    train, test = comparison.mnist()
    monkeypatch.setattr(comparison, "mnist", lambda: (train, ImageArray(test.images[:100], test.labels[:100])))


@pytest.mark.slow
def test_full_comparison_code_path_end_to_end_small(tmp_path, hundred_test_digits):
    """`--full` with fewer steps, images and sizes, every model included (the CIFAR stem and DeiT's students too), the
    grids run, in this process (--workers 1) and against the first 100 test digits: results, tables, pictures and the
    seed-0 checkpoints of the largest set, the CNN's loadable as a teacher."""
    result = compare.main(["--full", *SMALL, "--seeds", "2", "--out", str(tmp_path)])
    saved = json.loads((tmp_path / "compare.json").read_text())
    assert saved["settings"]["sizes"] == [20, 40] and saved["settings"]["seeds"] == 2 and saved["settings"]["tune"]
    assert set(saved["models"]) == set(compare.FULL["models"]) == set(comparison.LABELS) - set(comparison.REMEDIES)
    for name in comparison.SWEEP:
        assert set(saved["models"][name]["accuracy"]) == {"20", "40"}
        assert saved["models"][name]["accuracy"]["40"]["n"] == 2
    assert set(saved["models"]["cnn-cifar"]["accuracy"]) == {"40"}
    assert saved["models"]["cnn"]["params"] == 11_175_370 and saved["models"]["cnn-cifar"]["params"] == 11_172_810
    for m in saved["models"].values():
        assert 0 < m["multiply_adds"] < m["training_multiply_adds"] and m["inference_images_per_s"] > 0
        assert len(m["probes"]["shift"]) == 5 and 0 <= m["probes"]["permuted"]["mean"] <= 1
    for r in saved["runs"]:
        assert 0 <= r["test_accuracy"] <= 1 and r["train_seconds"] > 0 and 1 <= r["steps"] <= 3
        assert r["best_step"] <= r["steps"] and r["curve"][-1]["step"] == r["steps"]
        fit = r["size"] - 10 * max(1, round(r["size"] / 50))                  # less the validation fifth
        assert r["epochs"] == pytest.approx(r["steps"] * (64 if r["model"] == "pretraining" else 8) / fit, rel=0.01)
        assert next(e for e in r["curve"] if e["step"] == r["best_step"])["test_accuracy"] == r["test_accuracy"]
    assert len(saved["runs"]) == 2 + 1 + len(comparison.SWEEP) * 2 * 2 + 2 + 2 * 2 * 2  # pre-training, CIFAR stem,
    #                                                                           the sweep, no E_pos, the students
    assert len(saved["tuning"]) == sum(len(comparison.GRIDS[m]) for m in comparison.SWEEP)
    assert {r["size"] for r in saved["tuning"]} == {comparison.TUNE_SIZE}
    for m, hp in saved["chosen"].items():
        grid = [r for r in saved["tuning"] if r["model"] == m]
        assert next(r for r in grid if r["hp"] == hp)["val_accuracy"] == max(r["val_accuracy"] for r in grid)
    assert all(r["hp"] == saved["chosen"][comparison.TUNED_AS[r["model"]]] for r in saved["runs"] if "hp" in r)
    table = (tmp_path / "compare.md").read_text()
    assert "| ResNet-18, stock stem | 11,175,370 |" in table and "patches permuted" in table
    full = saved["models"]["vit-pretrained"]["params"]
    assert saved["models"]["vit-head"]["params"] == full and saved["models"]["vit-head"]["trained_params"] == 650
    assert f"| pre-trained ViT, the head alone | {full:,} (650 trained) |" in table
    for picture in ("compare.png", "compute.png", "curves.png"):
        assert Image.open(tmp_path / picture).format == "PNG"
    checkpoints = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert checkpoints == sorted([f"{m}_n40_seed0.pt" for m in compare.FULL["models"]
                                  if m != "cnn" and m not in comparison.PARTIAL] +
                                 [f"cnn_n{n}_seed{seed}.pt" for n in (20, 40) for seed in (0, 1)] +
                                 ["pretrained_seed0.pt", "pretrained_seed1.pt"])     # every CNN: a teacher
    teacher = load_classifier(tmp_path / "checkpoints" / "cnn_n40_seed0.pt")
    assert teacher(torch.rand(2, 1, 28, 28)).shape == (2, 10)
    assert result["seconds"] > 0 and math.isfinite(result["models"]["vit"]["accuracy"]["20"]["mean"])
    assert saved["run_seconds"] == pytest.approx(sum(r["train_seconds"] for r in saved["runs"] + saved["tuning"]))


def test_a_rerun_skips_finished_runs_and_other_settings_are_refused(tmp_path, hundred_test_digits, monkeypatch):
    """Resumable per run: a killed sweep loses only the run in progress, the same command goes on from the records;
    a rerun with other settings is refused naming them, and --force starts again."""
    argv = [*SMALL, "--models", "vit", "--sizes", "20", "--seeds", "2", "--out", str(tmp_path)]
    run_job, calls = comparison.run_job, []

    def killed_after_one(job, s, hp):
        if calls:
            raise KeyboardInterrupt
        calls.append(job)
        return run_job(job, s, hp)

    monkeypatch.setattr(comparison, "run_job", killed_after_one)
    with pytest.raises(KeyboardInterrupt):
        compare.main(argv)
    assert [p.name for p in (tmp_path / "runs").iterdir()] == [f"{calls[0].name}.json"]
    first = json.loads((tmp_path / "runs" / f"{calls[0].name}.json").read_text())
    monkeypatch.setattr(comparison, "run_job", lambda job, s, hp: calls.append(job) or run_job(job, s, hp))
    result = compare.main(argv)
    assert [job.seed for job in calls] == [0, 1] and first in result["runs"] and len(result["runs"]) == 2
    with pytest.raises(ValueError, match=r"--out: expected a new folder or one holding the runs of these settings, "
                                         r"got .*, whose runs had other settings \(patience 1 -> 2\); pass --force"):
        compare.main([*argv, "--patience", "2"])
    result = compare.main([*argv, "--patience", "2", "--force"])
    assert [job.seed for job in calls] == [0, 1, 0, 1] and result["settings"]["patience"] == 2
    result = compare.main([*argv, "--patience", "2", "--seeds", "3"])          # one more seed: one more run
    assert [job.seed for job in calls] == [0, 1, 0, 1, 2] and len(result["runs"]) == 3


def test_validation_splits_hold_a_fifth_of_each_class_apart_from_training():
    train, _ = comparison.mnist()
    for size in (20, 100, 630, 4000):
        data = ImageArray(*(t[comparison.stratified_subset(train.labels, size, 3)] for t in (train.images, train.labels)))
        fit, validation = comparison.split_validation(data, 3)
        assert len(fit) + len(validation) == size
        assert np.bincount(validation.labels.numpy()).tolist() == [max(1, round(size / 50))] * 10
        pixels = {tuple(x.flatten().tolist()) for x in fit.images}
        assert not any(tuple(x.flatten().tolist()) in pixels for x in validation.images[:50])


def test_choose_takes_the_best_validation_accuracy_and_the_earliest_of_equals():
    grid = comparison.GRIDS["vit"]
    records = [{"model": "vit", "hp": dataclasses.asdict(hp), "val_accuracy": a}
               for hp, a in zip(grid, (0.5, 0.7, 0.7, 0.6, 0.1, 0.2, 0.3, 0.4), strict=True)]
    assert comparison.choose(records) == {"vit": grid[1]}


def test_the_committed_choice_is_what_the_committed_grids_chose():
    """The profiles that do not tune train with --full's choice: CHOSEN is what the tuned sweeps committed chose,
    paper/results/compare.json and, for the larger ViT, large_grid.json (its grid run alone, at the tuning size)."""
    chosen = {}
    for name in ("compare", "large_grid"):
        committed = json.loads((REPO / "paper" / "results" / f"{name}.json").read_text())
        assert committed["settings"]["tune"] and not chosen.keys() & committed["chosen"].keys()
        chosen |= committed["chosen"]
    assert {m: dataclasses.asdict(hp) for m, hp in comparison.CHOSEN.items()} == chosen


def committed_report(name: str) -> dict:
    """paper/results/NAME.json, checked to be what its tables say of its runs: NAME.md is what the report code makes
    of it, each accuracy is the mean of its size's runs, one per seed, and every run stopped by the protocol's rule
    (patience spent, not before half the cap) or at its cap (masked patch prediction, not stopped early, at its cap)."""
    results = REPO / "paper" / "results"
    committed = json.loads((results / f"{name}.json").read_text())
    assert markdown(committed) == (results / f"{name}.md").read_text()
    s = committed["settings"]
    for model, m in committed["models"].items():
        for n, accuracy in m["accuracy"].items():
            runs = [r for r in committed["runs"] if r["model"] == model and r["size"] == int(n)]
            seeds = s["cifar_seeds"] if model == "cnn-cifar" else s["seeds"]
            assert len(runs) == accuracy["n"] == seeds and accuracy["mean"] == pytest.approx(
                sum(r["test_accuracy"] for r in runs) / len(runs), abs=1e-12)
    for r in committed["runs"]:
        cap = s["pretrain_steps"] if r["model"] in ("pretraining", "mpp-pretraining") else s["steps"]
        assert r["steps"] == cap if r["model"] == "mpp-pretraining" else \
            r["steps"] in (cap, max(r["best_step"] + s["patience"] * s["eval_every"], cap // 2))
    return committed


def shared_runs(a: dict, b: dict) -> list[tuple[float, float]]:
    """The test accuracies of the classifying runs (model, size, seed) two committed results both trained, side by
    side (a masked patch prediction scores a loss, not an accuracy)."""
    accuracy = lambda result: {(r["model"], r["size"], r.get("seed")): r["test_accuracy"]   # noqa: E731
                               for r in result["runs"] if "test_accuracy" in r}
    theirs = accuracy(b)
    return [(x, theirs[run]) for run, x in accuracy(a).items() if run in theirs]


def test_the_committed_tables_are_the_report_of_the_committed_runs():
    """paper/results/compare.md is the report of compare.json's runs (committed_report), the from-scratch ViT at
    n = 4,000 at 93% or more."""
    assert committed_report("compare")["models"]["vit"]["accuracy"]["4000"]["mean"] >= 0.93


def test_the_longer_lora_schedule_narrows_the_gap_and_leaves_it():
    """compare_lora_long.md is the report of its runs, one LoRA run with three times the schedule of the committed
    sweep and otherwise its settings, and what the prose says of it holds: above the 3-seed mean of the same row, below
    full fine-tuning's, stopped by the rule before its cap."""
    results = REPO / "paper" / "results"
    long, full = (json.loads((results / name).read_text()) for name in ("compare_lora_long.json", "compare.json"))
    assert markdown(long) == (results / "compare_lora_long.md").read_text()
    assert long["settings"]["steps"] == 3 * full["settings"]["steps"]
    assert {k: v for k, v in long["settings"].items() if k not in ("steps", "sizes", "seeds", "models", "out", "tune",
                                                                  "cifar_seeds")} == \
        {k: v for k, v in full["settings"].items() if k not in ("steps", "sizes", "seeds", "models", "out", "tune",
                                                                "cifar_seeds")}
    assert long["chosen"]["vit-lora-qv4"] == full["chosen"]["vit-lora-qv4"]
    run = next(r for r in long["runs"] if r["model"] == "vit-lora-qv4")
    rows = full["models"]
    assert rows["vit-lora-qv4"]["accuracy"]["4000"]["mean"] < run["test_accuracy"] < \
        rows["vit-pretrained"]["accuracy"]["4000"]["mean"]
    assert run["steps"] < long["settings"]["steps"]


def test_the_default_profile_ran_within_its_half_hour_and_its_vit_learned():
    """compare_default.md is the report of `python -m paper.compare` with nothing given, measured on 2 cores: under 30
    minutes, and its ViT from scratch at n = 4,000 at 90% or more on the test digits."""
    results = REPO / "paper" / "results"
    default = json.loads((results / "compare_default.json").read_text())
    assert markdown(default) == (results / "compare_default.md").read_text()
    assert shlex.split(default["command"])[3:5] in ([], ["--out", default["settings"]["out"]])   # nothing else given
    assert len(shlex.split(default["command"])) in (3, 5) and default["seconds"] < 30 * 60
    assert {k: default["settings"][k] for k in ("sizes", "seeds", "models")} == {
        "sizes": list(compare.DEFAULTS["sizes"]), "seeds": compare.DEFAULTS["seeds"],
        "models": list(compare.DEFAULTS["models"])}
    assert all(r["test_accuracy"] >= 0.90 for r in default["runs"] if r["model"] == "vit" and r["size"] == 4000)


def test_the_remedies_table_is_the_report_of_its_runs():
    """paper/results/remedies.md is the report of its runs (committed_report): the six rows the issue asks for at
    n = 250, 1,000 and 4,000 over 3 seeds, the committed choice of hyper-parameters, and each share of the gap
    recomputed here from the means of the three rows it relates; its runs of the ViT, the ResNet-18 and the
    hard-distilled ViT at n = 4,000 are the committed comparison's, trained again, equal."""
    remedies = committed_report("remedies")
    compare = json.loads((REPO / "paper" / "results" / "compare.json").read_text())
    s, models = remedies["settings"], remedies["models"]
    assert (set(s["models"]), s["sizes"], s["seeds"]) == (
        {"vit", "cnn", "vit-hard", "vit-hybrid", "vit-mpp", "vit-spt-lsa"}, [250, 1000, 4000], 3)
    assert not s["tune"] and remedies["chosen"] == compare["chosen"]
    pairs = shared_runs(remedies, compare)
    assert len(pairs) == 3 * 3 and all(x == y for x, y in pairs)          # models × seeds at n = 4,000, equal
    acc = lambda name, n: models[name]["accuracy"][n]["mean"]                  # noqa: E731
    for name, by_size in remedies["gap_shares"].items():
        for n, share in by_size.items():
            assert share == pytest.approx((acc(name, n) - acc("vit", n)) / (acc("cnn", n) - acc("vit", n)), abs=1e-12)


def test_the_six_sizes_table_is_the_report_of_its_runs_and_shares_theirs_with_the_others():
    """paper/results/sizes.md is the report of its runs (committed_report): the ViT, the larger ViT and the ResNet-18
    at six sizes from 100 to 4,000 (the ViT without E_pos and, one seed, the CIFAR-stem ResNet at the largest), 3
    seeds each; the runs at the sizes the comparison, the remedies table and the larger ViT's grid also trained are
    theirs, trained again, equal run for run."""
    sizes = committed_report("sizes")
    s = sizes["settings"]
    assert (set(s["models"]), s["sizes"], s["seeds"], s["cifar_seeds"]) == (
        {"vit", "vit-large", "cnn", "cnn-cifar", "vit-no-pos"}, [100, 250, 630, 1000, 1600, 4000], 3, 1)
    # the runs both trained: models × sizes × seeds
    for other, count in (("compare", 2 * 2 * 3), ("remedies", 2 * 3 * 3), ("large_grid", 1)):
        pairs = shared_runs(sizes, json.loads((REPO / "paper" / "results" / f"{other}.json").read_text()))
        assert len(pairs) == count and all(x == y for x, y in pairs)


# The README sections that state measured results, by their markers, and the tables their numbers must come from
# (the comparison's prose also cites the longer LoRA schedule's, its evidence that LoRA's gap is not the budget's).
SECTIONS = {"compare results": ("compare.md", "compare_lora_long.md"), "remedies results": ("remedies.md",),
            "sizes results": ("sizes.md",)}


def sections(readme: Path, marker: str) -> str:
    """The prose between a README's `marker` markers (there may be several), joined."""
    found = re.findall(rf"<!-- {marker} -->(.*?)<!-- /{marker} -->", readme.read_text(), re.S)
    assert found, (readme, marker)
    return "\n".join(found)


READMES = (REPO / "README.md", REPO / "paper" / "training" / "README.md")


@pytest.mark.parametrize("marker", SECTIONS)
def test_every_number_the_readmes_state_of_a_result_is_in_its_committed_tables(marker):
    """The prose between the result markers of README.md and paper/training/README.md types no number of its own:
    each (a percentage, a point difference, a share, a count of epochs) is one the section's tables print."""
    table = "".join((REPO / "paper" / "results" / name).read_text() for name in SECTIONS[marker])
    printed = set(re.findall(r"\d[\d,]*\.?\d*", table))
    for readme in READMES:
        for number in typed_figures(sections(readme, marker)):
            assert number in printed, f"{readme}: {number} is in no table of {SECTIONS[marker]}"


@pytest.mark.parametrize("marker", SECTIONS)
def test_every_verdict_the_readmes_state_is_the_one_the_rule_gives(marker):
    """Each difference the prose states with its verdict ("+1.3 points, ahead") is a row of its table's differences
    with that verdict: the relations are held exactly, not only the numbers."""
    table = (REPO / "paper" / "results" / SECTIONS[marker][0]).read_text()
    rows = set(re.findall(r"\| ([+-]\d+\.\d) \| (ahead|behind|not separated) \|", table))
    stated = [(d.replace("−", "-"), v) for readme in READMES
              for d, v in re.findall(r"([+−-]\d+\.\d) points?, (ahead|behind|not separated)", sections(readme, marker))]
    assert stated and set(stated) <= rows, set(stated) - rows


def test_a_difference_is_called_only_when_it_clears_the_seeds_spread():
    row = lambda mean, std, n=3: {"mean": mean, "std": std, "n": n}          # noqa: E731
    assert separated(row(0.9, 0.01), row(0.8, 0.02)) and separated(row(0.8, 0.02), row(0.9, 0.01))
    assert not separated(row(0.9, 0.05), row(0.8, 0.06))
    assert not separated(row(0.9, 0.0, 1), row(0.1, 0.0, 1))                  # one seed calls nothing


def test_the_pre_trained_vit_ends_as_the_vit_it_is_compared_with():
    """Pre-trained at 16×16 with the MLP head, then given a linear head and a 7×7 E_pos: the architecture of `vit`,
    so the two differ only in their starting weights (and share parameter count, multiply-adds and speed)."""
    from paper.training.stages import finetuning_model, pretraining_model

    params, cfg = pretraining_model(comparison.MNIST_MODEL, comparison.PRETRAIN, 1, 10, 0)
    assert cfg.image_size == (16, 16) and cfg.representation_size == 64
    params, cfg = finetuning_model(params, cfg, comparison.RECIPE, 10)
    assert cfg == comparison.VITS["vit-pretrained"] == comparison.VITS["vit"]
    vit.check_params(params, vit.param_shapes(comparison.VITS["vit"]))


@pytest.mark.slow
def test_distilled_vits_learn_from_the_cnn_of_their_own_subset_and_seed(tmp_path, hundred_test_digits, monkeypatch):
    """--models cnn vit-hard vit-soft: each student is a distilled ViT (the two heads trained, the fused prediction
    tested) whose teacher is the CNN checkpoint of its own size and seed, trained first; nothing else runs."""
    teachers, load_teacher = [], comparison.load_teacher
    monkeypatch.setattr(comparison, "load_teacher", lambda path: teachers.append(path) or load_teacher(path))
    result = compare.main([*SMALL, "--models", "cnn", "vit-hard", "vit-soft", "--seeds", "2", "--out",
                           str(tmp_path)])
    assert set(result["models"]) == {"cnn", "vit-hard", "vit-soft"} and result["pretraining"] is None
    checkpoints = tmp_path / "checkpoints"
    assert sorted(teachers) == sorted(str(checkpoints / f"cnn_n{n}_seed{seed}.pt")
                                      for n in (20, 40) for seed in (0, 1) for _ in range(2))
    distilled = comparison.VITS["vit-hard"]
    assert distilled.distilled and dataclasses.replace(distilled, distilled=False) == comparison.VITS["vit"]
    d, k = distilled.dim, distilled.num_classes
    plain = sum(p.numel() for p in vit.init_params(comparison.VITS["vit"]).values())
    assert result["models"]["vit-soft"]["params"] == plain + d + d + d * k + k   # the token, its E_pos row, its head
    state = load_checkpoint(str(checkpoints / "vit-soft_n40_seed0.pt"))
    assert "head_dist.weight" in state["params"] and result["models"]["vit-hard"]["probes"] is not None
    assert "| ViT distilled from the ResNet-18, hard |" in (tmp_path / "compare.md").read_text()



@pytest.mark.slow
def test_the_remedies_of_small_data_run_and_report_the_share_of_the_gap_they_close(tmp_path, hundred_test_digits,
                                                                                   monkeypatch):
    """--models vit cnn and the three remedies (vit-hard, already tested, aside): the hybrid and SPT + LSA trained from
    scratch by the ViT's hyper-parameters, vit-mpp fine-tuned (by vit-pretrained's) from the one masked patch
    prediction of its seed, run first on the 4,000 training images and saved; each a row of compare.json and
    compare.md, with its share of the gap."""
    loaded, load = [], comparison.load_checkpoint
    monkeypatch.setattr(comparison, "load_checkpoint", lambda path: loaded.append(path) or load(path))
    compare.main([*SMALL, "--sizes", "20", "--seeds", "1", "--models", "vit", "cnn", *comparison.REMEDIES, "--out",
                  str(tmp_path)])
    saved = json.loads((tmp_path / "compare.json").read_text())
    assert set(saved["models"]) == {"vit", "cnn", *comparison.REMEDIES} and saved["pretraining"] is None
    checkpoint = tmp_path / "checkpoints" / "mpp_pretrained_seed0.pt"
    assert loaded == [str(checkpoint)]
    state = load_checkpoint(str(checkpoint))
    assert "mask_token" in state["params"] and state["mpp"]["target"] == "mean_colour"
    assert not any(k.startswith("head.") for k in state["params"])            # trained without labels
    (mpp,) = [r for r in saved["runs"] if r["model"] == "mpp-pretraining"]
    assert mpp["size"] == comparison.TRAIN_IMAGES and mpp["steps"] == 2 and math.isfinite(mpp["test_loss"])
    assert saved["mpp_pretraining"]["steps"] == 2 and saved["recipes"]["mpp pre-training"]["stage"] == "mpp"
    for r in saved["runs"]:
        if r["model"] in comparison.REMEDIES:
            assert r["hp"] == saved["chosen"][comparison.TUNED_AS[r["model"]]] and 1 <= r["steps"] <= 3
    assert comparison.TUNED_AS["vit-hybrid"] == comparison.TUNED_AS["vit-spt-lsa"] == "vit"
    assert comparison.TUNED_AS["vit-mpp"] == "vit-pretrained"
    models = saved["models"]
    assert models["vit-mpp"]["params"] == models["vit"]["params"]
    assert models["vit-hybrid"]["multiply_adds"] > models["vit"]["multiply_adds"]     # its ResNet
    vit_acc, cnn_acc = models["vit"]["accuracy"]["20"]["mean"], models["cnn"]["accuracy"]["20"]["mean"]
    table = (tmp_path / "compare.md").read_text()
    assert "The share of the ViT-to-ResNet gap" in table and "The masked patch prediction of vit-mpp" in table
    for name in comparison.REMEDIES:
        share = (models[name]["accuracy"]["20"]["mean"] - vit_acc) / (cnn_acc - vit_acc) if cnn_acc > vit_acc \
            else None
        assert saved["gap_shares"][name]["20"] == share
        cell = "—" if share is None else f"{share:+.2f}"
        assert f"| {comparison.LABELS[name]} | {cell} |" in table


def test_the_share_of_the_gap_is_the_remedys_gain_over_the_vits_deficit():
    """gap_shares on made-up seeds: (acc_model − acc_vit) / (acc_cnn − acc_vit) of the means, negative for a remedy
    worse than the ViT, above 1 for one past the ResNet, None where the ResNet is not ahead; only the sizes all three
    rows have, only the remedy rows."""
    from paper.reports.compare_summary import gap_shares
    from paper.reports.statistics import mean_std

    def row(**by_size):
        return {"accuracy": {n: mean_std(list(seeds)) for n, seeds in by_size.items()}}

    models = {"vit": row(a=(0.70, 0.72), b=(0.90, 0.90), c=(0.5,)), "cnn": row(a=(0.90, 0.92), b=(0.88, 0.88), c=(0.9,)),
              "vit-hybrid": row(a=(0.85, 0.87), b=(0.95, 0.95)), "vit-mpp": row(a=(0.60, 0.62), b=(0.8, 0.8)),
              "vit-spt-lsa": row(a=(0.95, 0.97), d=(0.9,)), "vit-avg": row(a=(0.9, 0.9))}
    shares = gap_shares(models)
    assert set(shares) == {"vit-hybrid", "vit-mpp", "vit-spt-lsa"}
    assert shares["vit-hybrid"] == {"a": pytest.approx(0.75), "b": None}
    assert shares["vit-mpp"]["a"] == pytest.approx(-0.5) and shares["vit-spt-lsa"] == {"a": pytest.approx(1.25)}
    assert gap_shares({"vit": models["vit"], "vit-hybrid": models["vit-hybrid"]}) == {}


def test_the_remedies_are_the_vit_changed_in_one_respect_and_counted_with_their_resnet():
    """The hybrid is MNIST_HYBRID, SPT + LSA the ViT with those two changes, and vit-mpp ends as the ViT (the MPP
    head and [mask] embedding dropped, a linear head, a 7×7 E_pos); the multiply-adds the report prints count a
    hybrid's ResNet (as measure.vit_forward_flops does) and SPT's five-channel patches."""
    from paper.reports.compare_summary import multiply_adds
    from paper.reports.measure import vit_forward_flops
    from paper.training.mpp import encoder_params, mpp_model
    from paper.training.recipes import MNIST_HYBRID
    from paper.training.stages import finetuning_model

    assert comparison.VITS["vit-hybrid"] == MNIST_HYBRID and MNIST_HYBRID.backbone is not None
    assert comparison.VITS["vit-spt-lsa"] == dataclasses.replace(comparison.VITS["vit"], patch_embed="spt",
                                                                 attention="lsa")
    params, cfg = mpp_model(comparison.MNIST_MODEL, comparison.MPP_PRETRAIN, 1, comparison.MPP, 0)
    assert cfg.image_size == (16, 16) and "mask_token" in params
    params, cfg = finetuning_model(encoder_params(params), cfg, comparison.RECIPE, 10)
    assert cfg == comparison.VITS["vit-mpp"] == comparison.VITS["vit"]
    vit.check_params(params, vit.param_shapes(cfg))
    counted = {}
    for name in ("vit", "vit-hybrid", "vit-spt-lsa"):
        model = comparison.build(name, 0)
        counted[name] = multiply_adds(model.eval(), model.cfg)
    assert counted["vit"] == vit_forward_flops(comparison.VITS["vit"]) / 2
    assert counted["vit-hybrid"] == vit_forward_flops(MNIST_HYBRID) / 2 > counted["vit"]
    cfg = comparison.VITS["vit"]                     # SPT embeds the image and its 4 shifted copies: 5 channels
    assert counted["vit-spt-lsa"] == counted["vit"] + cfg.num_patches * 4 * cfg.patch_size ** 2 * cfg.dim
    assert counted["vit-spt-lsa"] == vit_forward_flops(comparison.VITS["vit-spt-lsa"]) / 2
    assert comparison.prerequisite(comparison.Job("vit-mpp", 250, 2)) == comparison.Job("mpp-pretraining", 0, 2)


@pytest.mark.parametrize("model", list(comparison.PARTIAL))
def test_a_vit_fine_tuned_in_part_trains_its_adapters_and_head_alone(model):
    """vit-head and the LoRA rows: a training step moves the head (and the adapters), never a weight of the base;
    the parameters counted are the base's and the trained ones."""
    torch.manual_seed(0)
    module = comparison.build(model, 0)
    base = {k: v.clone() for k, v in module.base.items()}
    head = module.as_dict()["head.weight"].detach().clone()
    lora = comparison.PARTIAL[model]
    assert set(module.as_dict()) - {"head.weight", "head.bias"} == (
        set() if lora is None else set(adapter_shapes(comparison.VITS[model], lora)))
    optimizer = torch.optim.AdamW(module.parameters(), lr=1e-2)
    module.train()(torch.rand(4, 1, 28, 28)).logsumexp(-1).sum().backward()
    optimizer.step()
    assert all(torch.equal(module.base[k], v) for k, v in base.items())
    assert not torch.equal(module.as_dict()["head.weight"], head)
    total, trained = comparison.parameter_counts(model, module)
    assert trained == sum(p.numel() for p in module.parameters())
    whole = sum(t.numel() for t in vit.init_params(comparison.VITS["vit"]).values())      # the ViT, its head included
    assert total == trained + sum(v.numel() for v in base.values()) == whole + trained - 650


def test_a_record_trained_with_other_hyper_parameters_is_trained_again(tmp_path):
    """A rerun reads a finished run's record only if its hyper-parameters are still the chosen ones: a grid grown or
    rerun since may have chosen others, and the run then trains again."""
    s = compare.settings_of(compare.parse_args(["--models", "vit", "--out", str(tmp_path)]))
    job, hp = comparison.Job("vit", 100, 0), comparison.CHOSEN["vit"]
    os.makedirs(tmp_path / "runs")
    Path(job.record_path(s.out)).write_text(json.dumps({"model": "vit", "hp": dataclasses.asdict(hp)}))
    assert comparison.read_record(job, s, hp)["model"] == "vit"
    assert comparison.read_record(job, s, dataclasses.replace(hp, lr=hp.lr / 2)) is None
    assert comparison.read_record(comparison.Job("vit", 250, 0), s, hp) is None        # never ran
