"""The summary paper.compare reports of its runs: per model, what it is (parameters, multiply-adds of inference and of
a training step counted by torch.utils.flop_counter, inference images/s) and, over seeds, per size: its test
accuracy at convergence and how it converged (epochs, final training loss, training accuracy); its probes and its
training time; and the share of the ViT-to-ResNet gap each remedy closes."""
import dataclasses
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from paper.reports.statistics import mean_std
from paper.training.classifier import Classifier
from paper.training.comparison import LABELS, build, parameter_counts, test_images
from paper.training.data import eval_preprocessing

# The rows set against the gap between the ViT from scratch and the ResNet: the remedies of small data (the
# pre-training, DeiT's distillation, the hybrid, SPT + LSA, masked patch prediction).
GAP_ROWS = ("vit-pretrained", "vit-hard", "vit-soft", "vit-hybrid", "vit-spt-lsa", "vit-mpp")


def multiply_adds(model, cfg, training: bool = False) -> int:
    """Multiply-adds per image of the forward pass, or with `training` of a training step (forward and backward, the
    gradients of the weights and of the activations), as torch.utils.flop_counter counts them (its FLOPs are 2 per
    multiply-add of every matmul and convolution; normalisation, activations and pooling are not counted). A ViT that
    trains on the fast path is counted on its explicit path, the same function: the counter does not see into the
    fused attention kernel, and the fast path's last block skips work the model's definition does."""
    fast = getattr(model, "fast", None)
    if fast is not None:
        model.fast = False
    try:
        with FlopCounterMode(display=False) as counter:
            if training:                          # 2 images: BatchNorm trains on more than one value
                images = torch.zeros(2, cfg.in_channels, *cfg.image_size)
                logits = model.train()(images)
                (logits[0] if isinstance(logits, tuple) else logits).sum().backward()
                model.zero_grad(set_to_none=True)
            else:
                images = torch.zeros(1, cfg.in_channels, *cfg.image_size)
                with torch.no_grad():
                    model(images)
    finally:
        if fast is not None:
            model.fast = fast
    return counter.get_total_flops() // 2 // len(images)


def images_per_second(classify, images: torch.Tensor, repeats: int = 3) -> float:
    """Inference throughput over `images` in batches of 500, preprocessing included; the best of `repeats` passes."""
    best = float("inf")
    with torch.no_grad():
        for _ in range(repeats):
            start = time.perf_counter()
            for i in range(0, len(images), 500):
                classify(images[i:i + 500])
            best = min(best, time.perf_counter() - start)
    return len(images) / best


def gap_shares(models: dict) -> dict:
    """Per GAP_ROWS model and size that it, `vit` and `cnn` all have: the share of the ViT-to-ResNet gap it closes,
    (acc_model − acc_vit) / (acc_cnn − acc_vit), of the means over seeds; 1 closes it, 0 is the ViT's, a negative
    share falls behind the ViT, above 1 overtakes the ResNet. None where the ResNet is not ahead (no gap to close).
    `models`: name -> {"accuracy": {size: {"mean", …}}}, as `summarise` gives."""
    if "vit" not in models or "cnn" not in models:
        return {}
    vit, cnn, shares = models["vit"]["accuracy"], models["cnn"]["accuracy"], {}
    for name in (m for m in GAP_ROWS if m in models):
        accuracy = models[name]["accuracy"]
        shares[name] = {n: (accuracy[n]["mean"] - vit[n]["mean"]) / (cnn[n]["mean"] - vit[n]["mean"])
                        if cnn[n]["mean"] > vit[n]["mean"] else None
                        for n in accuracy if n in vit and n in cnn}
    return {name: by_size for name, by_size in shares.items() if by_size}


def summarise(results: list[dict], batch: int) -> dict:
    """Per model: what it is (parameters, multiply-adds, inference speed), and per size over seeds its test accuracy
    and convergence (epochs, final training loss, training accuracy), its probes, its time."""
    images, _ = test_images()
    models = {}
    for name in LABELS:
        runs = [r for r in results if r["model"] == name]
        if not runs:
            continue
        model = build(name, 0)   # the architecture: speed and counts do not depend on the weights
        training = multiply_adds(model, model.cfg, training=True) * batch          # per step
        counts = {"multiply_adds": multiply_adds(model.eval(), model.cfg), "training_multiply_adds": training}
        classify = Classifier(model, eval_preprocessing(model.cfg.image_size))              # frozen from here
        sizes = sorted({r["size"] for r in runs})

        def by_size(key: str, runs=runs, sizes=sizes) -> dict:
            return {str(n): mean_std([r[key] for r in runs if r["size"] == n]) for n in sizes}

        probed = [r["probes"] for r in runs if "probes" in r]
        models[name] = {
            "label": LABELS[name], "config": dataclasses.asdict(model.cfg),
            **dict(zip(("params", "trained_params"), parameter_counts(name, model), strict=True)), **counts,
            "inference_images_per_s": images_per_second(classify, images),
            "train_seconds": mean_std([r["train_seconds"] for r in runs]),
            "accuracy": by_size("test_accuracy"), "epochs": by_size("epochs"), "steps": by_size("steps"),
            "final_train_loss": by_size("final_train_loss"), "train_accuracy": by_size("train_accuracy"),
            "probes": {"shift": [mean_std([p["shift"][k] for p in probed]) for k in range(len(probed[0]["shift"]))],
                       "permuted": mean_std([p["permuted"] for p in probed])} if probed else None}
    pretraining = [r for r in results if r["model"] == "pretraining"]
    mpp = [r for r in results if r["model"] == "mpp-pretraining"]
    return {"models": models, "gap_shares": gap_shares(models), "mpp_pretraining": None if not mpp else {
        "images": mpp[0]["size"], "steps": mpp[0]["steps"], "epochs": mpp[0]["epochs"],
        "train_seconds": mean_std([r["train_seconds"] for r in mpp]),
        "final_train_loss": mean_std([r["final_train_loss"] for r in mpp]),
        "test_loss": mean_std([r["test_loss"] for r in mpp])}, "pretraining": None if not pretraining else {
        "images": pretraining[0]["size"], "train_seconds": mean_std([r["train_seconds"] for r in pretraining]),
        "epochs": mean_std([r["epochs"] for r in pretraining]),
        "val_accuracy": mean_std([r["val_accuracy"] for r in pretraining]),
        "mnist_accuracy_before_fine_tuning": mean_std([r["test_accuracy"] for r in pretraining])}}
