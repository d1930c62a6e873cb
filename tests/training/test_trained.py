"""paper.training.trained: the model `python -m paper.train` leaves, trained on first use, read from runs/ afterwards, and
trained again when asked for with other arguments (another data set must never read a stale model)."""
import json

import torch

from lowlevel import ViTConfig
from paper.training import trained
from paper.training.state import load_checkpoint

QUICK = ("--data", "digits", "--stages", "pretrain", "--pretrain-steps", "2", "--pretrain-batch", "8")


def test_trained_on_first_use_then_kept_then_trained_again_for_other_arguments(tmp_path, monkeypatch):
    monkeypatch.setattr(trained, "RUNS", tmp_path)
    params, cfg = trained.trained_model("quick", QUICK)
    checkpoint = tmp_path / "quick" / "pretrain.pt"
    state = load_checkpoint(str(checkpoint))
    assert state["step"] == 2 and state["recipe"]["batch_size"] == 8          # the command's own run
    assert cfg == ViTConfig(**state["config"]) and all(torch.equal(params[k], state["params"][k]) for k in params)
    written = checkpoint.stat().st_mtime_ns

    again, _ = trained.trained_model("quick", QUICK)                           # read, not trained again
    assert checkpoint.stat().st_mtime_ns == written
    assert all(torch.equal(again[k], params[k]) for k in params)

    other = (*QUICK[:-1], "16")
    trained.trained_model("quick", other)
    assert json.loads((tmp_path / "quick" / trained.ARGUMENTS_FILE).read_text()) == list(other)
    assert load_checkpoint(str(checkpoint))["recipe"]["batch_size"] == 16


def test_a_checkpoint_an_older_paper_train_wrote_is_trained_again(tmp_path, monkeypatch):
    """runs/ outlives the code: a cached run whose checkpoint this code's reader refuses (here: written before
    checkpoints named their model) is trained again, not reported as an error to the learner."""
    monkeypatch.setattr(trained, "RUNS", tmp_path)
    trained.trained_model("quick", QUICK)
    checkpoint = tmp_path / "quick" / "pretrain.pt"
    old = {k: v for k, v in torch.load(checkpoint, weights_only=False).items() if k not in ("model", "preprocessing")}
    torch.save(old, checkpoint)
    trained.trained_model("quick", QUICK)
    assert load_checkpoint(str(checkpoint))["model"] == "vit"
