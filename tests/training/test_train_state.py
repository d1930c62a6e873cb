"""Checkpoints: atomic writes, no non-finite state saved, clear refusals for missing, foreign or mismatched files."""
import dataclasses
import os

import pytest
import torch

import lowlevel as vit
from paper.formats.atomic import write_atomically
from paper.training.recipes import DIGITS_PRETRAIN
from paper.training.state import check_same_run, load_checkpoint, save_checkpoint

CFG = vit.ViTConfig(image_size=8, patch_size=4, in_channels=1, dim=16, depth=1, num_heads=2, mlp_dim=32, num_classes=3)


IDENTITY = {"data": "digits", "data_dir": None, "distillation": None, "teacher_sha256": None}


def write(path, params, step=1):
    opt = torch.optim.SGD([torch.nn.Parameter(v) for v in params.values()], lr=0.1, momentum=0.9)
    save_checkpoint(str(path), cfg=CFG, recipe=DIGITS_PRETRAIN, params=params, optimizer=opt.state_dict(),
                    scheduler={"last_epoch": step}, step=step, rng=[{"cpu": torch.get_rng_state()}], log={},
                    seed=0, dtype="float32", identity=IDENTITY)


def test_checkpoint_round_trip(tmp_path):
    params = vit.init_params(CFG, torch.Generator().manual_seed(0))
    write(tmp_path / "a.pt", params, step=7)
    state = load_checkpoint(str(tmp_path / "a.pt"))
    assert state["step"] == 7 and vit.ViTConfig(**state["config"]) == CFG
    assert all(torch.equal(state["params"][k], params[k]) for k in params)
    check_same_run(state, CFG, DIGITS_PRETRAIN, 0, "float32", IDENTITY, "a.pt")  # the same run: no error


def test_a_write_that_fails_half_way_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "ckpt.pt"
    path.write_bytes(b"the good one")

    def crash(tmp):
        with open(tmp, "wb") as f:
            f.write(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_atomically(str(path), crash)
    assert path.read_bytes() == b"the good one" and os.listdir(tmp_path) == ["ckpt.pt"]


def test_non_finite_params_are_never_saved(tmp_path):
    params = vit.init_params(CFG, torch.Generator().manual_seed(0))
    write(tmp_path / "c.pt", params)
    before = (tmp_path / "c.pt").read_bytes()
    params["blocks.0.fc1.weight"][0, 0] = float("inf")
    with pytest.raises(ValueError, match=r"params: expected finite values to save at step 1, got NaN or inf in "
                                         r"\['blocks.0.fc1.weight'\]; .*c.pt is left as it was"):
        write(tmp_path / "c.pt", params)
    assert (tmp_path / "c.pt").read_bytes() == before and os.listdir(tmp_path) == ["c.pt"]


def test_missing_unreadable_and_foreign_checkpoints_are_refused(tmp_path):
    with pytest.raises(ValueError, match="checkpoint: expected a checkpoint file, got .*gone.pt.*does not exist"):
        load_checkpoint(str(tmp_path / "gone.pt"))
    (tmp_path / "junk.pt").write_bytes(b"\x00" * 64)
    with pytest.raises(ValueError, match="checkpoint: expected a checkpoint written by paper.train, could not read"):
        load_checkpoint(str(tmp_path / "junk.pt"))
    torch.save({"state_dict": {}}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match=r"checkpoint: expected the keys .* missing \['config', 'recipe'"):
        load_checkpoint(str(tmp_path / "other.pt"))


def test_a_checkpoint_of_another_config_is_refused(tmp_path):
    write(tmp_path / "a.pt", vit.init_params(CFG))
    state = load_checkpoint(str(tmp_path / "a.pt"))
    wider = dataclasses.replace(CFG, dim=32, mlp_dim=64)
    with pytest.raises(ValueError, match=r"(?s)checkpoint: expected a checkpoint of this run's config, got .*a.pt"
                                         r".*dim: checkpoint 16, this run 32.*mlp_dim: checkpoint 32, this run 64"):
        check_same_run(state, wider, DIGITS_PRETRAIN, 0, "float32", IDENTITY, str(tmp_path / "a.pt"))


def test_a_run_is_resumed_only_by_the_run_it_is(tmp_path):
    """Another data set, distillation objective or teacher is named; a checkpoint with no record of them is refused."""
    write(tmp_path / "a.pt", vit.init_params(CFG))
    state = load_checkpoint(str(tmp_path / "a.pt"))
    for field, value in (("data", "mnist"), ("teacher_sha256", "0" * 64),
                         ("distillation", {"kind": "soft", "lam": 0.1, "tau": 3.0, "reduction": "batchmean"})):
        with pytest.raises(ValueError, match=rf"(?s)this run's identity.*{field}: checkpoint"):
            check_same_run(state, CFG, DIGITS_PRETRAIN, 0, "float32", {**IDENTITY, field: value}, "a.pt")
    del state["identity"]
    with pytest.raises(ValueError, match="expected a record of the run's data, distillation and teacher to resume"):
        check_same_run(state, CFG, DIGITS_PRETRAIN, 0, "float32", IDENTITY, "a.pt")
