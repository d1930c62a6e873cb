"""`python -m paper.train --lora R`: a LoRA step equals peft's on timm stepped by the same torch optimizer, only the
adapters and the new head are trained and saved, the checkpoint names its base by hash, and resume works as for full
fine-tuning (and refuses a changed base)."""
import hashlib
import shutil

import pytest
import torch

import lowlevel as vit
import paper.training.loop as train_module
from lowlevel.lora import LoRAConfig, adapter_shapes
from paper.train import main
from paper.training.loop import make_optimizer, train_step
from paper.training.lora import LoRAParams, LoRARun
from paper.training.processes import Processes
from paper.training.recipes import Recipe
from paper.training.schedules import Schedule
from paper.training.state import load_checkpoint, save_checkpoint
from tests.helpers import random_params
from tests.lowlevel.test_lora import TIMM_ALL, peft_model, trained_by_peft
from tests.training.test_training import TINY_MAIN, Killed, dies_at, one_thread  # noqa: F401 (autouse: one thread, tiny models)

CFG = vit.ViTConfig(image_size=8, patch_size=4, in_channels=1, dim=16, depth=2, num_heads=2, mlp_dim=32, num_classes=5)
FINETUNE = ["--stages", "finetune", "--finetune-steps", "4", "--finetune-batch", "16", "--eval-every", "2"]
HEAD = {"head.weight": (10, 64), "head.bias": (10,)}   # the digits model: D = 64, 10 classes


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """The miniature main job's pre-training stage, once: the base every LoRA run here adapts."""
    out = tmp_path_factory.mktemp("pretrained")
    main(TINY_MAIN + ["--stages", "pretrain", "--out", str(out)])
    return out / "pretrain.pt"


def test_a_lora_step_equals_peft_on_timm_stepped_by_the_same_optimizer():
    """Two steps of our loop (SGD momentum 0.9, global-norm clipping, 2 accumulated micro-batches) on the adapters and
    the head equal peft's LoRA on timm's model (qkv whole, proj, fc1, fc2; modules_to_save head) stepped by hand with
    the same torch optimizer over its trainable parameters. float64: 1e-10, as for full fine-tuning."""
    params = random_params(CFG, 0)
    lora = LoRAConfig(4, 8, ("qkv", "proj", "fc1", "fc2"))
    peft = peft_model("timm", CFG, params, r=4, lora_alpha=8, target_modules=TIMM_ALL, modules_to_save=["head"]).train()
    theirs = trained_by_peft(peft, CFG, "timm")                 # B ≠ 0: every adapter has a gradient from step 1
    trained = {k: p.detach().clone() for k, p in theirs.items()}
    ours = LoRAParams({**params, **{k: trained.pop(k) for k in ("head.weight", "head.bias")}}, trained, CFG, lora)
    assert set(ours.as_dict()) == set(theirs) == {*adapter_shapes(CFG, lora), "head.weight", "head.bias"}
    recipe = Recipe(stage="finetune", optimizer="sgd", base_lr=0.1, total_steps=10, warmup_steps=2, decay="cosine",
                    batch_size=8)
    optimizer = make_optimizer(ours.parameters(), recipe)
    assert {id(p) for group in optimizer.param_groups for p in group["params"]} == {id(p) for p in
                                                                                     ours.as_dict().values()}
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, Schedule(0.1, 10, 2, "cosine"))
    peft_trained = list(theirs.values())
    peft_opt = make_optimizer(peft_trained, recipe)
    peft_sched = torch.optim.lr_scheduler.LambdaLR(peft_opt, Schedule(0.1, 10, 2, "cosine"))
    frozen = {n: p.detach().clone() for n, p in peft.named_parameters() if not p.requires_grad}
    start = {k: p.detach().clone() for k, p in theirs.items()}
    g = torch.Generator().manual_seed(1)
    for _ in range(2):
        images = torch.rand(8, 1, 8, 8, generator=g, dtype=torch.float64) * 2 - 1
        labels = torch.randint(0, 5, (8,), generator=g)
        train_step(ours, optimizer, scheduler, images, labels, accum_steps=2, grad_clip=0.5, procs=Processes())
        peft_opt.zero_grad()
        torch.nn.functional.cross_entropy(peft(images), labels).backward()
        torch.nn.utils.clip_grad_norm_(peft_trained, 0.5)
        peft_opt.step()
        peft_sched.step()
    assert len(optimizer.state) == len(ours.as_dict())                       # momentum for the trained tensors only
    for k, p in theirs.items():
        torch.testing.assert_close(ours.as_dict()[k], p, rtol=0, atol=1e-10, msg=k)
    assert all(torch.equal(p, frozen[n]) for n, p in peft.named_parameters() if not p.requires_grad)  # the base
    assert all(torch.equal(ours.base[k], params[k]) for k in params if not k.startswith("head."))       # is frozen
    assert max((ours.as_dict()[k] - start[k]).abs().max().item() for k in theirs) > 1e-4   # these moved


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_the_checkpoint_holds_the_adapters_the_head_and_the_base_by_hash(pretrained, tmp_path):
    log = main(FINETUNE + ["--init", str(pretrained), "--out", str(tmp_path), "--lora", "2",
                           "--lora-targets", "q,k,v,proj,fc1,fc2"])
    state = load_checkpoint(str(tmp_path / "finetune.pt"))
    lora = LoRAConfig(2, 2.0, ("q", "k", "v", "proj", "fc1", "fc2"))
    cfg = vit.ViTConfig(**state["config"])
    assert {k: tuple(v.shape) for k, v in state["params"].items()} == {**adapter_shapes(cfg, lora), **HEAD}
    assert len(state["optimizer"]["state"]) == len(state["params"])          # the optimizer held only these
    assert state["lora"] == {"rank": 2, "alpha": 2.0, "targets": ("q", "k", "v", "proj", "fc1", "fc2"), "blocks": None,
                             "rslora": False, "dropout": 0.0}
    assert state["base"] == {"path": str(pretrained), "sha256": sha256(pretrained)}
    assert 0 <= log["test_accuracy"] <= 1


