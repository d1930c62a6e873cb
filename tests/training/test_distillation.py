"""DeiT's distillation (Touvron et al. 2021): the losses against timm's TokenDistillationTask, lucidrains'
DistillWrapper and the official code's formula; the frozen teacher; Table 9's recipe with torchvision's transforms;
and `python -m paper.train --distill` end to end."""
import dataclasses
import hashlib
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.data.mixup import mixup_target
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.models.deit import VisionTransformerDistilled
from timm.task import TokenDistillationTask
from timm.task.distillation import DistillationTeacher
from torchvision.transforms import v2
from vit_pytorch.distill import DistillableViT, DistillWrapper

import lowlevel as vit
from paper.formats.timm import to_timm
from paper.models.cnn import ResNetClassifier, ResNetConfig
from paper.references.vit import timm_kwargs, timm_vit
from paper.train import main
from paper.training import distillation as kd
from paper.training import recipes
from paper.training.augment import MAGNITUDE_LEVELS, BatchMixing, ImageAugmentation, batch_mixing, image_augmentation
from paper.training.data import ImageArray, digits, resize, to_unit_interval
from paper.training.loop import Run, train_stage
from paper.training.processes import Processes
from paper.training.stages import train_vit
from paper.training.state import load_checkpoint
from tests.helpers import random_images, random_params

F64 = dict(rtol=0, atol=1e-10)   # float64: the same sums in another order
TEACHER = vit.ViTConfig(image_size=8, patch_size=4, in_channels=1, dim=16, depth=1, num_heads=2, mlp_dim=32,
                        num_classes=5)
STUDENT = dataclasses.replace(TEACHER, depth=2, distilled=True)


