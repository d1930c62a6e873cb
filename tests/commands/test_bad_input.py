"""Every promise paper/README.md makes about bad input holds: one test per class of bad input. The config,
the forward pass, reading, writing, training and the commands each refuse with a ValueError (a command: one line
`error: …` and exit code 2) naming what is wrong, before anything is computed, allocated or written."""
import errno
import functools
import io
import json
import os
import subprocess
import sys
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import lowlevel as vit
import paper.formats.atomic as atomic
import paper.formats.files as files
import paper.training.loop as train_module
from lowlevel.fast import prefix_attention
from paper import cli
from paper.convert import main as convert
from paper.formats.checkpoints import read_checkpoint, write_checkpoint
from paper.formats.npz import write_npz
from paper.formats.timm import from_timm, to_timm, write_timm_hub
from paper.train import main as train
from paper.training.state import load_checkpoint
from tests.helpers import random_images, random_params

ROOT = Path(__file__).resolve().parents[2]
CFG = vit.ViTConfig(image_size=16, patch_size=8, dim=32, depth=1, num_heads=2, mlp_dim=48, num_classes=3)
TINY_RUN = ["--pretrain-steps", "6", "--finetune-steps", "2", "--pretrain-batch", "16", "--finetune-batch", "16",
            "--eval-every", "3"]


# ---------------------------------------------------------------- the config

@pytest.mark.parametrize("fields, message", [
    (dict(patch_size=8.0), "patch_size: expected a positive integer, got 8.0"),
    (dict(dim=True), "dim: expected a positive integer, got True"),
    (dict(depth=-1), "depth: expected a positive integer, got -1"),
    (dict(mlp_dim="48"), "mlp_dim: expected a positive integer, got '48'"),
    (dict(image_size=(16, 16, 16)), r"image_size: expected an integer or \(height, width\), got \(16, 16, 16\)"),
    (dict(image_size="16"), r"image_size: expected an integer or \(height, width\), got '16'"),
    (dict(image_size=(0, 16)), r"image_size: expected positive integers \(height, width\), got \(0, 16\)"),
    (dict(layer_norm_eps=0.0), r"layer_norm_eps: expected a finite number > 0, got 0.0"),
    (dict(layer_norm_eps=float("nan")), r"layer_norm_eps: expected a finite number > 0, got nan"),
    (dict(layer_norm_eps=float("inf")), r"layer_norm_eps: expected a finite number > 0, got inf"),
    (dict(dropout=1.0), r"dropout: expected a probability in \[0, 1\), got 1.0"),
    (dict(dropout=-0.1), r"dropout: expected a probability in \[0, 1\), got -0.1"),
    (dict(num_classes=-1), r"num_classes: expected a non-negative integer \(0: no head\), got -1"),
    (dict(representation_size=0), "representation_size: expected None or a positive integer, got 0"),
    (dict(class_token="yes"), "class_token: expected True or False, got 'yes'"),
    (dict(pos_embed="sincos2d", dim=4, num_heads=1), r"dim: .* need D/4 - 1 > 0, so at least 8, got 4"),
    (dict(pool="max"), r"pool: expected one of \('token', 'avg'\), got 'max'"),
    (dict(gelu="GELU"), r"gelu: expected one of \('exact', 'tanh'\), got 'GELU'"),
    (dict(image_size=(8, 10), patch_size=4), r"image_size: expected height and width divisible by patch_size=4, got \(8, 10\)"),
    (dict(dim=10, num_heads=4), "dim: expected a multiple of num_heads=4, got dim=10"),
    (dict(depth=0), "depth: expected a positive integer, got 0"),
    (dict(num_heads=0), "num_heads: expected a positive integer, got 0"),
    (dict(class_token=False), "pool: 'token' pooling needs class_token=True"),
    (dict(pos_embed="sincos2d", dim=6, num_heads=1), "dim: 2-D sin-cos position embeddings need a multiple of 4, got 6"),
])
def test_config_refuses_bad_fields_naming_them(fields, message):
    with pytest.raises(ValueError, match=message):
        vit.ViTConfig(**{**dict(image_size=16, patch_size=8, dim=32, num_heads=2), **fields})


# ---------------------------------------------------------------- images, patches and timm's state dicts

WIDE = vit.ViTConfig(image_size=(8, 12), patch_size=4, dim=8, depth=1, num_heads=2, mlp_dim=8, num_classes=3)


@pytest.mark.parametrize("shape, message", [
    ((2, 3, 8), r"images: expected rank 4 \(B, C, H, W\), got rank 3"),
    ((2, 1, 8, 12), r"images: expected 3 channels \(cfg.in_channels\), got 1"),
    ((2, 3, 12, 8), r"images: expected height and width \(8, 12\) \(cfg.image_size\), got \(12, 8\)"),
])
def test_forward_rejects_bad_images(shape, message):
    with pytest.raises(ValueError, match=message):
        vit.forward(vit.init_params(WIDE), torch.zeros(shape), WIDE)