def test_a_killed_lora_run_resumes_to_exactly_the_same_adapters(pretrained, tmp_path, monkeypatch):
    args = FINETUNE + ["--init", str(pretrained), "--lora", "2", "--save-every", "2"]
    main(args + ["--out", str(tmp_path / "whole")])
    real_step = train_module.train_step
    monkeypatch.setattr(train_module, "train_step", dies_at(3, real_step))    # killed in step 3; checkpoint at 2
    with pytest.raises(Killed):
        main(args + ["--out", str(tmp_path / "killed")])
    monkeypatch.setattr(train_module, "train_step", real_step)
    assert load_checkpoint(str(tmp_path / "killed" / "finetune.pt"))["step"] == 2
    main(args + ["--out", str(tmp_path / "killed"), "--resume"])
    whole, resumed = (load_checkpoint(str(tmp_path / d / "finetune.pt")) for d in ("whole", "killed"))
    assert whole["params"].keys() == resumed["params"].keys()
    assert all(torch.equal(whole["params"][k], resumed["params"][k]) for k in whole["params"])
    assert [r["loss"] for r in whole["log"]["train"]] == [r["loss"] for r in resumed["log"]["train"]]


def test_resuming_over_a_changed_base_or_with_other_flags_is_refused(pretrained, tmp_path):
    base = tmp_path / "pretrain.pt"
    shutil.copy(pretrained, base)
    args = FINETUNE + ["--init", str(base), "--out", str(tmp_path / "run")]
    main(args + ["--lora", "2"])
    with pytest.raises(ValueError, match="checkpoint: expected a full fine-tuning checkpoint, got .* of LoRA adapters"):
        main(args + ["--resume"])
    with pytest.raises(ValueError, match="checkpoint: expected the adapters of this run"):
        main(args + ["--resume", "--lora", "4"])
    state = load_checkpoint(str(base))
    state["params"]["cls"] = state["params"]["cls"] + 1e-3                    # the base is trained on, say
    save_checkpoint(str(base), **{k: state[k] for k in ("params", "optimizer", "scheduler", "step", "rng", "log", "seed",
                                                         "dtype")},
                    cfg=vit.ViTConfig(**state["config"]), recipe=Recipe(**state["recipe"]))
    with pytest.raises(ValueError, match="checkpoint: expected adapters over the base checkpoint .* the base has changed"):
        main(args + ["--resume", "--lora", "2"])
    main(FINETUNE + ["--init", str(base), "--out", str(tmp_path / "full")])
    with pytest.raises(ValueError, match="checkpoint: expected a checkpoint of LoRA adapters .* of full fine-tuning"):
        main(FINETUNE + ["--init", str(base), "--out", str(tmp_path / "full"), "--resume", "--lora", "2"])