def logits(seed: int, batch: int = 6, classes: int = 5) -> torch.Tensor:
    return 3 * torch.randn(batch, classes, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# ---------------------------------------------------------------- the losses against their originals

@pytest.mark.parametrize("kind, lam, tau", [("soft", 0.1, 3.0), ("soft", 0.5, 1.0), ("hard", 0.5, 1.0),
                                            ("hard", 0.3, 1.0)])
def test_loss_and_gradients_equal_timms_token_distillation_task(kind, lam, tau):
    """timm's task runs its own VisionTransformerDistilled (holding our student's weights) and its own teacher
    (holding ours); its criterion is timm's LabelSmoothingCrossEntropy(0.1), its weights (1 − λ, λ)."""
    student, teacher = random_params(STUDENT, seed=1), random_params(TEACHER, seed=2, scale=0.5)
    images = random_images(STUDENT, 6, seed=3)
    labels = torch.randint(0, 5, (6,), generator=torch.Generator().manual_seed(4))

    model = VisionTransformerDistilled(**timm_kwargs(STUDENT)).double()
    model.load_state_dict(to_timm(student, STUDENT))
    model.pretrained_cfg = {"mean": IMAGENET_DEFAULT_MEAN, "std": IMAGENET_DEFAULT_STD}   # teacher's alike: no renorm
    their_teacher = timm_vit(TEACHER).double()
    their_teacher.load_state_dict(to_timm(teacher, TEACHER))
    task = TokenDistillationTask(model, DistillationTeacher(their_teacher, dtype=torch.float64),
                                 criterion=LabelSmoothingCrossEntropy(0.1), distill_type=kind, task_loss_weight=1 - lam,
                                 temperature=tau, dtype=torch.float64, verbose=False).train()
    theirs = task(images, labels)["loss"]
    theirs.backward()

    params = {k: v.requires_grad_(True) for k, v in student.items()}
    criterion = kd.DistillationCriterion(lambda x: vit.forward(teacher, x, TEACHER), kd.Distillation(kind, lam, tau),
                                         0.1)
    ours = criterion(vit.forward_heads(params, images, STUDENT, train=True), images, labels)
    ours.backward()
    torch.testing.assert_close(ours, theirs, **F64)
    their_grads = {name: p.grad for name, p in model.named_parameters()}
    for key, grad in to_timm({k: v.grad for k, v in params.items()}, STUDENT).items():
        torch.testing.assert_close(grad, their_grads[key], **F64, msg=key)


class FixedStudent(DistillableViT):
    """lucidrains' student, answering with given (class logits, distillation-token output) so that only
    DistillWrapper's loss is compared (its distillation token goes last and has no E_pos, FAMILY.md §1.1)."""

    def __init__(self, outputs):
        super().__init__(image_size=8, patch_size=4, num_classes=5, dim=8, depth=1, heads=1, mlp_dim=8)
        self.outputs = outputs

    def forward(self, img, distill_token=None):
        return self.outputs


@pytest.mark.parametrize("hard, alpha, temperature", [(False, 0.5, 1.0), (False, 0.1, 3.0), (True, 0.5, 1.0)])
def test_loss_and_gradients_equal_lucidrains_distill_wrapper(hard, alpha, temperature):
    class_logits, distillation_logits = logits(1).requires_grad_(True), logits(2).requires_grad_(True)
    teacher_logits, labels = logits(3), torch.randint(0, 5, (6,), generator=torch.Generator().manual_seed(5))
    wrapper = DistillWrapper(teacher=lambda img: teacher_logits, student=FixedStudent((class_logits,
                             distillation_logits)), temperature=temperature, alpha=alpha, hard=hard)
    wrapper.distill_mlp = nn.Identity()          # the student's second output is then the distillation logits
    theirs = wrapper(torch.zeros(6, 3, 8, 8), labels)
    their_grads = torch.autograd.grad(theirs, (class_logits, distillation_logits))
    ours = kd.distillation_loss(class_logits, distillation_logits, teacher_logits, labels,
                                kd.Distillation("hard" if hard else "soft", alpha, temperature))
    torch.testing.assert_close(ours, theirs, **F64)
    for a, b in zip(torch.autograd.grad(ours, (class_logits, distillation_logits)), their_grads, strict=True):
        torch.testing.assert_close(a, b, **F64)


def official_deit_loss(outputs, outputs_kd, teacher_outputs, labels, alpha, tau, kind, base_criterion):
    """facebookresearch/deit losses.py DistillationLoss.forward, as FAMILY.md §1.5 quotes it."""
    base_loss = base_criterion(outputs, labels)
    if kind == "soft":
        T = tau
        distillation = F.kl_div(F.log_softmax(outputs_kd / T, dim=1), F.log_softmax(teacher_outputs / T, dim=1),
                                reduction="sum", log_target=True) * (T * T) / outputs_kd.numel()
    else:
        distillation = F.cross_entropy(outputs_kd, teacher_outputs.argmax(dim=1))
    return base_loss * (1 - alpha) + distillation * alpha


@pytest.mark.parametrize("kind", ["soft", "hard"])
def test_numel_reduction_equals_the_official_code_and_is_k_times_smaller(kind):
    class_logits, distillation_logits, teacher_logits = logits(1, 8, 1000), logits(2, 8, 1000), logits(3, 8, 1000)
    labels = torch.arange(8) * 7
    theirs = official_deit_loss(class_logits, distillation_logits, teacher_logits, labels, 0.5, 3.0, kind,
                                LabelSmoothingCrossEntropy(0.1))
    ours = kd.distillation_loss(class_logits, distillation_logits, teacher_logits, labels,
                                kd.Distillation(kind, 0.5, 3.0, "numel"), label_smoothing=0.1)
    torch.testing.assert_close(ours, theirs, **F64)
    for tau in (1.0, 3.0):   # FAMILY.md §1.5: batchmean / numel = K, at τ = 1 and 3
        ratio = kd.soft_distillation_loss(distillation_logits, teacher_logits, tau) / \
            kd.soft_distillation_loss(distillation_logits, teacher_logits, tau, "numel")
        assert ratio.item() == pytest.approx(1000, rel=1e-12)


def test_paper_defaults_and_bad_settings():
    assert (kd.Distillation("hard").lam, kd.Distillation("soft").lam, kd.Distillation("soft").tau) == (0.5, 0.1, 3.0)
    with pytest.raises(ValueError, match="kind: expected one of .*got 'logit'"):
        kd.Distillation("logit")
    with pytest.raises(ValueError, match="reduction: expected one of .*got 'mean'"):
        kd.Distillation("soft", reduction="mean")
    with pytest.raises(ValueError, match=r"lam: expected a weight in \[0, 1\], got 1.5"):
        kd.Distillation("soft", 1.5)
    with pytest.raises(ValueError, match=r"teacher: expected logits of the student's shape \(6, 5\).* got \(6, 7\)"):
        kd.distillation_loss(logits(1), logits(2), logits(3, classes=7), torch.zeros(6, dtype=torch.long),
                             kd.Distillation("hard"))


def test_mixed_targets_are_smoothed_as_timms_mixup_smooths_them():
    """The official code smooths inside timm's Mixup (mixup_target) and uses SoftTargetCrossEntropy; we mix one-hot
    labels (as torchvision's MixUp does) and smooth in the loss. timm builds its targets in float32 (torch.full),
    ~6e-8 relative, hence 1e-7."""
    labels, lam = torch.tensor([0, 3, 1, 4, 2, 2]), 0.37
    mixed = lam * F.one_hot(labels, 5) + (1 - lam) * F.one_hot(labels.flip(0), 5)   # timm mixes with the flipped batch
    theirs = SoftTargetCrossEntropy()(logits(1), mixup_target(labels, 5, lam, smoothing=0.1).double())
    torch.testing.assert_close(kd.true_label_loss(logits(1), mixed.double(), 0.1), theirs, rtol=0, atol=1e-7)
    assert abs(kd.true_label_loss(logits(1), mixed.double(), 0.0) - theirs) > 1e-3     # the smoothing matters here


# ---------------------------------------------------------------- the recipe

def test_deit_preset_holds_table_9():
    """Typed from DeiT's Table 9 (DeiT-B column) and deit main.py, not from our code."""
    r = recipes.deit_recipe()
    assert r.batch_size == 1024 and r.base_lr == pytest.approx(0.0005 * 1024 / 512)
    assert (r.optimizer, r.decay, r.weight_decay, r.grad_clip, r.dropout) == ("adam", "cosine", 0.05, None, 0.0)
    steps_per_epoch = 1_281_167 // 1024
    assert (r.total_steps, r.warmup_steps) == (300 * steps_per_epoch, 5 * steps_per_epoch)
    assert (r.label_smoothing, r.drop_path, r.rand_augment, r.random_erasing) == (0.1, 0.1, (2, 9), 0.25)
    assert (r.mixup_alpha, r.cutmix_alpha, r.image_size) == (0.8, 1.0, 224)
    assert recipes.deit_recipe(256).base_lr == pytest.approx(0.0005 / 2)          # lr 5e-4 × batch/512


def test_preset_builds_torchvisions_transforms_at_timms_magnitude():
    r = recipes.deit_recipe()
    augment, mixing = image_augmentation(r), batch_mixing(r, 10)
    assert isinstance(augment.rand_augment, v2.RandAugment) and isinstance(augment.erasing, v2.RandomErasing)
    assert (augment.rand_augment.num_ops, augment.rand_augment.magnitude) == (2, 9)
    assert augment.erasing.p == 0.25 and augment.erasing.value is None     # torchvision's spelling of "random"
    # timm's magnitude 9 of 10 is 27° of rotation (auto_augment.py: level / 10 · 30); so is torchvision's level 9
    rotate, signed = augment.rand_augment._AUGMENTATION_SPACE["Rotate"]
    assert signed and rotate(MAGNITUDE_LEVELS, 8, 8)[9].item() == pytest.approx(27.0)
    assert isinstance(mixing.mix, v2.RandomChoice)
    assert [(type(t), t.alpha) for t in mixing.mix.transforms] == [(v2.MixUp, 0.8), (v2.CutMix, 1.0)]
    assert image_augmentation(recipes.DIGITS_PRETRAIN) is None and batch_mixing(recipes.DIGITS_PRETRAIN, 10) is None


def test_augmentations_are_a_function_of_the_seed_alone():
    image = torch.rand(1, 8, 8, generator=torch.Generator().manual_seed(0))
    augment = ImageAugmentation((2, 9), 0.5)
    views = [augment(image, torch.Generator().manual_seed(s)) for s in (1, 1, 2)]
    batch = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    torch.manual_seed(123)
    state = torch.get_rng_state()
    mixed = [BatchMixing(0.8, 1.0, 5)(batch, torch.arange(4), seed=s) for s in (7, 7)]
    assert torch.equal(torch.get_rng_state(), state)      # the global generator is left as it was
    assert torch.equal(views[0], views[1]) and not torch.equal(views[0], views[2])
    assert views[0].shape == image.shape and views[0].dtype == image.dtype
    assert torch.equal(mixed[0][1], mixed[1][1]) and mixed[0][1].shape == (4, 5)
    torch.testing.assert_close(mixed[0][1].sum(-1), torch.ones(4))      # mixed targets are distributions


# ---------------------------------------------------------------- the teacher and training

@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory):
    """A small ViT trained by paper.train, the main job in miniature: pretrain.pt at 8×8, finetune.pt at 12×12."""
    out = tmp_path_factory.mktemp("teacher")
    main(["--pretrain-steps", "6", "--finetune-steps", "4", "--pretrain-batch", "16", "--finetune-batch", "16",
          "--eval-every", "4", "--out", str(out)])
    return out


