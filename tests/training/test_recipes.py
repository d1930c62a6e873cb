"""The presets hold the paper's numbers (§4.1, Tables 3 and 4), typed in here from the paper, not from
our code, and the optimizers are built as the paper says."""
import pytest
import torch

from paper.training.loop import make_optimizer
from paper.training.recipes import DIGITS_FINETUNE, DIGITS_PRETRAIN, Recipe, finetune_recipe, pretrain_recipe


@pytest.mark.parametrize("dataset, model, epochs, lr, decay, wd, dropout, steps", [
    # Table 3; steps at batch 4096 = ⌈images · epochs / 4096⌉ (ImageNet 93,836; JFT 7 ep ≈ 517.8k; i21k 90 ep ≈ 307.6k)
    ("jft", "ViT-B/16", None, 8e-4, "linear", 0.1, 0.0, 517_823),
    ("jft", "ViT-L/32", None, 6e-4, "linear", 0.1, 0.0, 517_823),
    ("jft", "ViT-L/16", 7, 4e-4, "linear", 0.1, 0.0, 517_823),
    ("jft", "ViT-H/14", None, 3e-4, "linear", 0.1, 0.0, 1_035_645),
    ("imagenet21k", "ViT-B/32", None, 1e-3, "linear", 0.03, 0.1, 307_618),
    ("imagenet21k", "ViT-L/16", 30, 1e-3, "linear", 0.03, 0.1, 102_540),
    ("imagenet", "ViT-B/16", None, 3e-3, "cosine", 0.3, 0.1, 93_836),
    ("imagenet", "ViT-Ti/16", None, 3e-3, "cosine", 0.3, 0.1, 93_836),  # "ViT-∗"
])
def test_pretraining_presets_are_table_3(dataset, model, epochs, lr, decay, wd, dropout, steps):
    r = pretrain_recipe(dataset, model, epochs)
    assert (r.base_lr, r.decay, r.weight_decay, r.dropout, r.total_steps) == (lr, decay, wd, dropout, steps)
    assert (r.optimizer, r.batch_size, r.warmup_steps, r.image_size, r.stage) == ("adam", 4096, 10_000, 224, "pretrain")
    # "For ImageNet we found it beneficial to additionally apply gradient clipping at global norm 1."
    assert r.grad_clip == (1.0 if dataset == "imagenet" else None)


@pytest.mark.parametrize("dataset, steps, sweep", [
    ("imagenet", 20_000, (0.003, 0.01, 0.03, 0.06)),
    ("cifar100", 10_000, (0.001, 0.003, 0.01, 0.03)),
    ("cifar10", 10_000, (0.001, 0.003, 0.01, 0.03)),
    ("pets", 500, (0.001, 0.003, 0.01, 0.03)),
    ("flowers", 500, (0.001, 0.003, 0.01, 0.03)),
    ("vtab", 2_500, (0.01,)),
])
def test_finetuning_presets_are_table_4(dataset, steps, sweep):
    for lr in sweep:
        r = finetune_recipe(dataset, lr)
        assert (r.total_steps, r.lr_sweep, r.base_lr) == (steps, sweep, lr)
        assert (r.optimizer, r.decay, r.batch_size, r.weight_decay, r.grad_clip, r.image_size, r.stage) == \
            ("sgd", "cosine", 512, 0.0, 1.0, 384, "finetune")
    assert finetune_recipe("cifar10", 0.01).warmup_steps == 500  # the code's default, vision_transformer common.py


def test_optimizers_are_the_papers():
    w = [torch.nn.Parameter(torch.zeros(2))]
    adam = make_optimizer(w, pretrain_recipe("imagenet21k", "ViT-B/16"))
    assert isinstance(adam, torch.optim.AdamW)
    assert adam.param_groups[0]["betas"] == (0.9, 0.999) and adam.param_groups[0]["weight_decay"] == 0.03
    sgd = make_optimizer(w, finetune_recipe("imagenet", 0.01))
    assert type(sgd) is torch.optim.SGD
    assert (sgd.param_groups[0]["momentum"], sgd.param_groups[0]["weight_decay"], sgd.param_groups[0]["nesterov"]) \
        == (0.9, 0.0, False)


def test_the_main_jobs_presets_follow_the_papers_shape():
    assert (DIGITS_PRETRAIN.stage, DIGITS_PRETRAIN.optimizer, DIGITS_PRETRAIN.grad_clip) == ("pretrain", "adam", 1.0)
    assert (DIGITS_FINETUNE.stage, DIGITS_FINETUNE.optimizer, DIGITS_FINETUNE.decay) == ("finetune", "sgd", "cosine")
    assert DIGITS_FINETUNE.weight_decay == 0.0 and DIGITS_FINETUNE.image_size > DIGITS_PRETRAIN.image_size
    assert DIGITS_FINETUNE.base_lr in DIGITS_FINETUNE.lr_sweep


def test_bad_presets_are_refused():
    with pytest.raises(ValueError, match=r"dataset, model: expected a row of Table 3.*got \('jft', 'ViT-Ti/16'\)"):
        pretrain_recipe("jft", "ViT-Ti/16")
    with pytest.raises(ValueError, match=r"epochs: expected one of \(7, 14\) for ViT-L/16 on jft, got 90"):
        pretrain_recipe("jft", "ViT-L/16", 90)
    with pytest.raises(ValueError, match=r"base_lr: expected one of the paper's sweep .* for cifar10, got 0.1"):
        finetune_recipe("cifar10", 0.1)
    with pytest.raises(ValueError, match="dataset: expected one of"):
        finetune_recipe("mnist")
    with pytest.raises(ValueError, match="optimizer: expected one of .*got 'lamb'"):
        Recipe(stage="pretrain", optimizer="lamb", base_lr=1e-3, total_steps=10, warmup_steps=1, decay="cosine",
               batch_size=8)
    with pytest.raises(ValueError, match="warmup_steps: expected 0 <= warmup_steps < total_steps=10, got 10"):
        Recipe(stage="pretrain", optimizer="adam", base_lr=1e-3, total_steps=10, warmup_steps=10, decay="cosine",
               batch_size=8)
