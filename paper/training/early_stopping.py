"""Early stopping: a validation split carved from the training images (never the test images) scored at every
evaluation; the stage stops once its accuracy has not improved for `patience` evaluations, but not before step
`earliest`, and the model ends with the weights of its best validation accuracy (the earliest of equals), which is
what is tested. `earliest` keeps a run from stopping on a plateau of the schedule's high-learning-rate phase, where
validation accuracy swings (a ResNet-18 between 87% and 98% from one evaluation to the next) and has not converged."""
import dataclasses

import torch
from torch.utils.data import Dataset

from paper.training.data import EvalView


@dataclasses.dataclass(frozen=True)
class EarlyStopping:
    validation: Dataset    # held out from the training images; the training stream never sees it
    patience: int          # evaluations without a better validation accuracy before the stage stops
    earliest: int = 0      # the first step at which it may stop

    def __post_init__(self):
        if self.patience < 1:
            raise ValueError(f"patience: expected a positive number of evaluations, got {self.patience}")
        if self.earliest < 0:
            raise ValueError(f"earliest: expected a step from 0 on, got {self.earliest}")


class BestWeights:
    """The best validation accuracy so far, the step and a copy of the weights (BatchNorm's statistics too) that
    reached it."""

    def __init__(self, stopping: EarlyStopping, image_size: int):
        self.view, self.patience, self.earliest = EvalView(stopping.validation, image_size), stopping.patience, \
            stopping.earliest
        self.accuracy, self.step, self.weights, self.waited = -1.0, 0, None, 0

    def observe(self, model, step: int, accuracy: float) -> None:
        """One evaluation: keep the weights if they beat every earlier evaluation."""
        if accuracy > self.accuracy:
            self.accuracy, self.step, self.waited = accuracy, step, 0
            self.weights = {k: v.detach().clone() for k, v in model.as_dict().items()}
        else:
            self.waited += 1

    def patience_spent(self, step: int) -> bool:
        return self.waited >= self.patience and step >= self.earliest

    def restore(self, model) -> dict:
        """Put the best weights back into `model`. -> {"step", "val_accuracy"} of the best evaluation."""
        with torch.no_grad():
            for k, v in model.as_dict().items():
                v.copy_(self.weights[k])
        return {"step": self.step, "val_accuracy": self.accuracy}
