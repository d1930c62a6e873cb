"""Models trained by the project's own command, on first use, and kept under runs/ for every later use.

`trained_model(name, arguments)` returns what `python -m paper.train ARGUMENTS --out runs/NAME` leaves: the first
call runs the command (its progress bars shown), later calls read runs/NAME. Nothing is downloaded: the data sets
are the command's own (`--data`). The arguments are recorded beside the checkpoints, and a folder trained with
other arguments is trained again, so that changing them (to another data set, say) can never read a stale model.
"""
import fcntl
import json
import subprocess
import sys
from pathlib import Path

import lowlevel as vit
from paper.formats.atomic import write_atomically
from paper.training.state import checkpoint_config, load_checkpoint

REPO = Path(__file__).resolve().parents[2]
RUNS = REPO / "runs"
ARGUMENTS_FILE = "arguments.json"

# The model the exercises read (workbook 11's patch-embedding filters): the pre-training stage on the bundled
# digits for now, which trains in about 40 s on one CPU core.
EXERCISE_MODEL = ("digits-pretrain", ("--data", "digits", "--stages", "pretrain"))

# The model the attention and position pictures read (workbooks 02-04): the MNIST job's fine-tuned stage, a D=64,
# 4-layer, 4-head ViT on 28×28 digits in 4×4 patches (a 7×7 grid), 91% on the held-out digits; about 90 s on two
# cores. Unpacked as trained_model(*PICTURES_MODEL).
PICTURES_MODEL = ("mnist", ("--data", "mnist"), "finetune")


def trained_model(name: str, arguments: tuple[str, ...], stage: str = "pretrain") -> tuple[dict, vit.ViTConfig]:
    """(params, cfg) of stage `stage` ("pretrain" or "finetune") of `python -m paper.train ARGUMENTS --out runs/NAME`,
    trained now if runs/NAME does not hold that run yet."""
    out = RUNS / name
    state = cached(out, arguments, stage)        # a kept run is read without the lock: its folder appeared whole,
    if state is not None:                        # and a reader that may write nothing (the learner's) reads it too
        return state["params"], checkpoint_config(state)
    RUNS.mkdir(exist_ok=True)
    with open(RUNS / f".{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)                 # two processes asking at once train once
        state = cached(out, arguments, stage)
        if state is None:
            command = [sys.executable, "-m", "paper.train", *arguments]
            print(f"training once, then kept in {out}: python -m paper.train {' '.join(arguments)}", file=sys.stderr,
                  flush=True)

            def train(tmp: str) -> None:
                done = subprocess.run([*command, "--out", tmp], cwd=REPO)
                if done.returncode:
                    raise RuntimeError(f"python -m paper.train {' '.join(arguments)} failed with exit code "
                                       f"{done.returncode} (its output is above)")
                Path(tmp, ARGUMENTS_FILE).write_text(json.dumps(list(arguments)))

            write_atomically(out, train, directory=True)
            state = load_checkpoint(str(out / f"{stage}.pt"))
    return state["params"], checkpoint_config(state)


def cached(out: Path, arguments: tuple[str, ...], stage: str) -> dict | None:
    """The checkpoint of `stage` in `out` if `out` holds a run of exactly these arguments that this code can read;
    None if not (no run, other arguments, or a checkpoint an older version of paper.train wrote)."""
    recorded = out / ARGUMENTS_FILE
    if not (recorded.is_file() and json.loads(recorded.read_text()) == list(arguments)):
        return None
    try:
        return load_checkpoint(str(out / f"{stage}.pt"))
    except ValueError:
        return None