def test_bad_lora_flags_get_clear_messages(pretrained, tmp_path, capsys):
    args = FINETUNE + ["--init", str(pretrained), "--out", str(tmp_path)]
    with pytest.raises(ValueError, match="fast: the fast path takes plain weights, not LoRA adapters"):
        main(args + ["--lora", "2", "--fast"])
    with pytest.raises(ValueError, match="lora_targets: the new head is trained whole"):
        main(args + ["--lora", "2", "--lora-targets", "q,head"])
    with pytest.raises(ValueError, match="targets: expected distinct names among"):
        main(args + ["--lora", "2", "--lora-targets", "query,value"])
    with pytest.raises(SystemExit) as usage:                      # a count, checked by argparse as --accum is
        main(args + ["--lora", "0"])
    assert usage.value.code == 2 and "argument --lora: invalid positive value: '0'" in capsys.readouterr().err
    with pytest.raises(ValueError, match="distill: LoRA fine-tunes a model with one head"):
        main(args + ["--lora", "2", "--distill", "hard", "--teacher", str(pretrained)])
    distilled = vit.ViTConfig(**{**CFG.__dict__, "distilled": True})               # a distilled --init, say
    with pytest.raises(ValueError, match="distilled: LoRA fine-tunes a model with one head"):
        LoRARun(LoRAConfig(), str(pretrained), "").model(vit.init_params(distilled), distilled, seed=0)
    with pytest.raises(ValueError, match="lora: expected the finetune stage"):
        main(TINY_MAIN + ["--stages", "pretrain", "--out", str(tmp_path), "--lora", "2"])
    with pytest.raises(ValueError, match=r"rank: expected at most 64, the smaller side of blocks.0.q's \(64 × 64\)"):
        main(args + ["--lora", "1000"])                                   # larger than D: parameters, not rank
    main(args + ["--lora", "2"])
    with pytest.raises(ValueError, match=r"init: expected a whole model, got .*finetune.pt' holding only LoRA adapters"):
        main(FINETUNE + ["--init", str(tmp_path / "finetune.pt"), "--out", str(tmp_path / "again")])


def test_an_absurd_rank_is_refused_before_pre_training(tmp_path, monkeypatch):
    monkeypatch.setattr(train_module, "train_step", lambda *a, **kw: pytest.fail("a training step ran"))
    with pytest.raises(ValueError, match="rank: expected at most 64"):
        main(TINY_MAIN + ["--out", str(tmp_path), "--lora", "65"])


def test_lora_bench_refuses_a_missing_base_in_one_line(tmp_path, capsys):
    from paper import cli
    from paper.lora_bench import main as lora_bench
    with pytest.raises(SystemExit) as exit_code:
        cli.run(lora_bench, ["--init", str(tmp_path / "missing.pt"), "--out", str(tmp_path)])
    assert exit_code.value.code == 2
    assert capsys.readouterr().err.startswith("error: init: expected a pre-trained checkpoint, got ")