def test_patchify_rejects_sizes_not_divisible_by_the_patch():
    with pytest.raises(ValueError, match=r"divisible by patch_size=4, got \(8, 10\)"):
        vit.patchify(torch.zeros(1, 3, 8, 10), 4)


def test_state_dict_errors_list_every_bad_key():
    sd = to_timm(vit.init_params(WIDE), WIDE)
    del sd["blocks.0.norm1.weight"], sd["norm.bias"]
    sd["blocks.0.attn.proj.weight"] = torch.zeros(8, 7)
    sd["head.weight"] = torch.zeros(4, 8)
    sd["blocks.0.ls1.gamma"] = torch.zeros(8)
    with pytest.raises(ValueError) as err:
        from_timm(sd, num_heads=2, image_size=(8, 12))
    text = str(err.value)
    for line in ["missing key: blocks.0.norm1.weight", "missing key: norm.bias", "unexpected key: blocks.0.ls1.gamma",
                 "mis-shaped key blocks.0.attn.proj.weight: expected (8, 8), got (8, 7)"]:
        assert line in text
    # the head's class count is read from the weights, so a (4, 8) head gives a 4-class config whose bias is wrong
    assert "mis-shaped key head.bias: expected (4,), got (3,)" in text


def test_a_whole_other_models_keys_are_counted_not_listed():
    """A backbone's worth of extra keys (a timm hybrid R50+ViT has 156) makes one short line: the count and the
    first three."""
    sd = to_timm(vit.init_params(WIDE), WIDE) | {f"patch_embed.backbone.stages.{i}.conv.weight": torch.zeros(1)
                                                 for i in range(156)}
    with pytest.raises(ValueError) as err:
        from_timm(sd, num_heads=2, image_size=(8, 12))
    text = str(err.value)
    assert "156 unexpected keys, the first: patch_embed.backbone.stages.0.conv.weight; " in text and len(text) < 300


def test_to_timm_rejects_params_of_another_config():
    params = vit.init_params(WIDE)
    params["pos"] = torch.zeros(1, 5, 8)
    with pytest.raises(ValueError, match=r"mis-shaped key pos: expected \(1, 7, 8\), got \(1, 5, 8\)"):
        to_timm(params, WIDE)


def test_from_timm_rejects_something_else():
    with pytest.raises(ValueError, match="state_dict: expected a timm VisionTransformer state_dict, missing key"):
        from_timm({"weight": torch.zeros(3)})


# ---------------------------------------------------------------- the forward pass

@pytest.mark.parametrize("run", [vit.forward, functools.partial(vit.forward, fast=True),
                                 lambda *a: vit.forward_intermediates(*a)[0]],
                         ids=["forward", "forward_fast", "forward_intermediates"])
def test_forward_refuses_mismatched_params_naming_both_sides(run):
    params = random_params(CFG, dtype=torch.float64)
    x = random_images(CFG, 2, seed=0, dtype=torch.float32)
    with pytest.raises(ValueError, match=r"params: expected every tensor on the images' device and dtype \(cpu, "
                                         r"torch.float32\), got .* on cpu as torch.float64"):
        run(params, x, CFG)
    x = x.double()
    meta = {**params, "blocks.0.fc1.weight": params["blocks.0.fc1.weight"].to("meta")}   # once all-NaN logits
    with pytest.raises(ValueError, match=r"got blocks.0.fc1.weight on meta as torch.float64"):
        run(meta, x, CFG)
    with pytest.raises(ValueError, match="missing key: head.bias"):
        run({k: v for k, v in params.items() if k != "head.bias"}, x, CFG)
    with pytest.raises(ValueError, match=r"mis-shaped key pos: expected \(1, 5, 32\), got \(1, 4, 32\)"):
        run({**params, "pos": params["pos"][:, :4]}, x, CFG)


def test_zero_patch_size_and_zero_heads_are_value_errors():
    x = torch.zeros(1, 3, 8, 8)
    with pytest.raises(ValueError, match="patch_size: expected a positive integer, got 0"):
        vit.patchify(x, 0)
    tokens, w = torch.zeros(1, 5, 8), torch.zeros(24, 8)
    with pytest.raises(ValueError, match="num_heads: expected a positive divisor of the input dim 8, got 0"):
        vit.multi_head_attention(tokens, w, None, torch.zeros(8, 8), None, 0)
    with pytest.raises(ValueError, match="num_heads: expected a positive divisor of the input dim 8, got 0"):
        prefix_attention(tokens, w, None, 0, 1)


