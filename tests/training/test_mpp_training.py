"""`python -m paper.train --stages mpp finetune`: masked patch prediction (§4.6) as a stage of the one loop. It learns
the digits' mean colours without their labels, its checkpoint holds the objective's tensors, fine-tuning starts from
its encoder, a killed run resumes to the same weights, and what cannot be run is refused by name."""
import dataclasses
import json
import math

import pytest
import torch

import lowlevel as vit
import paper.training.loop as train_module
from lowlevel.mpp import MPPConfig
from paper import cli
from paper.models.explicit_params import ExplicitParams
from paper.train import main
from paper.training.state import load_checkpoint
from tests.training.test_training import killed_then_resumed, one_thread  # noqa: F401 (autouse: one thread)

# The digits model (D = 64, patch 2: 16 patches at 8×8, 8 of them chosen) for a handful of steps.
TINY_MPP = ["--stages", "mpp", "finetune", "--mpp-steps", "6", "--finetune-steps", "4", "--mpp-batch", "16",
            "--finetune-batch", "16", "--eval-every", "3"]
FINETUNE = ["--stages", "finetune", "--finetune-steps", "4", "--finetune-batch", "16", "--eval-every", "3"]
OBJECTIVE = ("mask_token", "mpp_head.weight", "mpp_head.bias")


def test_the_mpp_stage_learns_the_mean_colours_without_labels(tmp_path, monkeypatch):
    """40 steps: the training loss falls well below ln 8 (a uniform guess over the 8 colours of one channel), and so
    does the held-out loss; the labels never reach the model or the loss (they are replaced by -1 here)."""
    real_step = train_module.train_step

    def unlabelled(model, optimizer, scheduler, images, labels, **kw):
        return real_step(model, optimizer, scheduler, images, torch.full_like(labels, -1), **kw)

    monkeypatch.setattr(train_module, "train_step", unlabelled)
    log = main(["--stages", "mpp", "--mpp-steps", "40", "--mpp-batch", "32", "--eval-every", "20",
                "--out", str(tmp_path)])
    losses = [r["loss"] for r in log["stages"]["mpp"]["train"]]
    assert losses[0] == pytest.approx(math.log(8), abs=1e-3)           # the zero head: every colour equally likely
    assert sum(losses[-10:]) / 10 < math.log(8) - 0.3
    assert log["test_loss"] < math.log(8) - 0.3 and "test_accuracy" not in log


def test_an_mpp_checkpoint_holds_the_mask_token_and_the_mpp_head(tmp_path):
    main(TINY_MPP + ["--stages", "mpp", "--out", str(tmp_path)])
    state = load_checkpoint(str(tmp_path / "mpp.pt"))
    assert state["mpp"] == state["identity"]["mpp"] == dataclasses.asdict(MPPConfig())
    params = state["params"]
    assert params["mask_token"].shape == (1, 1, 64)
    assert params["mpp_head.weight"].shape == (8, 64) and params["mpp_head.bias"].shape == (8,)  # 2^3 colours
    assert not any(k.startswith(("head.", "pre_logits.")) for k in params)                    # no class head
    assert state["config"]["num_classes"] == 0 and state["recipe"]["stage"] == "mpp"


def first_finetuning_params(monkeypatch, args) -> dict:
    """The params the fine-tuning stage of `main(args)` starts from, taken at its first step."""
    real_step, seen = train_module.train_step, {}

    def watched(model, *a, **kw):
        if isinstance(model, ExplicitParams) and not seen:
            seen.update({k: v.detach().clone() for k, v in model.as_dict().items()})
        return real_step(model, *a, **kw)

    monkeypatch.setattr(train_module, "train_step", watched)
    main(args)
    monkeypatch.setattr(train_module, "train_step", real_step)
    return seen


def test_fine_tuning_starts_from_the_mpp_encoder(tmp_path, monkeypatch):
    """In one run and with --init mpp.pt alike: every encoder tensor is the MPP stage's final one (E_pos interpolated
    to the new grid), the [mask] embedding and MPP head are gone, and the class head is a fresh zero layer."""
    started = first_finetuning_params(monkeypatch, TINY_MPP + ["--out", str(tmp_path / "run")])
    mpp = load_checkpoint(str(tmp_path / "run" / "mpp.pt"))["params"]
    for k, v in mpp.items():
        if k not in OBJECTIVE + ("pos",):
            assert torch.equal(started[k], v), k
    assert started["pos"].shape == (1, 37, 64) and torch.equal(started["pos"][:, :1], mpp["pos"][:, :1])
    assert not set(OBJECTIVE) & set(started)
    assert started["head.weight"].shape == (10, 64) and not started["head.weight"].any() and not started["head.bias"].any()
    from_init = first_finetuning_params(monkeypatch, FINETUNE + ["--init", str(tmp_path / "run" / "mpp.pt"),
                                                                 "--out", str(tmp_path / "init")])
    assert from_init.keys() == started.keys() and all(torch.equal(from_init[k], started[k]) for k in started)