def test_teacher_is_frozen_and_sees_the_batch_at_its_own_resolution(teacher_run):
    """pretrain.pt has dropout 0.1: evaluation mode gives the same logits twice. The student's 12×12 batch reaches
    the 8×8 teacher resized as data.py resizes."""
    state = load_checkpoint(str(teacher_run / "pretrain.pt"))
    cfg = vit.ViTConfig(**state["config"])
    assert cfg.dropout == 0.1 and cfg.image_size == (8, 8)
    teacher = kd.load_teacher(teacher_run / "pretrain.pt", dtype=torch.float64)
    images = torch.rand(3, 1, 12, 12, dtype=torch.float64, requires_grad=True) * 2 - 1
    out = teacher(images)
    expected = vit.forward({k: v.double() for k, v in state["params"].items()},
                           torch.stack([resize(x, 8) for x in images.detach()]), cfg)
    torch.testing.assert_close(out, expected, **F64)
    assert torch.equal(teacher(images), out) and not out.requires_grad


def test_distillation_run_end_to_end_and_the_teacher_untouched(teacher_run, tmp_path):
    """`python -m paper.train --distill soft --teacher finetune.pt`: both stages train a distilled student against
    the 12×12 teacher (the 8×8 pre-training stage sees it through the resize)."""
    teacher_file = teacher_run / "finetune.pt"
    digest = hashlib.sha256(teacher_file.read_bytes()).hexdigest()
    log = main(["--pretrain-steps", "4", "--finetune-steps", "2", "--pretrain-batch", "16", "--finetune-batch", "16",
                "--eval-every", "2", "--out", str(tmp_path), "--distill", "soft", "--teacher", str(teacher_file),
                "--distill-reduction", "numel"])
    assert log["distillation"] == {"kind": "soft", "lam": 0.1, "tau": 3.0, "reduction": "numel"}
    assert all(math.isfinite(r["loss"]) for s in log["stages"].values() for r in s["train"])
    state = load_checkpoint(str(tmp_path / "finetune.pt"))
    cfg = vit.ViTConfig(**state["config"])
    assert cfg.distilled and cfg.image_size == (12, 12) and state["params"]["pos"].shape == (1, 2 + 36, 64)
    vit.check_params(state["params"], vit.param_shapes(cfg))
    assert hashlib.sha256(teacher_file.read_bytes()).hexdigest() == digest


