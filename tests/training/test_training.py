"""The training loop: gradient accumulation, exact resume, 2-process data parallelism, bf16 autocast, bad input,
and the whole pipeline (pre-train -> resolution change -> fine-tune -> checkpoint, log, PNG) in miniature."""
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import distributed_worker
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

import lowlevel as vit
import paper.training.loop as train_module
from paper.formats.timm import from_timm, to_timm
from paper.models.explicit_params import ExplicitParams
from paper.models.heads import pretraining_head
from paper.train import main
from paper.training.loop import make_optimizer, train_step
from paper.training.processes import Processes
from paper.training.recipes import Recipe
from paper.training.schedules import Schedule
from paper.training.state import load_checkpoint

ROOT = Path(__file__).resolve().parents[2]
TINY = vit.ViTConfig(image_size=8, patch_size=4, in_channels=1, dim=16, depth=1, num_heads=2, mlp_dim=32, num_classes=5)
# The main job's command with a handful of steps and small batches (dropout 0.1 in pre-training stays on).
TINY_MAIN = ["--pretrain-steps", "6", "--finetune-steps", "4", "--pretrain-batch", "16", "--finetune-batch", "16",
             "--eval-every", "3"]


@pytest.fixture(autouse=True)
def one_thread():
    """These models are tiny: one thread is as fast as two and does not fight other processes for the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def recipe(optimizer: str, **kw) -> Recipe:
    return Recipe(stage="pretrain" if optimizer == "adam" else "finetune", optimizer=optimizer, base_lr=0.01,
                  total_steps=10, warmup_steps=2, decay="cosine", batch_size=16,
                  weight_decay=0.1 if optimizer == "adam" else 0.0, **kw)


def one_step(params, cfg, rec, images, labels, accum_steps):
    model = ExplicitParams({k: v.clone() for k, v in params.items()}, cfg)
    optimizer = make_optimizer(model.parameters(), rec)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, Schedule(rec.base_lr, rec.total_steps, rec.warmup_steps,
                                                                      rec.decay))
    loss = train_step(model, optimizer, scheduler, images, labels, accum_steps=accum_steps, grad_clip=rec.grad_clip,
                      procs=Processes())
    return loss, model.as_dict()


@given(accum_steps=st.sampled_from([2, 4, 8]), optimizer=st.sampled_from(["adam", "sgd"]),
       clip=st.sampled_from([None, 1.0, 1e-3]), seed=st.integers(0, 2 ** 16))
def test_one_accumulated_step_equals_one_big_batch_step(accum_steps, optimizer, clip, seed):
    # float64, dropout 0: the two differ only in the order the gradient's terms are summed, ~1e-16 relative;
    # 1e-10 leaves room for Adam's division by √v on near-zero gradients. clip=1e-3 makes clipping active.
    g = torch.Generator().manual_seed(seed)
    cfg = pretraining_head(TINY, 5) if optimizer == "adam" else TINY
    params = {k: v.double() + 0.01 * torch.randn(v.shape, generator=g, dtype=torch.float64)  # non-zero head
              for k, v in vit.init_params(cfg, g).items()}
    images = torch.rand(16, 1, 8, 8, generator=g, dtype=torch.float64) * 2 - 1
    labels = torch.randint(0, 5, (16,), generator=g)
    rec = recipe(optimizer, grad_clip=clip)
    loss_big, big = one_step(params, cfg, rec, images, labels, 1)
    loss_acc, acc = one_step(params, cfg, rec, images, labels, accum_steps)
    assert loss_acc == pytest.approx(loss_big, abs=1e-12)
    moved = max((big[k] - params[k]).abs().max().item() for k in params)
    assert moved > 1e-6  # the step did something
    assert max((big[k] - acc[k]).abs().max().item() for k in params) < 1e-10


def test_accumulation_that_does_not_divide_the_batch_is_refused():
    params = {k: v.double() for k, v in vit.init_params(TINY).items()}
    with pytest.raises(ValueError, match="accum_steps: expected a divisor of this process's batch of 16, got 3"):
        one_step(params, TINY, recipe("sgd"), torch.zeros(16, 1, 8, 8, dtype=torch.float64),
                 torch.zeros(16, dtype=torch.long), 3)


def test_non_finite_loss_stops_with_a_clear_error_before_the_step():
    params = {k: v.double() for k, v in vit.init_params(TINY).items()}
    images = torch.full((4, 1, 8, 8), float("nan"), dtype=torch.float64)
    with pytest.raises(FloatingPointError, match="loss: expected a finite training loss, got nan at step 1"):
        one_step(params, TINY, recipe("sgd"), images, torch.zeros(4, dtype=torch.long), 1)


def test_bf16_autocast_steps_on_cpu():
    params = vit.init_params(TINY, torch.Generator().manual_seed(0))
    model = ExplicitParams({k: v.clone() for k, v in params.items()}, TINY)
    rec = recipe("sgd")
    optimizer = make_optimizer(model.parameters(), rec)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, Schedule(0.01, 10, 2, "cosine"))
    g = torch.Generator().manual_seed(1)
    images, labels = torch.rand(8, 1, 8, 8, generator=g) * 2 - 1, torch.randint(0, 5, (8,), generator=g)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert model(images).dtype == torch.bfloat16  # autocast reaches the functional model's F.linear calls
    for _ in range(2):
        loss = train_step(model, optimizer, scheduler, images, labels, accum_steps=2, grad_clip=1.0,
                          procs=Processes(), bf16=True)
        assert torch.isfinite(torch.tensor(loss))
    assert all(p.dtype == torch.float32 for p in model.parameters())  # master weights stay float32
    assert any(not torch.equal(p, params[k]) for k, p in model.as_dict().items())


def final_params(out: Path) -> dict:
    return load_checkpoint(str(out / "finetune.pt"))["params"]


def test_main_pipeline_in_miniature_writes_checkpoint_log_and_curves(tmp_path):
    log = main(TINY_MAIN + ["--out", str(tmp_path)])
    assert sorted(os.listdir(tmp_path)) == ["curves.png", "finetune.pt", "log.json", "pretrain.pt"]
    assert json.loads((tmp_path / "log.json").read_text())["test_accuracy"] == log["test_accuracy"]
    pre, fine = log["stages"]["pretrain"], log["stages"]["finetune"]
    assert [r["step"] for r in pre["train"]] == [1, 2, 3, 4, 5, 6]
    assert [r["step"] for r in fine["eval"]] == [3, 4]
    assert pre["config"]["image_size"] == (8, 8) and fine["config"]["image_size"] == (12, 12)
    assert Image.open(tmp_path / "curves.png").format == "PNG"
    state = load_checkpoint(str(tmp_path / "finetune.pt"))
    cfg = vit.ViTConfig(**state["config"])
    vit.check_params(state["params"], vit.param_shapes(cfg))  # linear head, no pre-logits, E_pos for a 6×6 grid
    assert cfg.representation_size is None and state["params"]["pos"].shape == (1, 37, 64)
    assert state["step"] == 4 and state["recipe"]["optimizer"] == "sgd"


def test_training_on_the_fast_path_ends_with_the_same_weights(tmp_path):
    """--fast changes how the model is computed, not what: float64, the whole miniature pipeline, dropout on in
    pre-training (both paths draw the same masks), the final weights agree to rounding."""
    runs = {fast: tmp_path / f"fast_{fast}" for fast in (False, True)}
    for fast, out in runs.items():
        main(TINY_MAIN + ["--dtype", "float64", "--out", str(out)] + (["--fast"] if fast else []))
    explicit, fast = final_params(runs[False]), final_params(runs[True])
    assert explicit.keys() == fast.keys()
    for k in explicit:
        torch.testing.assert_close(fast[k], explicit[k], rtol=0, atol=1e-10, msg=k)


class Killed(Exception):
    """Stands in for the process being killed."""


def dies_at(call: int, step):
    """`step`, except that its call number `call` is killed before it changes anything."""
    calls = {"n": 0}

    def dying_step(*a, **kw):
        calls["n"] += 1
        if calls["n"] == call:
            raise Killed
        return step(*a, **kw)

    return dying_step


def killed_then_resumed(args: list, out: Path, kill_at: int, monkeypatch) -> None:
    """paper.train `args` into `out`, killed before its training step number `kill_at`, then run again with --resume."""
    real_step = train_module.train_step
    monkeypatch.setattr(train_module, "train_step", dies_at(kill_at, real_step))
    with pytest.raises(Killed):
        main(args + ["--out", str(out)])
    monkeypatch.setattr(train_module, "train_step", real_step)
    main(args + ["--out", str(out), "--resume"])


def test_a_killed_run_resumed_ends_with_exactly_the_same_weights(tmp_path, monkeypatch, deterministic):
    args = TINY_MAIN + ["--save-every", "2"]  # pre-training keeps its dropout: the RNG state must resume too
    main(args + ["--out", str(tmp_path / "whole")])
    for kill_at in (5, 9):  # step 5 of pre-training (checkpoint at 4), step 3 of fine-tuning (checkpoint at 2)
        out = tmp_path / f"killed_at_{kill_at}"
        killed_then_resumed(args, out, kill_at, monkeypatch)
        whole, resumed = final_params(tmp_path / "whole"), final_params(out)
        assert all(torch.equal(whole[k], resumed[k]) for k in whole)
        saved_log = json.loads((tmp_path / "whole" / "log.json").read_text())["stages"]
        resumed_log = json.loads((out / "log.json").read_text())["stages"]
        for stage in ("pretrain", "finetune"):
            assert [r["loss"] for r in saved_log[stage]["train"]] == [r["loss"] for r in resumed_log[stage]["train"]]


def test_resuming_with_another_config_is_refused(tmp_path):
    main(TINY_MAIN + ["--out", str(tmp_path), "--stages", "pretrain"])
    with pytest.raises(ValueError, match=r"(?s)checkpoint: expected a checkpoint of this run's recipe.*total_steps: "
                                         r"checkpoint 6, this run 7"):
        main(["--pretrain-steps", "7"] + TINY_MAIN[2:] + ["--out", str(tmp_path), "--stages", "pretrain", "--resume"])


def test_a_diverging_run_never_overwrites_its_good_checkpoint(tmp_path, monkeypatch):
    path, seen = tmp_path / "pretrain.pt", {}
    real_step = train_module.train_step

    def poisoned_step(model, *a, **kw):  # at step 3 a NaN reaches the weights, as a far too high learning rate would
        seen["calls"] = seen.get("calls", 0) + 1
        if seen["calls"] == 3:
            seen["good"] = hashlib.sha256(path.read_bytes()).hexdigest()  # step 2's checkpoint
            with torch.no_grad():
                next(model.parameters()).fill_(float("nan"))
        return real_step(model, *a, **kw)

    monkeypatch.setattr(train_module, "train_step", poisoned_step)
    with pytest.raises(FloatingPointError, match="loss: expected a finite training loss, got nan at step 3; stopping"):
        main(TINY_MAIN + ["--out", str(tmp_path), "--stages", "pretrain", "--save-every", "1"])
    assert hashlib.sha256(path.read_bytes()).hexdigest() == seen["good"]
    assert load_checkpoint(str(path))["step"] == 2
    assert os.listdir(tmp_path) == ["pretrain.pt"]  # no temporary file left, no log of the failed run


def test_bad_command_lines_get_clear_messages(tmp_path, capsys):
    with pytest.raises(ValueError, match="data_dir: expected an existing directory, got .*does not exist"):
        main(["--data", "cifar10", "--data-dir", str(tmp_path / "missing"), "--out", str(tmp_path)])
    with pytest.raises(ValueError, match="init: expected a pretrain.pt"):
        main(["--stages", "finetune", "--out", str(tmp_path)])
    with pytest.raises(ValueError, match="checkpoint: expected a checkpoint file, got .*nothing.pt"):
        main(["--stages", "finetune", "--init", str(tmp_path / "nothing.pt"), "--out", str(tmp_path)])
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="device: expected a machine with a CUDA GPU for 'cuda', got none"):
            main(["--device", "cuda", "--out", str(tmp_path)])
    with pytest.raises(ValueError, match="bf16: expected float32 parameters for bfloat16 autocast"):
        main(["--bf16", "--dtype", "float64", "--out", str(tmp_path)])
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "python -m paper.train" in capsys.readouterr().out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_equal_one_process_on_the_same_global_batch(tmp_path):
    # One process takes the global batch of 16 whole; two processes take 8 each in 2 accumulated micro-batches of 4
    # (DDP's no_sync, then an all-reduce). float64 and dropout 0: they differ only in the order the gradient's terms
    # are summed, ~1e-16 relative per step, so 1e-10 after 4 Adam steps.
    distributed_worker.pretrain(str(tmp_path / "one"), 1, Processes())
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MASTER_ADDR": "127.0.0.1", "GLOO_SOCKET_IFNAME": "lo",
           "OMP_NUM_THREADS": "1"}
    launch = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc_per_node=2",
              "--master_addr=127.0.0.1", f"--master_port={free_port()}"]
    two = subprocess.run(launch + [str(ROOT / "tests" / "training" / "distributed_worker.py"), str(tmp_path / "two"), "2"], env=env,
                         capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr
    a, b = (load_checkpoint(str(tmp_path / d / "pretrain.pt")) for d in ("one", "two"))
    assert len(a["rng"]) == 1 and len(b["rng"]) == 2  # really two processes
    assert max((a["params"][k] - b["params"][k]).abs().max().item() for k in a["params"]) < 1e-10
    assert a["log"]["train"][-1]["loss"] == pytest.approx(b["log"]["train"][-1]["loss"], abs=1e-12)
    start = vit.init_params(distributed_worker.CFG, torch.Generator().manual_seed(0))
    assert max((a["params"][k].float() - start[k]).abs().max().item() for k in start) > 1e-4  # the stage trained


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_a_training_step_equals_timms_model_stepped_by_torch(optimizer):
    # timm's VisionTransformer with our weights, its loss, global-norm clipping and the same torch optimizer, written
    # out by hand: after two steps its weights equal ours. float64, dropout 0: the two sum terms in other orders
    # (~1e-16 relative); 1e-10 leaves room for Adam's division by √v on near-zero gradients (seen: 1.7e-12).
    from paper.references.vit import timm_vit

    cfg = TINY
    g = torch.Generator().manual_seed(3)
    params = {k: v.double() + 0.02 * torch.randn(v.shape, generator=g, dtype=torch.float64)
              for k, v in vit.init_params(cfg, g).items()}
    timm_model = timm_vit(cfg).double()
    timm_model.load_state_dict(to_timm(params, cfg))
    rec = recipe(optimizer, grad_clip=0.5)
    timm_opt = make_optimizer(timm_model.parameters(), rec)
    timm_sched = torch.optim.lr_scheduler.LambdaLR(timm_opt, lambda i: (i + 1) / 2 if i < 2 else 1.0)
    ours = ExplicitParams({k: v.clone() for k, v in params.items()}, cfg)
    our_opt = make_optimizer(ours.parameters(), rec)
    our_sched = torch.optim.lr_scheduler.LambdaLR(our_opt, Schedule(rec.base_lr, rec.total_steps, rec.warmup_steps,
                                                                    rec.decay))
    for _ in range(2):
        images = torch.rand(8, 1, 8, 8, generator=g, dtype=torch.float64) * 2 - 1
        labels = torch.randint(0, 5, (8,), generator=g)
        train_step(ours, our_opt, our_sched, images, labels, accum_steps=2, grad_clip=0.5, procs=Processes())
        timm_opt.zero_grad()
        torch.nn.functional.cross_entropy(timm_model(images), labels).backward()
        torch.nn.utils.clip_grad_norm_(timm_model.parameters(), 0.5)
        timm_opt.step()
        timm_sched.step()
    _, stepped = from_timm(timm_model)
    assert max((stepped[k] - v).abs().max().item() for k, v in ours.as_dict().items()) < 1e-10
    assert max((stepped[k] - params[k]).abs().max().item() for k in params) > 1e-4  # both moved


@pytest.mark.slow
def test_a_process_killed_with_sigkill_resumes_to_exactly_the_same_weights(tmp_path, deterministic):
    # The real thing: `python -m paper.train` killed by SIGKILL at whatever instruction it is on once its second
    # checkpoint exists (mid-step, mid-write or between), then resumed by a new command.
    args = ["--pretrain-steps", "60", "--finetune-steps", "4", "--pretrain-batch", "16", "--finetune-batch", "16",
            "--eval-every", "30", "--save-every", "1"]
    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "paper.train", *args, "--out", str(killed)], cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        while proc.poll() is None and not (killed / "pretrain.pt").exists():
            time.sleep(0.01)
        while proc.poll() is None and load_checkpoint(str(killed / "pretrain.pt"))["step"] < 2:
            time.sleep(0.01)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL  # killed, not finished
    assert load_checkpoint(str(killed / "pretrain.pt"))["step"] < 60  # part-way, and its checkpoint still reads
    main(args + ["--out", str(killed), "--resume"])
    main(args + ["--out", str(tmp_path / "whole")])
    whole, resumed = final_params(tmp_path / "whole"), final_params(killed)
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)
