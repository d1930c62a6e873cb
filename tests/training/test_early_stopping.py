"""Early stopping in the training loop: the stage ends `patience` evaluations after its best validation accuracy,
the model ends with the weights it had at that evaluation (BatchNorm's statistics too), and the log says so. The
validation accuracies are scripted, so the rule is checked against a plain reading of it."""
import pytest
import torch

import paper.training.loop as loop
from paper.models.cnn import ResNetClassifier, ResNetConfig
from paper.training import comparison
from paper.training.data import ImageArray
from paper.training.early_stopping import EarlyStopping
from paper.training.loop import Run, train_stage
from paper.training.processes import Processes
from paper.training.stages import with_steps


def digits28(n: int, seed: int) -> ImageArray:
    g = torch.Generator().manual_seed(seed)
    return ImageArray(torch.randint(0, 256, (n, 1, 28, 28), generator=g, dtype=torch.uint8), torch.arange(n) % 10)


def scripted_run(model, script: list[float], patience: int, every: int, steps: int, tmp_path, monkeypatch,
                 earliest: int = 0):
    """Train with validation accuracies read from `script`; -> (log, the weights seen at each validation)."""
    validation, seen, real = digits28(10, 1), [], loop.evaluate

    def evaluate(model, data, procs, dtype, batch_size=512, **score):
        if data.data is not validation:
            return real(model, data, procs, dtype, batch_size, **score)
        seen.append({k: v.detach().clone() for k, v in model.as_dict().items()})
        return script[len(seen) - 1]

    monkeypatch.setattr(loop, "evaluate", evaluate)
    run = Run(out=str(tmp_path), procs=Processes(), progress=False, save=False, eval_every=every,
              stopping=EarlyStopping(validation, patience, earliest))
    log = train_stage("stage", model, with_steps(comparison.RECIPE, steps, 8), digits28(16, 0), digits28(10, 2), run)
    return log, seen


@pytest.mark.parametrize("model, script, patience, earliest, stop, best", [
    ("cnn", [0.1, 0.3, 0.2, 0.3, 0.25, 0.9], 3, 0, 5, 2),     # equal is not better: 3 evaluations after the 2nd
    ("vit", [0.1, 0.2, 0.3, 0.4, 0.5, 0.6], 2, 0, 6, 6),      # never stops early: the cap, the last weights
    ("vit", [0.5, 0.6, 0.4, 0.1, 0.1, 0.1], 1, 0, 3, 2),
    ("vit", [0.5, 0.6, 0.4, 0.1, 0.1, 0.1], 1, 8, 4, 2),      # not before step 8, the 4th evaluation
    ("vit", [0.5, 0.6, 0.4, 0.7, 0.1, 0.1], 1, 8, 5, 4),      # a better one at step 8: patience anew
])
def test_the_stage_stops_patience_evaluations_after_its_best_and_keeps_its_best_weights(
        model, script, patience, earliest, stop, best, tmp_path, monkeypatch):
    model = ResNetClassifier(ResNetConfig(), 0) if model == "cnn" else comparison.build(model, 0)
    log, seen = scripted_run(model, script, patience, 2, 12, tmp_path, monkeypatch, earliest)
    assert len(seen) == stop and log["stopped_at"] == 2 * stop and len(log["train"]) == 2 * stop
    assert log["best"] == {"step": 2 * best, "val_accuracy": script[best - 1]}
    assert [r["val_accuracy"] for r in log["eval"]] == script[:stop]
    for k, v in model.as_dict().items():                  # running statistics and counters included
        assert torch.equal(v, seen[best - 1][k]), k
    assert any(not torch.equal(seen[best - 1][k], seen[-1][k]) for k in seen[-1]) or best == stop


def test_each_evaluation_logs_the_mean_training_loss_of_its_period(tmp_path, monkeypatch):
    log, _ = scripted_run(comparison.build("vit", 0), [0.1] * 9, 9, 3, 9, tmp_path, monkeypatch)
    losses = [r["loss"] for r in log["train"]]
    assert [r["train_loss"] for r in log["eval"]] == pytest.approx([sum(losses[i:i + 3]) / 3 for i in (0, 3, 6)],
                                                                   rel=1e-12)


def test_early_stopping_refuses_to_resume_and_a_patience_below_one():
    with pytest.raises(ValueError, match="patience: expected a positive number of evaluations, got 0"):
        EarlyStopping(digits28(10, 0), 0)
    with pytest.raises(ValueError, match="earliest: expected a step from 0 on, got -1"):
        EarlyStopping(digits28(10, 0), 1, -1)
    run = Run(out="unused", procs=Processes(), resume=True, stopping=EarlyStopping(digits28(10, 0), 2))
    with pytest.raises(ValueError, match="resume: expected no early stopping"):
        train_stage("stage", comparison.build("vit", 0), with_steps(comparison.RECIPE, 2, 8), digits28(16, 0),
                    digits28(10, 0), run)