# ---------------------------------------------------------------- reading

def refused_at_once(path, match):
    """read_checkpoint(path) raises a matching ValueError within 30 s (a FIFO would block a reader for ever)."""
    outcome = {}

    def read():
        try:
            read_checkpoint(path, num_heads=2)
        except ValueError as e:
            outcome["error"] = str(e)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(30)
    assert "error" in outcome, f"reading {path} did not end with a ValueError"
    assert match in outcome["error"], outcome["error"]


def npz_with(tmp_path, name, **replaced) -> Path:
    arrays = dict(np.load(tmp_path / "good.npz"))
    path = tmp_path / name
    np.savez(path, **{**arrays, **replaced})
    return path


def test_reading_refuses_special_files_bad_archives_and_mistyped_configs(tmp_path):
    os.mkfifo(tmp_path / "fifo.pth")
    refused_at_once(tmp_path / "fifo.pth", "expected a regular file, got a FIFO")
    refused_at_once("/dev/zero", "/dev/zero: expected a regular file, got a character device")

    params = random_params(CFG, dtype=torch.float32)
    write_npz(params, CFG, tmp_path / "good.npz")
    data = bytearray((tmp_path / "good.npz").read_bytes())
    data[len(data) // 2] ^= 0xFF                                                  # one flipped byte: a bad CRC
    (tmp_path / "corrupt.npz").write_bytes(bytes(data))
    refused_at_once(tmp_path / "corrupt.npz", "corrupt.npz: expected a readable .npz archive")
    (tmp_path / "truncated.npz").write_bytes(bytes(data[:len(data) // 2]))   # no zip directory: once read as torch's
    refused_at_once(tmp_path / "truncated.npz", "truncated.npz: expected an .npz archive (a zip of .npy arrays), got a "
                                                "file that is none (truncated or corrupt?)")
    (tmp_path / "noise.pth").write_bytes(b"\x80\x02" + bytes(range(256)))  # torch.load's refusal: a page of advice
    with pytest.raises(ValueError) as unreadable:
        read_checkpoint(tmp_path / "noise.pth")
    assert "got an unreadable file (torch.load refuses it: " in str(unreadable.value)
    assert len(str(unreadable.value)) < 300 and "weights_only" not in str(unreadable.value)
    refused_at_once(npz_with(tmp_path, "strings.npz", cls=np.array([["a"]])),
                    "strings.npz: array 'cls': expected floating-point weights, got dtype <U1")
    refused_at_once(npz_with(tmp_path, "ints.npz", **{"head/bias": np.arange(3)}),
                    "ints.npz: array 'head/bias': expected floating-point weights, got dtype int64")
    header = io.BytesIO()                  # 8 TiB declared, 64 bytes stored: refused before np.load allocates it
    np.lib.format.write_array_header_1_0(header, {"descr": "<f8", "fortran_order": False, "shape": (2 ** 40,)})
    with zipfile.ZipFile(tmp_path / "absurd.npz", "w") as z:
        z.writestr("embedding/kernel.npy", header.getvalue() + bytes(64))
    refused_at_once(tmp_path / "absurd.npz", "absurd.npz: array 'embedding/kernel': expected its header's shape "
                                             "(1099511627776,) (8,796,093,022,208 bytes) to match the 64 bytes stored")

    write_checkpoint(params, CFG, tmp_path / "hf")
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    for field, value, expected in (("hidden_size", "32", "an integer"), ("layer_norm_eps", None, "a finite number"),
                                   ("qkv_bias", 1, "true or false"), ("image_size", [16], "an integer or")):
        (tmp_path / "hf" / "config.json").write_text(json.dumps({**config, field: value}))
        refused_at_once(tmp_path / "hf", f"config.json: {field}: expected {expected}")
    write_timm_hub(params, CFG, tmp_path / "hub")
    config = json.loads((tmp_path / "hub" / "config.json").read_text())
    for key, value, expected in (("num_heads", "2", "num_heads: expected an integer, got '2'"),
                                 ("init_values", 1e-5, "init_values: expected only arguments this reader maps")):
        (tmp_path / "hub" / "config.json").write_text(json.dumps({**config, "model_args": {**config["model_args"],
                                                                                          key: value}}))
        refused_at_once(tmp_path / "hub", f"config.json model_args: {expected}")


def test_a_file_read_as_another_model_gets_one_short_line_saying_what_it_holds(tmp_path, capsys):
    """A hybrid's timm state dict (an R50 of 156 tensors under patch_embed.backbone) read with --model ViT-B/16 once
    printed every key, a 10 KB line. Now each kind of bad key is counted with its first three, and the line says what
    the file holds; a model name of another family is refused by name, not with a TypeError."""
    from lowlevel import BackboneConfig
    hybrid = vit.ViTConfig(image_size=32, patch_size=1, dim=32, depth=1, num_heads=2, mlp_dim=48, num_classes=3,
                           backbone=BackboneConfig(layers=(3, 4, 9), width=32))
    write_checkpoint(random_params(hybrid, dtype=torch.float32), hybrid, tmp_path / "r50.pth")
    for flags, words in ((["--model", "ViT-B/16"], ["156 unexpected keys, the first: patch_embed.backbone.",
                                                    "the file holds a ViT of D=32, depth 1, patch 1, with a ResNet, "
                                                    "not ViT-B/16"]),
                         (["--model", "Swin-T"], [f"{tmp_path / 'r50.pth'}: model: expected a ViT's name for a timm "
                                                  "checkpoint, got 'Swin-T', a Swin's"])):
        with pytest.raises(SystemExit) as ended:
            cli.run(convert, [str(tmp_path / "r50.pth"), str(tmp_path / "out.pth"), "--num-heads", "2", *flags])
        line = capsys.readouterr().err.strip().splitlines()[-1]                 # (above it, the progress bar)
        assert ended.value.code == 2 and line.startswith("error: ") and len(line) < 1000, line
        assert all(w in line for w in words), line
    assert not (tmp_path / "out.pth").exists()


# ---------------------------------------------------------------- writing

def test_writing_is_whole_or_nothing_keeps_what_exists_and_refuses_what_does_not_apply(tmp_path, capsys,
                                                                                         monkeypatch):
    params = random_params(CFG, dtype=torch.float32)
    write_timm_hub(params, CFG, tmp_path / "src")
    src = str(tmp_path / "src")

    def run(*args):
        with pytest.raises(SystemExit) as ended:
            cli.run(convert, [src, *args])
        err = capsys.readouterr().err.strip().splitlines()
        return ended.value.code, err[-1] if err else ""

    real_write_text = Path.write_text

    def disk_full(self, *a, **kw):      # the transformers directory's config.json is written after its weights
        if self.name == "config.json":
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write_text(self, *a, **kw)

    monkeypatch.setattr(Path, "write_text", disk_full)
    code, line = run(str(tmp_path / "hf"))
    assert code == 2 and line == f"error: could not write {tmp_path / 'hf'}: No space left on device"
    monkeypatch.undo()
    assert sorted(os.listdir(tmp_path)) == ["src"]                 # no weights without config.json, no temporary

    assert run(str(tmp_path / "hf"))[0] == 0
    before = (tmp_path / "hf" / "model.safetensors").read_bytes()
    code, line = run(str(tmp_path / "hf"), "--num-heads", "1")
    assert code == 2 and "exists; pass --force to replace it" in line
    assert (tmp_path / "hf" / "model.safetensors").read_bytes() == before
    assert run(str(tmp_path / "hf"), "--force")[0] == 0

    (tmp_path / "a_file").write_text("")
    code, line = run(str(tmp_path / "a_file" / "m.pth"))
    assert code == 2 and line.endswith(f"{tmp_path / 'a_file'} is a file, not a directory")
    monkeypatch.setattr(os, "replace", lambda *a: (_ for _ in ()).throw(OSError(errno.EROFS, "Read-only file system")))
    code, line = run(str(tmp_path / "ro.pth"))
    assert code == 2 and line == f"error: could not write {tmp_path / 'ro.pth'}: Read-only file system"
    monkeypatch.undo()

    old_umask = os.umask(0o022)
    try:
        assert run(str(tmp_path / "OUT.NPZ"))[0] == 0
    finally:
        os.umask(old_umask)
    assert (tmp_path / "OUT.NPZ").stat().st_mode & 0o777 == 0o644 and zipfile.is_zipfile(tmp_path / "OUT.NPZ")
    assert read_checkpoint(tmp_path / "OUT.NPZ", gelu="exact")[2] == "npz"
    assert (tmp_path / "hf").stat().st_mode & 0o777 == 0o755
    assert (tmp_path / "hf" / "config.json").stat().st_mode & 0o777 == 0o644
    code, line = run(str(tmp_path / "m.pth"), "--npz-layout", "big_vision")
    assert code == 2 and "--npz-layout: expected only with an .npz destination" in line
    code, line = run(str(tmp_path / "m.pth"), "--to", "hf")
    assert code == 2 and "format: hf is written to a directory" in line
    assert not any(n.endswith((".tmp", ".old")) for n in os.listdir(tmp_path))


# ---------------------------------------------------------------- training

def image_folder(root: Path, classes=("cat", "dog"), splits=("train", "val")) -> Path:
    for split in splits:
        for c in classes:
            (root / split / c).mkdir(parents=True, exist_ok=True)
            for i in range(2):
                Image.new("RGB", (8, 8), (40 * i, 100, 200)).save(root / split / c / f"{i}.png")
    return root


def test_training_checks_everything_before_the_first_step(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(train_module, "train_step", lambda *a, **kw: pytest.fail("a training step ran"))
    folder = ["--data", "folder", "--out", str(tmp_path / "run"), "--data-dir"]

    (tmp_path / "a_file").write_text("")
    with pytest.raises(ValueError, match="out: expected a directory, got .*a_file.*, which is a file"):
        train(["--out", str(tmp_path / "a_file")])
    for flags in (["--distill", "hard", "--teacher"], ["--stages", "finetune", "--init"]):    # an existing folder
        field = "teacher" if "--teacher" in flags else "checkpoint"
        with pytest.raises(ValueError, match=f"{field}: expected a checkpoint file.*, got '{tmp_path}', which is a "
                                             f"directory"):
            train([*flags, str(tmp_path), "--out", str(tmp_path / "run")])
    data = image_folder(tmp_path / "broken")
    (data / "val" / "dog" / "1.png").write_bytes(b"\x89PNG truncated")     # once found after a whole stage
    with pytest.raises(ValueError, match=r"could not read .*val/dog/1.png"):
        train([*folder, str(data)])
    data = image_folder(tmp_path / "classes")
    (data / "val" / "dog").rename(data / "val" / "dgo")
    with pytest.raises(ValueError, match=r"the same class folders in train/ and val/, got \['dog'\] only in train/ "
                                         r"and \['dgo'\] only in val/"):
        train([*folder, str(data)])
    data = image_folder(tmp_path / "loop")
    os.symlink(data / "train", data / "train" / "cat" / "again")            # once: dog's images labelled cat too
    with pytest.raises(ValueError, match="without symlink loops, got .*cat/again"):
        train([*folder, str(data)])
    data = image_folder(tmp_path / "bomb")
    Image.new("RGB", (12, 12)).save(data / "train" / "cat" / "big.png")     # 144 pixels over a limit of 100
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    with pytest.raises(ValueError, match=r"could not read .*big.png .*decompression bomb"):
        train([*folder, str(data)])
    monkeypatch.undo()
    monkeypatch.setattr(train_module, "train_step", lambda *a, **kw: pytest.fail("a training step ran"))

    for flag, value in (("--accum", "0"), ("--threads", "0"), ("--workers", "-1"), ("--pretrain-steps", "0"),
                        ("--finetune-batch", "0")):
        with pytest.raises(SystemExit) as usage:
            train([flag, value])
        assert usage.value.code == 2 and f"argument {flag}: invalid" in capsys.readouterr().err
    with pytest.raises(ValueError, match=r"pretrain_batch: expected a multiple of 3 \(--accum 3 × 1 process\(es\)\), "
                                         r"got 16"):
        train([*TINY_RUN, "--accum", "3", "--out", str(tmp_path / "run")])


def test_resume_refuses_another_seed_dtype_or_a_step_beyond_the_recipe(tmp_path):
    out = ["--out", str(tmp_path), "--stages", "pretrain"]
    train([*TINY_RUN, *out])
    with pytest.raises(ValueError, match=r"(?s)seed and dtype.*seed: checkpoint 0, this run 1"):
        train([*TINY_RUN, *out, "--resume", "--seed", "1"])
    with pytest.raises(ValueError, match=r"(?s)dtype: checkpoint 'float32', this run 'float64'"):
        train([*TINY_RUN, *out, "--resume", "--dtype", "float64"])
    state = load_checkpoint(str(tmp_path / "pretrain.pt"))
    torch.save({**state, "step": 99}, tmp_path / "pretrain.pt")
    with pytest.raises(ValueError, match="expected a step between 0 and the recipe's 6, got .* at step 99"):
        train([*TINY_RUN, *out, "--resume"])


def test_sigterm_saves_a_checkpoint_and_the_resumed_run_loses_no_work(tmp_path, monkeypatch, deterministic):
    """SIGTERM in the middle of pre-training: the step in hand finishes, a checkpoint is saved, KeyboardInterrupt;
    --resume then ends with exactly the weights of a run never interrupted."""
    train([*TINY_RUN, "--out", str(tmp_path / "whole")])
    real_step, calls = train_module.train_step, {"n": 0}

    def terminated_during_step_4(*a, **kw):
        calls["n"] += 1
        if calls["n"] == 4:
            os.kill(os.getpid(), 15)                        # SIGTERM, delivered while the step runs
        return real_step(*a, **kw)

    monkeypatch.setattr(train_module, "train_step", terminated_during_step_4)
    with pytest.raises(KeyboardInterrupt, match=r"pretrain stopped after step 4 of 6; .*pretrain.pt holds it"):
        train([*TINY_RUN, "--out", str(tmp_path / "cut")])
    assert load_checkpoint(str(tmp_path / "cut" / "pretrain.pt"))["step"] == 4
    monkeypatch.setattr(train_module, "train_step", real_step)
    train([*TINY_RUN, "--out", str(tmp_path / "cut"), "--resume"])
    whole, resumed = (load_checkpoint(str(tmp_path / d / "finetune.pt"))["params"] for d in ("whole", "cut"))
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)


KILLED_WRITE = """
import os, signal, sys
from paper.formats.atomic import write_atomically

def half_written_then_killed(tmp):
    with open(tmp, "wb") as f:
        f.write(b"half a checkpoint")
    os.kill(os.getpid(), signal.SIGKILL)

write_atomically(sys.argv[1], half_written_then_killed)
"""


def killed_while_writing(path) -> None:
    """What SIGKILL (the out-of-memory killer, a power cut) in the middle of writing `path` leaves: no cleanup runs,
    so the half-written temporary stays beside it."""
    done = subprocess.run([sys.executable, "-c", KILLED_WRITE, str(path)], cwd=ROOT, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == -9


def test_a_run_resumed_after_kills_leaves_no_temporary_behind(tmp_path, monkeypatch):
    """A run stopped in pre-training (SIGTERM: a checkpoint at step 4), then two writes of its checkpoint killed
    half-way: each write of pretrain.pt removes the temporaries earlier ones left (no process holds their lock), so the
    resumed run ends with its files alone. A temporary whose write is still in progress (its writer holds the lock) is kept."""
    out = tmp_path / "run"
    args = [*TINY_RUN, "--out", str(out), "--save-every", "1"]
    real_step, calls = train_module.train_step, {"n": 0}

    def terminated_during_step_4(*a, **kw):
        calls["n"] += 1
        if calls["n"] == 4:
            os.kill(os.getpid(), 15)
        return real_step(*a, **kw)

    monkeypatch.setattr(train_module, "train_step", terminated_during_step_4)
    with pytest.raises(KeyboardInterrupt):
        train(args)
    monkeypatch.setattr(train_module, "train_step", real_step)
    leftovers = []
    for _ in range(2):                                         # each write removes what the one before it left
        killed_while_writing(out / "pretrain.pt")
        leftovers.append([n for n in os.listdir(out) if n.startswith(".pretrain.pt.") and n.endswith(".tmp")])
    assert len(leftovers[0]) == len(leftovers[1]) == 1 and leftovers[0] != leftovers[1]
    busy = out / ".log.json.in-progress.tmp"
    busy.write_text("")
    with atomic.locked(busy):                                  # another process writing log.json, say
        train([*args, "--resume"])
    assert sorted(os.listdir(out)) == [".log.json.in-progress.tmp", "curves.png", "finetune.pt", "log.json",
                                       "pretrain.pt"]


# ---------------------------------------------------------------- the commands

def command(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})


def test_commands_report_errors_in_one_line_with_exit_code_2(tmp_path, capsys):
    done = command("paper.convert", str(tmp_path / "nothing.pth"), str(tmp_path / "out.pth"))
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1] == (f"error: {tmp_path / 'nothing.pth'}: expected a checkpoint file "
                                                   f"or directory, got a path that does not exist")
    debug = command("paper.convert", str(tmp_path / "nothing.pth"), str(tmp_path / "out.pth"), "--debug")
    assert debug.returncode == 2 and "Traceback" in debug.stderr

    import exercises.__main__ as exercises
    import paper.bench as bench
    import paper.compare as compare
    import paper.verify as verify
    for main, args, words in ((verify.main, ["--checkpoint", str(tmp_path)], "expected a transformers or timm hub"),
                              (bench.main, ["--only", "nobody"], "--only: expected names among"),
                              (compare.main, ["--sizes", "105"], "--sizes: expected distinct multiples of 10"),
                              (train, ["--data", "cifar10", "--out", str(tmp_path / "o")], "data_dir: expected"),
                              (exercises.main, ["check", str(tmp_path / "none.md")], "none.md")):
        with pytest.raises(SystemExit) as ended:
            cli.run(main, args)
        err = capsys.readouterr().err.strip().splitlines()
        assert ended.value.code == 2 and len(err) == 1 and err[0].startswith("error: ") and words in err[0], err


def test_ctrl_c_ends_a_command_with_one_line_exit_130_and_nothing_half_written(tmp_path, capsys, monkeypatch):
    params = random_params(CFG, dtype=torch.float32)
    write_npz(params, CFG, tmp_path / "m.npz")

    def interrupted(*a, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(files, "save_tensors", interrupted)          # Ctrl-C while the weights are written
    with pytest.raises(SystemExit) as ended:
        cli.run(convert, [str(tmp_path / "m.npz"), str(tmp_path / "hf")])
    assert ended.value.code == 130 and capsys.readouterr().err.strip().splitlines()[-1] == "interrupted"
    assert os.listdir(tmp_path) == ["m.npz"]


def test_sigterm_ends_paper_train_with_exit_130_and_a_checkpoint(tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "paper.train", "--pretrain-steps", "100000", "--save-every", "1",
                             "--out", str(tmp_path)], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        while proc.poll() is None and not (tmp_path / "pretrain.pt").exists():
            threading.Event().wait(0.05)
        proc.send_signal(15)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    last = err.strip().splitlines()[-1]
    assert proc.returncode == 130 and "Traceback" not in err
    assert last.startswith("interrupted: pretrain stopped after step ") and "--resume goes on from there" in last
    step = int(last.split("after step ")[1].split()[0])
    assert load_checkpoint(str(tmp_path / "pretrain.pt"))["step"] == step
    assert not any(n.endswith(".tmp") for n in os.listdir(tmp_path))



# ---------------------------------------------------------------- no silent wrong result

def test_non_finite_weights_are_refused_where_they_decide(tmp_path):
    """A teacher with NaN weights would label every image class 0 (argmax of NaN); verify would print 'nan' and
    exit 0. Both refuse, naming the tensor."""
    from paper.references.on_photo import verify_checkpoint
    from paper.training.distillation import load_teacher
    from paper.training.state import save_checkpoint

    params = random_params(CFG, dtype=torch.float32)
    opt = torch.optim.SGD([torch.nn.Parameter(v) for v in params.values()], lr=0.1)
    from paper.training.recipes import DIGITS_PRETRAIN
    save_checkpoint(str(tmp_path / "teacher.pt"), cfg=CFG, recipe=DIGITS_PRETRAIN, params=params,
                    optimizer=opt.state_dict(), scheduler={}, step=1, rng=[], log={}, seed=0, dtype="float32",
                    identity={})
    state = torch.load(tmp_path / "teacher.pt", weights_only=True)
    state["params"]["head.weight"][0, 0] = float("nan")               # a file broken after it was written
    torch.save(state, tmp_path / "teacher.pt")
    with pytest.raises(ValueError, match=r"checkpoint: .*teacher.pt: expected finite weights, got NaN or infinity in "
                                         r"1 tensor\(s\): head.weight"):
        load_teacher(tmp_path / "teacher.pt")
    broken = {**params, "norm.bias": params["norm.bias"].clone().fill_(float("inf"))}
    torch.save(to_timm(broken, CFG), tmp_path / "broken.pth")
    with pytest.raises(ValueError, match=r"expected finite weights, got NaN or infinity in 1 tensor\(s\): norm.bias"):
        verify_checkpoint(tmp_path / "broken.pth", num_heads=CFG.num_heads)


def test_a_fusion_a_format_cannot_record_is_refused_not_dropped(tmp_path):
    """timm's and transformers' DeiT fuse the two heads by mean_logits: a softmax_sum model written there would read
    back as another classifier (6% of predictions changed), so it is refused and nothing is written."""
    cfg = vit.ViTConfig(image_size=16, patch_size=8, dim=32, depth=1, num_heads=2, mlp_dim=48, num_classes=3,
                        distilled=True, fusion="softmax_sum")
    params = random_params(cfg, dtype=torch.float32)
    for dst, fmt in (("m.pth", None), ("hf", None), ("hub", "timm-hub")):
        with pytest.raises(ValueError, match=rf"fusion: {fmt or ('hf' if dst == 'hf' else 'timm')} cannot record "
                                             r"fusion='softmax_sum'; its readers compute 'mean_logits'"):
            write_checkpoint(params, cfg, tmp_path / dst, fmt=fmt)
    assert list(tmp_path.iterdir()) == []
    mean_logits = vit.ViTConfig(**{**cfg.__dict__, "fusion": "mean_logits"})
    write_checkpoint(params, mean_logits, tmp_path / "m.pth")
    assert read_checkpoint(tmp_path / "m.pth", num_heads=2)[0] == mean_logits


def test_flags_that_need_another_flag_and_results_an_earlier_run_left_are_refused(tmp_path, capsys):
    import paper.compare as compare

    for args, words in ((["--lora-alpha", "8"], "lora: --lora-alpha set up LoRA adapters, expected with --lora R"),
                        (["--lora-targets", "q,k"], "lora: --lora-targets set up LoRA adapters"),
                        (["--mpp-target", "pixels"], "mpp: --mpp-target set up masked patch prediction, expected "
                                                     "with --stages mpp"),
                        (["--resume"], "resume: expected a checkpoint to go on from in")):
        with pytest.raises(SystemExit) as ended:
            cli.run(train, [*args, "--out", str(tmp_path / "run")])
        err = capsys.readouterr().err.strip().splitlines()
        assert ended.value.code == 2 and len(err) == 1 and words in err[0], err
    (tmp_path / "compare.json").write_text("{}")
    with pytest.raises(SystemExit) as ended:
        cli.run(compare.main, ["--quick", "--out", str(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert ended.value.code == 2 and "holds an earlier run's compare.json; pass --force" in err[0]
    assert (tmp_path / "compare.json").read_text() == "{}"


def test_library_functions_name_the_argument_they_cannot_take():
    """A ValueError naming the argument, never an AttributeError, TypeError or RuntimeError from deep inside."""
    from paper.formats.huggingface import to_hf
    from paper.formats.npz import to_npz
    from paper.formats.timm_swin import to_timm_swin
    from paper.models.family import paper_config
    from paper.models.heads import finetuning_head
    from paper.models.resolution import change_resolution

    params = vit.init_params(CFG)
    images = torch.zeros(1, 3, 16, 16)
    cases = [(lambda: vit.check_params(list(params.values()), vit.param_shapes(CFG)),
              "params: expected a dict of tensors, got list"),
             (lambda: vit.check_params(params, list(vit.param_shapes(CFG).values())),
              "expected: expected a dict of names to shapes"),
             (lambda: vit.forward({k: v.tolist() for k, v in params.items()}, images, CFG),
              "params: expected tensors, got list"),
             (lambda: vit.forward(params, images, vars(CFG)), "cfg: expected a ViTConfig, got dict"),
             (lambda: vit.init_params(vars(CFG)), "cfg: expected a ViTConfig, got dict"),
             (lambda: vit.swin.forward(params, images, CFG), "cfg: expected a SwinConfig, got ViTConfig"),
             (lambda: vit.multi_head_attention(torch.zeros(1, 4, 8), torch.zeros(20, 8), torch.zeros(20),
                                               torch.zeros(8, 8), torch.zeros(8), 2),
              r"w_qkv: expected \(3·D, D\) = \(24, 8\) for inputs of D = 8, got \(20, 8\)"),
             (lambda: vit.sincos_2d((2, 2), 6), "dim: expected a multiple of 4 of at least 8"),
             (lambda: vit.sincos_2d(4, 8), r"grid_size: expected \(rows, columns\) of positive integers, got 4"),
             (lambda: paper_config(None), "name: expected a model name such as 'ViT-B/16' or 'Swin-T', got None")]
    z = torch.zeros(1, 5, 32)
    as_dict = vars(CFG)                                  # a config given as a dict, at every public entry point
    cases += [(call, "cfg: expected a ViTConfig, got dict") for call in (
        lambda: vit.forward_heads(params, images, as_dict), lambda: vit.embed(params, images, as_dict),
        lambda: vit.encoder(params, z, as_dict), lambda: vit.encoder_block(vit.block_params(params, 0), z, as_dict),
        lambda: vit.fast_encoder(params, z, as_dict), lambda: vit.pool(params, z, as_dict),
        lambda: change_resolution(params, as_dict, 32), lambda: finetuning_head(params, as_dict, 5),
        lambda: to_timm(params, as_dict), lambda: to_hf(params, as_dict), lambda: to_npz(params, as_dict))]
    swin_cfg = vit.SwinConfig(dim=12, num_heads=(1, 2, 3, 4))
    cases += [(lambda: to_timm(params, swin_cfg), "cfg: expected a ViTConfig, got SwinConfig"),
              (lambda: to_timm_swin(params, CFG), "cfg: expected a SwinConfig, got ViTConfig"),
              (lambda: vit.swin.pool(params, z, as_dict), "cfg: expected a SwinConfig, got dict"),
              (lambda: vit.resnet.param_shapes({"layers": (3,)}, 3), "cfg: expected a BackboneConfig, got dict")]
    for call, message in cases:
        with pytest.raises(ValueError, match=message):
            call()


@pytest.mark.parametrize("timeout", ["inf", "nan", "0"])
def test_the_checker_refuses_a_timeout_that_is_no_limit(timeout, capsys):
    from exercises.__main__ import main

    with pytest.raises(SystemExit) as ended:
        main(["check", "--all", "--timeout", timeout])
    assert ended.value.code == 2 and "--timeout: expected a finite positive number of seconds" in capsys.readouterr().err