def test_deit_recipe_with_a_teacher_lowers_the_distillation_loss(teacher_run, tmp_path):
    """Table 9's recipe (RandAugment, random erasing, Mixup/CutMix, label smoothing, stochastic depth), at the
    digits' scale: 8×8 images, 40 steps of 32, a learning rate for so short a run. The objective, measured on held-out
    images without augmentation, falls."""
    train, test, _ = digits()
    recipe = dataclasses.replace(recipes.deit_recipe(32), image_size=8, total_steps=40, warmup_steps=4, base_lr=3e-3,
                                 crop_area=(0.8, 1.0), flip=False)
    teacher = kd.load_teacher(teacher_run / "finetune.pt")
    distillation = kd.Distillation("hard")
    cfg = dataclasses.replace(recipes.DIGITS_MODEL, distilled=True, drop_path=recipe.drop_path)
    params = vit.init_params(cfg, torch.Generator().manual_seed(0))
    run = Run(out=str(tmp_path), procs=Processes(), distillation=distillation, teacher=teacher, eval_every=40)
    start = {k: v.clone() for k, v in params.items()}             # train_vit trains the tensors it is given
    trained, log = train_vit("pretrain", start, cfg, recipe, train, test, run)
    images = torch.stack([test[i][0] for i in range(200)]) * 2 - 1
    labels = torch.tensor([test[i][1] for i in range(200)])
    criterion = kd.DistillationCriterion(teacher, distillation, recipe.label_smoothing)
    with torch.no_grad():
        before, after = (criterion(vit.forward_heads(p, images, cfg), images, labels) for p in (params, trained))
    assert after < before - 0.1, (before, after)
    assert len(log["train"]) == 40 and log["eval"][-1]["step"] == 40


