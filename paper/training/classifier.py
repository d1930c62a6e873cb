"""Any checkpoint `paper.train` or `paper.compare` wrote, ViT or CNN, as a frozen function images -> logits.

    teacher = load_classifier("runs/compare/checkpoints/cnn_n4000_seed0.pt")
    logits = teacher(images)        # images (B, C, H, W), pixels in [0, 1], any H and W -> (B, K)

The checkpoint names its model ("vit" or "resnet18"), holds its config and records the evaluation preprocessing
its inputs had (resize, then (x - mean) / std; `paper.training.data.eval_preprocessing`), so nothing is guessed: the model is
rebuilt from the file, its weights are frozen, it is in evaluation mode (BatchNorm's running statistics, no
dropout), and every call resizes and normalises the images exactly as its test images were. It is the one way a
checkpoint becomes a model to call: DeiT's teacher (`paper.training.distillation.load_teacher`) is one of these.
"""
import torch
import torch.nn as nn

import lowlevel as vit
from paper.models.cnn import ResNetClassifier
from paper.models.explicit_params import ExplicitParams
from paper.models.finite import require_finite
from paper.training.data import preprocess
from paper.training.state import checkpoint_config, load_checkpoint, require_whole_model


class Classifier(nn.Module):
    """A trained model with its preprocessing: images (B, C, H, W) in [0, 1] -> logits (B, K)."""

    def __init__(self, model: nn.Module, preprocessing: dict):
        super().__init__()
        self.model, self.preprocessing = model.eval().requires_grad_(False), preprocessing

    def train(self, mode: bool = True):
        return self   # frozen: a teacher stays in evaluation mode inside a student's training loop

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(preprocess(images, self.preprocessing))


def load_classifier(path, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> Classifier:
    """A checkpoint of ours (a ViT's, a distilled one's or the ResNet's, any stage) -> its frozen classifier, on
    `device` in `dtype`. A LoRA checkpoint holds only adapters and a head, not a model: it is refused by name."""
    state = load_checkpoint(str(path))
    require_whole_model(state, path)
    cfg = checkpoint_config(state)
    require_finite(state["params"], f"checkpoint: {path}")
    if isinstance(cfg, vit.ViTConfig):
        model = ExplicitParams(state["params"], cfg)
    else:
        model = ResNetClassifier(cfg)
        model.net.load_state_dict(state["params"])
    return Classifier(model, state["preprocessing"]).to(device, dtype)