def test_a_killed_mpp_run_resumed_ends_with_exactly_the_same_weights(tmp_path, monkeypatch, deterministic):
    """Killed at step 5 of the mpp stage (checkpoint at 4) or step 3 of fine-tuning: the resumed run corrupts the same
    patches (its generator seeded from the seed and the step) and ends with the uninterrupted run's weights."""
    args = TINY_MPP + ["--save-every", "2"]          # dropout 0.1 in the mpp stage: the RNG state must resume too
    main(args + ["--out", str(tmp_path / "whole")])
    for kill_at in (5, 9):
        out = tmp_path / f"killed_at_{kill_at}"
        killed_then_resumed(args, out, kill_at, monkeypatch)
        for stage in ("mpp", "finetune"):
            whole = load_checkpoint(str(tmp_path / "whole" / f"{stage}.pt"))["params"]
            resumed = load_checkpoint(str(out / f"{stage}.pt"))["params"]
            assert all(torch.equal(whole[k], resumed[k]) for k in whole), (kill_at, stage)
        saved = json.loads((tmp_path / "whole" / "log.json").read_text())["stages"]["mpp"]
        again = json.loads((out / "log.json").read_text())["stages"]["mpp"]
        assert [r["loss"] for r in saved["train"]] == [r["loss"] for r in again["train"]]
        assert [r["test_loss"] for r in saved["eval"]] == [r["test_loss"] for r in again["eval"]]


def test_resuming_with_another_objective_is_refused_naming_the_field(tmp_path):
    out = ["--out", str(tmp_path)]
    main(TINY_MPP + out)
    with pytest.raises(ValueError, match=r"(?s)this run's identity.*mpp: checkpoint \{'target': 'mean_colour'.*"
                                         r"this run \{'target': 'pixels'"):
        main(TINY_MPP + out + ["--resume", "--mpp-target", "pixels"])
    with pytest.raises(ValueError, match=r"(?s)this run's identity, got .*finetune.pt.*mpp: checkpoint \{.*this run None"):
        main(["--pretrain-steps", "6", "--pretrain-batch", "16", *FINETUNE[2:], *out, "--resume"])


def test_mpp_settings_that_cannot_run_are_refused_in_one_line(tmp_path, capsys):
    main(TINY_MPP + ["--stages", "mpp", "--out", str(tmp_path / "mpp")])
    main(["--stages", "pretrain", "--pretrain-steps", "2", "--pretrain-batch", "16", "--out", str(tmp_path / "pre")])
    init, supervised = str(tmp_path / "mpp" / "mpp.pt"), str(tmp_path / "pre" / "pretrain.pt")
    capsys.readouterr()                                                          # their progress bars
    for args, words in (
            (["--stages", "finetune", "--init", init, "--model", "mnist"],
             "model: expected a model of the --init checkpoint's patch size 2 (fine-tuning keeps it, §3.2), got "
             "--model mnist with patch size 4"),
            (["--stages", "finetune", "--init", supervised, "--model", "mnist"],      # a supervised one alike
             "model: expected a model of the --init checkpoint's patch size 2"),
            (["--mpp-target", "pixels"], "mpp: --mpp-target set up masked patch prediction, expected with --stages mpp"),
            (["--stages", "finetune", "--init", init, "--mpp-steps", "3"], "mpp: --mpp-steps set up masked patch"),
            (["--stages", "mpp", "pretrain", "finetune"], "stages: expected one pre-training stage, mpp "
                                                          "(self-supervised) or pretrain (supervised), got both"),
            (["--stages", "mpp", "--mpp-target", "downsized"], "mpp_target: expected a target the model's patches "
                                                               "allow, got --mpp-target downsized with patch size 2"),
            (["--stages", "mpp", "--mpp-lr", "0"], "mpp_lr: expected a positive learning rate, got 0.0")):
        with pytest.raises(SystemExit) as ended:
            cli.run(main, [*args, "--out", str(tmp_path / "run")])
        err = capsys.readouterr().err.strip().splitlines()
        assert ended.value.code == 2 and len(err) == 1 and words in err[0], err


def test_the_mpp_stage_steps_under_bf16_autocast(tmp_path):
    """The bool mask of the chosen patches survives the loop's float32 cast of bf16 outputs."""
    log = main(TINY_MPP + ["--stages", "mpp", "--bf16", "--out", str(tmp_path)])
    assert all(math.isfinite(r["loss"]) for r in log["stages"]["mpp"]["train"])


def test_the_checkpoint_records_the_objective_its_params_are_checked_against(tmp_path):
    """An mpp.pt whose recorded target disagrees with its head (8 colours, not 4 cells² × 8) is refused on load."""
    main(TINY_MPP + ["--stages", "mpp", "--out", str(tmp_path)])
    state = load_checkpoint(str(tmp_path / "mpp.pt"))
    torch.save({**state, "mpp": {**state["mpp"], "target": "pixels"}}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match=r"bad.pt: params \(against its recorded config\)"):
        load_checkpoint(str(tmp_path / "bad.pt"))
    assert vit.ViTConfig(**state["config"]).patch_size == 2