def test_distillation_settings_are_refused_by_name(teacher_run, tmp_path):
    with pytest.raises(ValueError, match="distill, teacher: expected both .* got --distill hard and --teacher None"):
        main(["--distill", "hard", "--out", str(tmp_path)])
    state = load_checkpoint(str(teacher_run / "pretrain.pt"))
    state["params"]["head.weight"], state["params"]["head.bias"] = torch.zeros(7, 64), torch.zeros(7)
    state["config"]["num_classes"] = 7
    torch.save(state, tmp_path / "seven.pt")
    with pytest.raises(ValueError, match="teacher: expected a model of the data's 10 classes, got 7"):
        main(["--distill", "hard", "--teacher", str(tmp_path / "seven.pt"), "--out", str(tmp_path)])


def test_a_resnet_checkpoint_is_a_teacher(tmp_path):
    """One teacher loader for every checkpoint of ours: a ResNet-18 trained by the one loop (as paper.compare trains
    it) and saved with its model name and preprocessing teaches a distilled ViT through `--distill --teacher`. The
    teacher sees the student's [-1, 1] batch as the ResNet's own 16×16 test images: resized, then (x - 0.5) / 0.5."""
    g = torch.Generator().manual_seed(0)
    data = ImageArray(torch.rand(32, 1, 8, 8, generator=g), torch.arange(32) % 10)
    recipe = dataclasses.replace(recipes.DIGITS_PRETRAIN, total_steps=2, warmup_steps=1, batch_size=16, image_size=16)
    cnn = ResNetClassifier(ResNetConfig(image_size=16), seed=0)
    train_stage("cnn", cnn, recipe, data, data, Run(out=str(tmp_path), procs=Processes(), progress=False))
    state = load_checkpoint(str(tmp_path / "cnn.pt"))
    assert state["model"] == "resnet18" and state["preprocessing"] == {"resize": [16, 16], "mean": 0.5, "std": 0.5}

    teacher = kd.load_teacher(tmp_path / "cnn.pt")
    images = to_unit_interval(torch.rand(3, 1, 8, 8, generator=g))            # the student's batch, in [-1, 1]
    with torch.no_grad():
        expected = cnn.eval()(torch.stack([to_unit_interval(resize((x + 1) / 2, 16)) for x in images]))
    torch.testing.assert_close(teacher(images), expected, rtol=1e-5, atol=1e-5)  # float32: (x + 1) / 2 · 2 - 1

    log = main(["--stages", "pretrain", "--pretrain-steps", "2", "--pretrain-batch", "16", "--out", str(tmp_path / "s"),
                "--distill", "hard", "--teacher", str(tmp_path / "cnn.pt")])
    assert len(log["stages"]["pretrain"]["train"]) == 2
    assert all(math.isfinite(r["loss"]) for r in log["stages"]["pretrain"]["train"])
    assert vit.ViTConfig(**load_checkpoint(str(tmp_path / "s" / "pretrain.pt"))["config"]).distilled
