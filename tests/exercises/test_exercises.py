"""The workbooks and their checker: every solution passes, every untouched workbook fails every task with a hint,
every mistake the graders know is planted and fails its task alone with its hint, hostile learner code cannot make
a task pass nor outlive the checker, and the solutions' plots, models and printed numbers are what the workbooks
say they are."""
import math
import os
import pickle
import re
import subprocess
import sys
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import matplotlib
import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_digits, load_sample_image
from sklearn.decomposition import PCA

import lowlevel as vit
from exercises import runner, wire
from exercises.__main__ import main
from exercises.checker import Grading, Namespace, check_workbook, defined_functions, sections, shown_output, workbooks
from exercises.grading import GRADERS
from paper import cli
from paper.analysis import maps as analysis
from paper.reports.statistics import separated
from paper.training.data import eval_preprocessing, load_data, preprocess
from paper.training.trained import EXERCISE_MODEL, PICTURES_MODEL, trained_model
from tests.helpers import typed_figures

sys.path.insert(0, str(Path(__file__).resolve().parent))
from exercise_mistakes import PLANTED, QUICK  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
SOLUTIONS = REPO / "exercises" / "solutions"
NAMES = ["01_patch_embedding", "02_attention_maps", "03_position_embeddings", "04_fine_tuning", "05_vit_vs_cnn",
         "06_deit", "07_lora", "08_windows_and_relative_positions", "09_encoder_block",
         "10_reading_timm_and_transformers", "11_patch_embedding_filters", "12_masked_patch_prediction",
         "13_hybrid"]


class InProcess(Namespace):
    """The learner's namespace in this process: the same requests and replies as the learner's process (inputs
    pickled, values through exercises/wire.py), without a process, so that many copies grade in seconds. Process
    isolation itself is tested on the solutions, the untouched workbooks and the hostile copies below."""

    def __init__(self, workbook: Path):
        self.ns, self.filename = {"__name__": "__workbook__"}, str(workbook)

    def request(self, request: tuple) -> tuple:
        reply = runner.handle(self.ns, pickle.loads(pickle.dumps(request)), self.filename)
        return wire.load_reply(wire.dump_reply(reply))


def grade_in_process(name: str, text: str, folder: Path, tasks=None) -> dict:
    """Grade `text` as workbook `name` in this process, one thread, as the learner's process runs it."""
    matplotlib.use("Agg")
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.md"
    path.write_text(text)
    grader = GRADERS[name]
    if hasattr(grader, "prepare"):
        grader.prepare()
    setup, found = sections(text)
    for sub in ("plots", "discard"):
        (folder / sub).mkdir(exist_ok=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        grading = Grading(grader, path, setup, found, 120.0, folder, folder / "plots", folder / "discard",
                          lambda: InProcess(path), lambda: "")
        grading.skeleton = shortened_skeleton(name)
        return grading.run(sorted(grader.TASKS) if tasks is None else tasks)
    finally:
        torch.set_num_threads(threads)


def shortened_skeleton(name: str) -> dict:
    """The original workbook's task blocks with QUICK's shortcuts wherever they hold the same code: a task that fails
    is replayed from its original block (for the tasks after it), which must then be as short as the copy's."""
    text = (REPO / "exercises" / f"{name}.md").read_text()
    for old, new in QUICK.get(name, (None, []))[1]:
        text = text.replace(old, new)
    return sections(text)[1]


def replaced(text: str, substitutions) -> str:
    for old, new in substitutions:
        assert text.count(old) == 1, f"the solution changed: {old!r} must occur once"
        text = text.replace(old, new)
    return text


def planted_copies(name: str) -> list[tuple[str, dict[int, str], set[int]]]:
    """Copies of the solution, each with at most one planted mistake per task -> (text, {task: HINTS key},
    tasks whose result QUICK's shortcuts leave unasserted)."""
    by_task: dict[int, list] = {}
    for mistake in PLANTED[name]:
        by_task.setdefault(mistake[0], []).append(mistake)
    quick_task, quick = QUICK.get(name, (None, []))
    copies = []
    for i in range(max(len(m) for m in by_task.values())):
        chosen = [m[i] for m in by_task.values() if i < len(m)]
        text = replaced((SOLUTIONS / f"{name}.md").read_text(), [(old, new) for _, old, new, _ in chosen] + quick)
        planted = {task: key for task, _, _, key in chosen}
        copies.append((text, planted, {quick_task} - set(planted) - {None}))
    return copies


# The workbooks that train -> (their tasks that quote a run's printed results, the line of the solution that sets
# its seeds). The texts quote one run of each solution on seeds 0-2, on this project's AMD EPYC; the suite runs these
# solutions on seed 0 alone, the same code in a third of the time (05's three seeds take about five minutes on one
# core), and holds seed 0 to what the texts quote (seed0_against_quoted).
TRAINING = {"05_vit_vs_cnn": ((3, 4), "sizes, seeds = (100, 1000), (0, 1, 2)"),
            "06_deit": ((4,), "seeds, results = (0, 1, 2), {}"),
            "07_lora": ((4,), "seeds, steps, lr = (0, 1, 2), 1000, 0.1"),
            "09_encoder_block": ((5,), 'kinds, lrs, seeds = ("token", "avg"), (1e-3, 1e-2), (0, 1, 2)'),
            "12_masked_patch_prediction": ((4,), "seeds, steps, lr = (0, 1, 2), 400, 3e-3")}


def solution_for_the_suite(name: str, folder: Path) -> Path:
    """The solution `graded` checks: as it is, or, for a workbook that trains, a copy that runs seed 0 alone."""
    if name not in TRAINING:
        return SOLUTIONS / f"{name}.md"
    seeds = TRAINING[name][1]
    path = folder / f"{name}.md"
    path.write_text(replaced((SOLUTIONS / f"{name}.md").read_text(), [(seeds, seeds.replace("(0, 1, 2)", "(0,)"))]))
    return path


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    """Every solution checked as a learner checks it (those that train, on seed 0 alone: TRAINING), each in its own
    learner's process, two at a time."""
    out = tmp_path_factory.mktemp("graded")
    (out / "seed0").mkdir()

    def run(name):
        return name, check_workbook(solution_for_the_suite(name, out / "seed0"), timeout=120, output_dir=out / name)

    with ThreadPoolExecutor(max_workers=2) as pool:
        return dict(pool.map(run, NAMES)), out


def test_workbooks_and_solutions_have_the_same_tasks_as_their_graders():
    assert [p.stem for p in workbooks()] == NAMES
    for name in NAMES:
        for path in (REPO / "exercises" / f"{name}.md", SOLUTIONS / f"{name}.md"):
            _, tasks = sections(path.read_text())
            assert sorted(tasks) == sorted(GRADERS[name].TASKS), path


def test_every_function_a_later_task_can_call_has_a_reference_sent_by_name():
    """The checker binds REFERENCE after each task: every function of every task but the last needs one, and each
    must travel to the learner's process by module and name (a module-level function, not a lambda)."""
    for name in NAMES:
        _, tasks = sections((REPO / "exercises" / f"{name}.md").read_text())
        reference = GRADERS[name].REFERENCE
        for task in sorted(tasks)[:-1]:
            for function in defined_functions(tasks[task][1]):
                assert function in reference, f"{name}: task {task}'s {function} has no reference"
        for function in reference.values():
            assert pickle.loads(pickle.dumps(function)) is function


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_every_solution_passes_every_task(graded, name):
    results = graded[0][name]
    assert [r.task for r in results] == sorted(GRADERS[name].TASKS)
    assert all(r.passed for r in results), [r.line() for r in results if not r.passed]


@pytest.mark.slow
def test_untouched_workbooks_fail_every_task_with_a_hint(tmp_path):
    for name in NAMES:
        results = grade_in_process(name, (REPO / "exercises" / f"{name}.md").read_text(), tmp_path / name)
        assert sorted(results) == sorted(GRADERS[name].TASKS)
        for r in results.values():
            assert not r.passed and r.message and r.hint, (name, r.line())


@pytest.mark.slow
def test_untouched_workbook_through_the_command_line(tmp_path):
    """As a learner runs it: one line per task, each FAIL with a hint, exit code 1, no traceback."""
    proc = subprocess.run([sys.executable, "-m", "exercises", "check", "exercises/01_patch_embedding.md",
                           "--output-dir", str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    lines = [line for line in proc.stdout.splitlines() if line.startswith("  task ")]
    assert len(lines) == len(GRADERS["01_patch_embedding"].TASKS)
    for line in lines:
        assert ": FAIL: " in line and "Hint: " in line and line.split("Hint: ")[1].strip(), line
    assert proc.stdout.strip().endswith(f"{len(lines)} task(s) failed")


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_each_known_mistake_fails_its_task_alone_with_its_hint(tmp_path, name):
    hints = GRADERS[name].HINTS
    for i, (text, planted, unasserted) in enumerate(planted_copies(name)):
        results = grade_in_process(name, text, tmp_path / str(i))
        for task, result in results.items():
            if task in planted:
                assert not result.passed, f"{name}: task {task} passed with the mistake {planted[task]!r}"
                assert result.hint == hints[planted[task]], f"{name}: {planted[task]!r}: {result.line()}"
            elif task not in unasserted:
                assert result.passed, f"{name}: task {task} failed for another task's mistake: {result.line()}"


def test_every_known_mistake_is_planted():
    for name in NAMES:
        planted = [key for _, _, _, key in PLANTED[name]]
        assert sorted(set(planted)) == sorted(GRADERS[name].HINTS), name
        assert len(set(GRADERS[name].HINTS.values())) == len(GRADERS[name].HINTS), f"{name}: two mistakes, one hint"


def test_a_task_is_graded_alone_with_the_references_of_the_tasks_before_it(tmp_path):
    """`--task 3` of workbook 02, in a copy whose tasks 1 and 2 are untouched (NotImplementedError): task 3 calls
    multi_head_attention, and passes on the reference bound in its place."""
    untouched = sections((REPO / "exercises" / "02_attention_maps.md").read_text())[1]
    solved = sections((SOLUTIONS / "02_attention_maps.md").read_text())[1]
    text = (REPO / "exercises" / "02_attention_maps.md").read_text()
    text = text.replace(untouched[3][1].strip("\n"), solved[3][1].strip("\n"))
    results = grade_in_process("02_attention_maps", text, tmp_path, tasks=[3])
    assert list(results) == [3] and results[3].passed, results[3].line()


# ---- the checker against hostile and broken learner code -------------------------------------------------------

ORPHAN = "c18-orphan-marker"   # in the command line of the processes the hostile copy starts

HOSTILE = {   # a copy of workbook 01 whose every task is wrong and tries to pass anyway
    1: ("    x = x.permute(0, 2, 4, 1, 3, 5)", "    x = x.permute(0, 2, 4, 3, 5, 1)\n"
        "    import exercises.grading.common as common\n"
        "    common.expect = common.expect_png = lambda *args, **kwargs: None   # the grader's comparison\n"
        "    common.close = lambda *args, **kwargs: True\n"
        "    import ctypes, os, signal\n"
        "    try:                                                   # a grader planted for the next run\n"
        "        open(os.path.join(os.path.dirname(common.__file__), 'planted.py'), 'w')\n"
        "    except PermissionError:\n"
        "        print('planting refused')\n"
        "    supervisor = os.getppid()\n"
        "    checker = int(open(f'/proc/{supervisor}/stat').read().rsplit(')', 1)[1].split()[1])\n"
        "    for pid in (supervisor, checker):\n"
        "        if ctypes.CDLL(None, use_errno=True).ptrace(16, pid, 0, 0) == -1:   # PTRACE_ATTACH\n"
        "            print('tracing refused')\n"
        "        try:\n"
        "            os.kill(pid, 0)\n"
        "        except PermissionError:\n"
        "            print('signalling refused')"),
    2: ("    return patchify(images, patch_size) @ weight.T + bias", "    class Sneaky(Exception):\n"
        "        def __str__(self):\n"
        "            raise RuntimeError('no message for you')\n"
        "    raise Sneaky()"),
    3: ("    kernel = weight.reshape(d, c, p, p)", "    kernel = weight.reshape(d, p, p, c).permute(0, 3, 1, 2)\n"
        "    torch.allclose = lambda *args, **kwargs: True\n"
        "    torch.equal = lambda *args, **kwargs: True\n"
        "    try:\n"
        "        torch.empty(1 << 36, dtype=torch.uint8)                   # 64 GiB of address space\n"
        "    except RuntimeError:\n"
        "        print('64 GiB refused')"),
    4: ("    return (h // patch_size) * (w // patch_size) + 1", "    import sys\n"
        "    import exercises.grading\n"
        "    for grader in exercises.grading.GRADERS.values():                       # the task table\n"
        "        grader.TASKS.clear()\n"
        "    print('  task 4 (counting tokens and parameters): PASS')\n"
        "    from exercises import wire\n"
        "    wire.send(int(sys.argv[2]), wire.dump_reply(('returned', ('int', 197))))   # a forged reply\n"
        "    return (h // patch_size) * (w // patch_size)"),
    5: ("    out = torch.ones(", "    import subprocess, sys\n"
        f"    for new_session in (False, True):\n"
        f"        subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)', '{ORPHAN}'],\n"
        f"                         start_new_session=new_session)\n"
        "    open('left_behind.txt', 'w').write('in the scratch directory')\n"
        "    print('threads', torch.get_num_threads())\n"
        "    out = torch.zeros("),
}


def orphans() -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        try:
            if entry.isdigit() and ORPHAN.encode() in Path(f"/proc/{entry}/cmdline").read_bytes():
                found.append(int(entry))
        except OSError:
            continue
    return found


@pytest.mark.slow
def test_hostile_learner_code_cannot_pass_a_task_or_outlive_the_checker(tmp_path):
    """Through the command line: patching the grader's comparison, torch.allclose or the task table in the learner's
    process changes nothing here; an exception whose str() raises fails its task only; printed and forged PASSes
    count for nothing; processes started by the learner's code, even in a new session, end with the checker;
    relative paths land in a scratch directory that is removed; the learner's process uses one thread and cannot
    take 64 GiB of memory; it can neither write a file among the graders nor trace or signal the checker (Landlock,
    which this test needs: the kernels it runs on have it)."""
    text = replaced((SOLUTIONS / "01_patch_embedding.md").read_text(), HOSTILE.values())
    path = tmp_path / "01_patch_embedding.md"
    path.write_text(text)
    proc = subprocess.run([sys.executable, "-m", "exercises", "check", str(path), "--output-dir", str(tmp_path)],
                          cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    lines = {int(m[1]): line for line in proc.stdout.splitlines() if (m := re.match(r"  task (\d+) ", line))}
    hints = GRADERS["01_patch_embedding"].HINTS
    assert proc.returncode == 1 and sorted(lines) == [1, 2, 3, 4, 5], proc.stdout + proc.stderr
    assert all(": FAIL: " in line for line in lines.values()), proc.stdout
    assert lines[1].endswith(f"Hint: {hints['pcp order']}")
    assert "Sneaky: <a Sneaky whose str() raised>" in lines[2]
    assert lines[3].endswith(f"Hint: {hints['conv kernel']}")
    assert "sent a reply the checker cannot read" in lines[4]
    assert lines[5].endswith(f"Hint: {hints['gap colour']}")
    for printed_line in ("64 GiB refused", "threads 1", "task 4 (counting tokens and parameters): PASS",
                         "planting refused", "tracing refused", "signalling refused"):
        assert re.search(rf"\n {{6,}}{re.escape(printed_line)}\n", proc.stdout), printed_line      # under "printed:"
    assert f"    wrote {tmp_path / 'patch_grid.png'}" in proc.stdout
    assert orphans() == []
    assert not (REPO / "left_behind.txt").exists() and not (tmp_path / "left_behind.txt").exists()
    assert not (REPO / "exercises" / "grading" / "planted.py").exists()


BROKEN = {   # one copy of workbook 03 that breaks in every way learner code can, task by task
    1: ("    quarter = dim // 4\n", "    quarter = dim // 4)\n"),                                  # syntax error
    2: ("    return tokens + pos", "    return (tokens + pos)[:, 1:]"),                          # wrong shape
    3: ("    e = e / e.norm(dim=-1, keepdim=True)\n", "    import signal\n"                       # a hang that
        "    signal.signal(signal.SIGALRM, signal.SIG_IGN)\n    while True:\n        pass\n"),   # ignores SIGALRM
    4: ("    d = pos.shape[-1]\n", "    d = pos.shape[-1]\n    os._exit(3)\n"),                  # kills Python
}


@pytest.mark.slow
def test_checker_reports_syntax_errors_wrong_shapes_hangs_and_crashes_per_task(tmp_path):
    trained_model(*PICTURES_MODEL)      # the setup block reads it: trained here, not inside the checker's setup limit
    text = replaced((SOLUTIONS / "03_position_embeddings.md").read_text(), BROKEN.values())
    path = tmp_path / "03_position_embeddings.md"
    path.write_text(text)
    started = time.monotonic()
    results = {r.task: r for r in check_workbook(path, timeout=2, output_dir=tmp_path)}
    elapsed = time.monotonic() - started
    syntax_line = text.splitlines().index("    quarter = dim // 4)") + 1           # counted in the .md file
    assert f"syntax error in task 1 at line {syntax_line} of 03_position_embeddings.md" in results[1].message
    assert "wrong shape: expected (2, 7, 8), got (2, 6, 8)" in results[2].message
    assert "task 3 did not finish within 2 s" in results[3].message      # the wall-clock kill, not the CPU backstop
    assert "exit code 3" in results[4].message
    assert all(not r.passed and r.hint for r in results.values())
    # Three fresh learner processes (after tasks 2-4) each import torch and run the setup: the whole test took 12.8 s
    # on a quiet 2-core AMD EPYC. The bound is a generous multiple of that, far below an endless loop's.
    assert elapsed < 300, f"the hang was stopped after {elapsed:.0f} s, not at its 2 s limit"


@pytest.mark.slow
def test_a_task_that_trains_gets_the_time_its_grader_gives_it(tmp_path, monkeypatch):
    """A task whose code takes 4 s is stopped under --timeout 2, and passes once its grader's SECONDS gives it 60."""
    line = "    return x.reshape(b, (h // p) * (w // p), c * p * p)     # (B, N, C·P·P)\n"
    path = tmp_path / "01_patch_embedding.md"
    path.write_text(replaced((SOLUTIONS / path.name).read_text(), [(line, f"{line}\n\nimport time\ntime.sleep(4)\n")]))
    stopped = check_workbook(path, timeout=2, output_dir=tmp_path, tasks=[1])[0]
    assert not stopped.passed and "task 1 did not finish within 2 s" in stopped.message
    monkeypatch.setattr(GRADERS["01_patch_embedding"], "SECONDS", {1: 60}, raising=False)
    assert check_workbook(path, timeout=2, output_dir=tmp_path, tasks=[1])[0].passed


def test_checker_reports_missing_sections_unknown_workbooks_and_tasks(tmp_path):
    unknown = tmp_path / "99_unknown.md"
    unknown.write_text("## Task 1: x\n```python\nx = 1\n```\n")
    assert "no grader" in check_workbook(unknown)[0].message
    empty = tmp_path / "03_position_embeddings.md"
    empty.write_text("# nothing here\n")
    results = check_workbook(empty, output_dir=tmp_path)
    assert len(results) == 4 and all("no '## Task" in r.message and r.hint for r in results)
    assert [r.task for r in check_workbook(empty, output_dir=tmp_path, tasks=[2])] == [2]     # `--task 2`
    with pytest.raises(ValueError, match=r"task: expected one of \[1, 2, 3, 4\] for 03_position_embeddings.md, got 99"):
        check_workbook(empty, output_dir=tmp_path, tasks=[99])


def test_help_usage_errors_and_a_task_that_does_not_exist(capsys):
    with pytest.raises(SystemExit) as exit_help:
        main(["check", "--help"])
    assert exit_help.value.code == 0 and "--all" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_usage:
        main(["check"])
    assert exit_usage.value.code == 2 and "expected workbook paths or --all" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_task:
        cli.run(main, ["check", "exercises/01_patch_embedding.md", "--task", "99"])
    assert exit_task.value.code == 2
    assert capsys.readouterr().err.strip() == "error: task: expected one of [1, 2, 3, 4, 5] for 01_patch_embedding.md, got 99"


def test_sections_keep_the_files_line_numbers():
    text = "# t\n\n## Setup\n\n```python\nimport torch\n```\n\n## Task 1: one\n\n```bash\n## Task 9: not a task\n```\n" \
           "```python\nx = 1\n```\n\nprose\n```python\ny = 2\n```\n"
    setup, tasks = sections(text)
    assert list(tasks) == [1] and tasks[1][0] == "one"
    lines = tasks[1][1].split("\n")
    assert lines[14] == "x = 1" and lines[19] == "y = 2"                  # lines 15 and 20 of the file
    assert setup.split("\n")[5] == "import torch"


def test_shown_output_keeps_the_last_state_of_progress_bars():
    text = "start\nstep:  10%|█\rstep:  50%|█████\rstep: 100%|██████████\n\n" + "\n".join(f"l{i}" for i in range(50))
    lines = shown_output(text)
    assert lines[:2] == ["start", "step: 100%|██████████"]
    assert len(lines) == 41 and lines[-1] == "… 12 more lines"


def test_shown_output_is_bounded_however_much_a_task_prints():
    """A task printing 60 MB (one line, or a million) is echoed in at most 41 lines of at most ~340 characters."""
    for text in ("x" * 60_000_000, "\n".join("y" * 60 for _ in range(1_000_000))):
        lines = shown_output(text)
        assert len(lines) <= 41 and sum(len(line) for line in lines) < 41 * 340
    assert shown_output("z" * 1000) == ["z" * 300 + " … (700 more characters)"]


def test_replies_are_plain_data_and_cannot_run_code():
    """What the checker accepts from the learner's process: tagged plain data, rebuilt through its own checks."""
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    damaged = wire.dump_reply(("returned", ("other", "x", "y"))).replace(b"returned", b"r")
    for payload in (pickle.dumps(Evil(), protocol=2), damaged):
        with pytest.raises(ValueError):
            wire.load_reply(payload)
    cfg = vit.ViTConfig(image_size=16, patch_size=4, dim=8, depth=1, num_heads=2, mlp_dim=8)
    value = {"t": torch.ones(2, requires_grad=True) * 2, "cfg": cfg, "n": np.int64(3), "k": (1, [2.5, None]),
             "odd": Evil(), "sd": OrderedDict(a=torch.zeros(1)), "size": torch.Size([2, 3])}
    back = wire.unpack(wire.load_reply(wire.dump_reply(("returned", wire.pack(value))))[1])
    assert torch.equal(back["t"], torch.full((2,), 2.0)) and back["cfg"] == cfg and back["n"] == 3
    assert back["k"] == (1, [2.5, None]) and back["odd"].type_name == "Evil"
    assert type(back["sd"]) is dict and back["size"] == (2, 3)
    forged = wire.pack(cfg)[1] | {"dim": ("int", 7)}                    # 7 is not a multiple of 2 heads
    assert isinstance(wire.unpack(("config", forged)), wire.Foreign)

    class Rude(Exception):
        def __str__(self):
            raise RuntimeError

    assert wire.text_of(Rude()) == "<a Rude whose str() raised>"


# ---- the solutions' plots, models and printed numbers are what the workbooks say --------------------------------

def printed(results, task: int) -> str:
    return next(r.output for r in results if r.task == task)


def test_solution_patch_grid_png_holds_the_photos_patches(graded):
    png = np.asarray(Image.open(graded[1] / "01_patch_embedding" / "patch_grid.png")).astype(float) / 255
    photo = load_sample_image("china.jpg")
    side = min(photo.shape[:2])
    top, left = (photo.shape[0] - side) // 2, (photo.shape[1] - side) // 2
    square = Image.fromarray(photo[top:top + side, left:left + side]).resize((224, 224), Image.BICUBIC)
    image = torch.from_numpy(np.asarray(square).copy()).float() / 255
    assert png.shape == (14 * 16 + 13 * 2, 14 * 16 + 13 * 2, 3)
    patches = vit.patchify(image.permute(2, 0, 1)[None], 16)[0].reshape(14, 14, 3, 16, 16)   # independent cut
    for i, j in [(0, 0), (3, 11), (13, 13)]:
        tile = png[i * 18:i * 18 + 16, j * 18:j * 18 + 16]                                     # (16, 16, 3)
        assert np.abs(tile - patches[i, j].permute(1, 2, 0).numpy()).max() <= 0.5 / 255 + 1e-6
    assert (png[16:18] == 1.0).all() and (png[:, 16:18] == 1.0).all()                          # the white gaps


def test_solution_results_carry_their_output_and_files(graded):
    results = graded[0]["04_fine_tuning"]
    assert results[3].files == [graded[1] / "04_fine_tuning" / name
                                for name in ("fine_tuned_attention_distance.png", "fine_tuned_digits.pt")]
    assert re.search(r"fine-tuned on 5-9 at 16×16: \d+\.\d%", printed(results, 4))


@pytest.fixture(scope="module")
def fine_tuned(graded):
    """The model the 04 solution fine-tuned on the digits 5-9 at 16×16, and its attention on held-out digits."""
    saved = torch.load(graded[1] / "04_fine_tuning" / "fine_tuned_digits.pt")
    cfg = vit.ViTConfig(**saved["config"])
    from exercises.grading.fine_tuning import digits
    images, labels = digits(5, 16, "test")
    with torch.no_grad():
        logits, out = vit.forward_intermediates(saved["params"], images, cfg)
    return cfg, logits, labels, out["attention"]


@pytest.mark.slow
def test_fine_tuned_model_is_trained(fine_tuned):
    _, logits, labels, _ = fine_tuned
    assert (logits.argmax(-1) == labels).float().mean() >= 0.8


@pytest.mark.slow
def test_fine_tuned_rollout_rows_sum_to_one_and_favour_the_token_itself(fine_tuned):
    cfg, _, _, attention = fine_tuned
    rollout = analysis.attention_rollout(attention)                  # (B, 65, 65)
    assert torch.allclose(rollout.sum(-1), torch.ones(rollout.shape[:2]), atol=1e-5)   # float32 sums of 65 terms
    assert (rollout >= 0).all()
    # every token keeps at least (1/2)^L of itself through the residual path
    assert (rollout.diagonal(dim1=-2, dim2=-1) >= 0.5 ** cfg.depth).all()


@pytest.mark.slow
def test_fine_tuned_attention_distance_grows_with_depth(fine_tuned):
    """Fig. 7 right, in pixels on the 16×16 digits (P = 2): the last layer attends farther than the first."""
    cfg, _, _, attention = fine_tuned
    distance = torch.stack([analysis.mean_attention_distance(a, cfg.grid_size, cfg.patch_size) for a in attention])
    per_layer = distance.mean(dim=1)                                  # (L,), mean over heads
    longest = math.dist((0, 0), (14, 14))                             # farthest pair of patch centres, pixels
    assert ((distance > 0) & (distance < longest)).all()
    assert per_layer[-1] > per_layer[0]
    assert per_layer[cfg.depth // 2:].mean() > per_layer[:cfg.depth // 2].mean()


@pytest.mark.slow
def test_fine_tuned_attention_distance_sits_near_uniform(fine_tuned):
    """Workbook 04's text: the digits model shows no locality, its heads at 7.5-8.3 px around the uniform 8.1 px."""
    cfg, _, _, attention = fine_tuned
    distance = torch.stack([analysis.mean_attention_distance(a, cfg.grid_size, cfg.patch_size) for a in attention])
    uniform = analysis.patch_distances(cfg.grid_size, cfg.patch_size).mean().item() * 64 / 65   # 64 of 65 keys
    assert uniform == pytest.approx(8.1, abs=0.05)
    assert (distance - uniform).abs().max() < 1.0


def test_position_similarity_of_sincos_peaks_at_own_position_and_falls_with_distance():
    grid = (7, 7)
    pos = torch.cat([torch.zeros(1, 64), vit.sincos_2d(grid, 64)])[None]
    sim = analysis.position_similarity(pos, grid)                     # (7, 7, 7, 7)
    for r in range(7):
        for c in range(7):
            tile = sim[r, c]
            assert tile.argmax().item() == r * 7 + c
            assert tile[r, c] == pytest.approx(1.0, abs=1e-6)
    centre = sim[3, 3]
    assert centre[3, 4] > centre[3, 6] and centre[4, 3] > centre[6, 3]   # nearer patches are more similar


def test_untrained_model_attends_almost_uniformly_to_noise():
    """On noise images, random weights give distances near the uniform-attention value."""
    cfg = vit.ViTConfig(image_size=32, patch_size=4, dim=32, depth=2, num_heads=2, mlp_dim=64, num_classes=0)
    params = vit.init_params(cfg, torch.Generator().manual_seed(0))
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    _, out = vit.forward_intermediates(params, images, cfg)
    uniform = analysis.patch_distances(cfg.grid_size, cfg.patch_size).mean().item()
    for a in out["attention"]:
        d = analysis.mean_attention_distance(a, cfg.grid_size, cfg.patch_size)
        # 64 of the 65 keys are patches, so uniform attention over all 65 tokens gives 64/65 of the uniform value
        assert torch.allclose(d, torch.full_like(d, uniform * 64 / 65), rtol=0.05)


# The numbers the workbooks state.

def test_workbook_01_vit_b16_counts():
    """86,567,656 is the count the official code's models_test.py pins for ViT-B/16 at 224 px, 1000 classes."""
    cfg = vit.ViTConfig()
    assert sum(math.prod(s) for s in vit.param_shapes(cfg).values()) == 86_567_656
    assert cfg.num_tokens == 197


def test_workbook_02_random_vit_ti_maps_of_the_photo():
    """Workbook 02's numbers for its random ViT-Ti/16 on the photo: distances spread from about 98 to 140 px around
    the uniform 116 px; the class token's last-layer map from about 0.003 to 0.011 around 1/197; rollout from about
    0.003 to 0.007."""
    from paper.models.family import paper_config
    photo = load_sample_image("china.jpg")
    side = min(photo.shape[:2])
    top, left = (photo.shape[0] - side) // 2, (photo.shape[1] - side) // 2
    square = Image.fromarray(photo[top:top + side, left:left + side]).resize((224, 224), Image.BICUBIC)
    images = (torch.from_numpy(np.asarray(square).copy()).float() / 255 - 0.5).div(0.5).permute(2, 0, 1)[None]
    cfg = paper_config("ViT-Ti/16", num_classes=10)
    params = vit.init_params(cfg, torch.Generator().manual_seed(0))
    with torch.no_grad():
        attention = vit.forward_intermediates(params, images, cfg)[1]["attention"]
    uniform = analysis.patch_distances(cfg.grid_size, 16).mean().item() * 196 / 197   # 196 of 197 keys are patches
    assert uniform == pytest.approx(115.9, abs=0.05)
    distances = torch.stack([analysis.mean_attention_distance(a, cfg.grid_size, 16) for a in attention])
    assert distances.min().item() == pytest.approx(98, abs=1) and distances.max().item() == pytest.approx(140, abs=1)
    last = analysis.class_token_map(attention[-1], cfg.grid_size)
    assert last.min().item() == pytest.approx(0.003, abs=5e-4) and last.max().item() == pytest.approx(0.011, abs=5e-4)
    rollout = analysis.attention_rollout(attention)[0, 0, 1:]
    assert rollout.min().item() == pytest.approx(0.003, abs=5e-4) and rollout.max().item() == pytest.approx(0.007, abs=5e-4)


@pytest.fixture(scope="module")
def pictures():
    """What workbooks 02-04 draw: the MNIST ViT `python -m paper.train --data mnist` trains (on first use), the same
    ViT untrained, their attention on 200 held-out digits, and which patches hold the strokes: those whose mean ink
    is more than 0.3 of the digit's inkiest patch's."""
    params, cfg = trained_model(*PICTURES_MODEL)
    untrained = vit.init_params(cfg, torch.Generator().manual_seed(0))
    _, test, _ = load_data("mnist")
    digits = torch.stack([test[i][0] for i in range(200)])                            # (200, 1, 28, 28) in [0, 1]
    images = preprocess(digits, eval_preprocessing(cfg.image_size))
    with torch.no_grad():
        attention = {name: vit.forward_intermediates(p, images, cfg)[1]["attention"]
                     for name, p in (("trained", params), ("untrained", untrained))}
    ink = vit.patchify(digits, cfg.patch_size).mean(dim=-1)                           # (200, 49): mean ink per patch
    strokes = (ink > 0.3 * ink.amax(dim=1, keepdim=True)).reshape(-1, *cfg.grid_size)   # (200, 7, 7)
    return params, cfg, attention, strokes


def per_layer_distance(attention: list, cfg) -> torch.Tensor:
    """(L,): each layer's mean attention distance in pixels, averaged over its heads."""
    return torch.stack([analysis.mean_attention_distance(a, cfg.grid_size, cfg.patch_size).mean() for a in attention])


def rollout_on_and_off_strokes(attention: list, cfg, strokes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per digit, the class token's rollout per stroke patch and per background patch: 2 × (B,)."""
    rollout = analysis.class_token_map(analysis.attention_rollout(attention), cfg.grid_size)   # (B, 7, 7)
    on = torch.stack([r[m].mean() for r, m in zip(rollout, strokes, strict=True)])
    off = torch.stack([r[~m].mean() for r, m in zip(rollout, strokes, strict=True)])
    return on, off


# What the pictures model showed when trained with seeds 0-9 on this project's AMD EPYC (`python -m paper.train
# --data mnist --seed S`; the workbooks read seed 0; seeds 7-9 trained by the code with fused AdamW). The bounds were
# first set from seeds 0-3; seeds 4-6, trained afterwards, fell outside two of them, and seed 9 reversed a relation
# (the border's ends less alike than two patches apart), so they come from all ten: first layer 12.1-13.3 px, last
# 13.1-13.9 px; rollout per stroke patch 0.034-0.041, per background patch 0.012-0.014, their ratio 2.3-3.3×,
# strokes ahead on all 200 digits; every E_pos tile peaking at its own patch, its nearest other patch a neighbour for
# 45-49 of the 49; mean cosine 0.65-0.70 beside, 0.39-0.47 diagonal, 0.12-0.20 two along, 0.13-0.35 at the two ends.
# The bounds below widen that spread by about half of it each way; the relations that held on every seed are
# asserted exactly.
PICTURES_SPREAD = {"first": (11.6, 13.8), "last": (12.6, 14.1), "on": (0.028, 0.048), "off": (0.0105, 0.0160),
                   "neighbours": 43, "mean_at": [(0.60, 0.75), (0.34, 0.51), (0.07, 0.24), (0.05, 0.45)]}


def within(value: float, bounds: tuple[float, float]) -> bool:
    return bounds[0] <= value <= bounds[1]


def test_pictures_model_first_layer_attends_nearer_than_the_last(pictures):
    """Workbooks 02 and 04: averaged over heads, the trained first layer attends nearer than its last, both nearer
    than uniform attention (14.1 px); training moved the first layer nearer than the untrained model's (13.5 px)."""
    _, cfg, attention, _ = pictures
    trained, untrained = per_layer_distance(attention["trained"], cfg), per_layer_distance(attention["untrained"], cfg)
    uniform = analysis.patch_distances(cfg.grid_size, cfg.patch_size).mean().item() * 49 / 50   # 49 of 50 keys
    assert trained[0] < trained[-1] < uniform
    assert trained[0] < untrained[0]
    # the numbers the text states: the trained ones within the seeds' spread (another processor trains other weights)
    assert within(trained[0].item(), PICTURES_SPREAD["first"]) and within(trained[-1].item(), PICTURES_SPREAD["last"])
    assert uniform == pytest.approx(14.1, abs=0.05)
    assert [untrained[0].item(), untrained[-1].item()] == pytest.approx([13.5, 14.3], abs=0.1)


def test_pictures_model_rollout_sits_on_the_strokes(pictures):
    """Workbook 02: the trained rollout gives a stroke patch more than twice a background patch's share, more on the
    strokes on (nearly) every digit; the untrained one leans the same way far less (0.023 against 0.017, 1.3×)."""
    _, cfg, attention, strokes = pictures
    on, off = rollout_on_and_off_strokes(attention["trained"], cfg, strokes)
    assert on.mean() > 2 * off.mean() and (on > off).float().mean() >= 0.95
    assert within(on.mean().item(), PICTURES_SPREAD["on"]) and within(off.mean().item(), PICTURES_SPREAD["off"])
    raw_on, raw_off = rollout_on_and_off_strokes(attention["untrained"], cfg, strokes)
    assert on.mean() / off.mean() > 1.5 * raw_on.mean() / raw_off.mean()
    assert [raw_on.mean().item(), raw_off.mean().item()] == pytest.approx([0.023, 0.017], abs=0.001)


def test_pictures_model_position_embedding_peaks_at_its_own_patch_and_neighbours(pictures):
    """Workbook 03, from scikit-learn's cosine_similarity: every tile of the trained E_pos peaks at its own patch, the
    most similar other patch is a neighbour for nearly every tile (not for all: which tiles miss changes with the
    seed); on average more similar beside than diagonally, more diagonally than two along a row or column. The two
    ends of a row or column (the blank border) are often alike again, but not on every seed: only bounded."""
    from sklearn.metrics.pairwise import cosine_similarity
    params, cfg, _, _ = pictures
    sim = torch.from_numpy(cosine_similarity(params["pos"][0, 1:].double().numpy()))   # (49, 49)
    rows, cols = torch.arange(49) // 7, torch.arange(49) % 7
    dr, dc = (rows[:, None] - rows[None]).abs(), (cols[:, None] - cols[None]).abs()
    assert torch.equal(sim.argmax(dim=1), torch.arange(49))
    nearest = sim.masked_fill(torch.eye(49, dtype=torch.bool), -2).argmax(dim=1)
    assert (torch.maximum(dr, dc)[torch.arange(49), nearest] == 1).sum() >= PICTURES_SPREAD["neighbours"]

    def mean_at(a: int, b: int) -> float:
        return sim[((dr == a) & (dc == b)) | ((dr == b) & (dc == a))].mean().item()

    beside, diagonal, two_along, ends = mean_at(0, 1), mean_at(1, 1), mean_at(0, 2), mean_at(0, 6)
    assert beside > diagonal > two_along
    assert all(within(v, b) for v, b in zip((beside, diagonal, two_along, ends), PICTURES_SPREAD["mean_at"],
                                            strict=True))


def test_workbook_04_zero_head_starts_at_log_k():
    from paper.models.heads import finetuning_head
    cfg = vit.ViTConfig(image_size=8, patch_size=2, in_channels=1, dim=32, depth=2, num_heads=4, mlp_dim=64,
                        num_classes=10, representation_size=32)
    params = vit.init_params(cfg, torch.Generator().manual_seed(0))
    params, cfg = finetuning_head(params, cfg, 5)
    images = torch.randn(6, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    logits = vit.forward(params, images, cfg)
    assert torch.equal(logits, torch.zeros(6, 5))
    loss = torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1, 2, 3, 4, 0]))
    assert loss.item() == pytest.approx(math.log(5), abs=1e-6)


# ---- the workbooks that train (TRAINING): what their texts state is what their solutions print --------------------

FIGURE = re.compile(r"(\d[\d,]*(?:\.\d+)?(?:e[-+]\d+)?)(?: ± (\d+\.\d+))?")     # 94.5 ± 1.3, 2,213, 8.0e-06


def quoted(name: str, task: int) -> tuple[list[str], str]:
    """What the texts of workbook `name` (the learner's and the solution's, which must agree) state of task `task`'s
    results: the printed lines they quote (the section's ```text blocks) and the rest of the section's prose."""
    found = []
    for path in (REPO / "exercises" / f"{name}.md", SOLUTIONS / f"{name}.md"):
        section = re.search(rf"\n## Task {task}:.*?(?=\n## |\Z)", path.read_text(), re.S)[0]
        found.append(("\n".join(re.findall(r"```text\n(.*?)\n```", section, re.S)).splitlines(),
                      re.sub(r"```.*?```", "", section, flags=re.S)))
    assert found[0] == found[1], f"{name}: the workbook and its solution state task {task}'s results differently"
    return found[0]


def figures(line: str) -> tuple[str, list[tuple[float, float]]]:
    """A printed line as (its words, each figure replaced by #; its figures, each (value, std over the seeds, 0 where
    the line gives none))."""
    return FIGURE.sub("#", line), [(float(m[1].replace(",", "")), float(m[2] or 0)) for m in FIGURE.finditer(line)]


def seed0_against_quoted(name: str, task: int, results) -> tuple[dict, dict]:
    """Seed 0's printed lines of the task (the suite's run) against the lines its text quotes (seeds 0-2): the same
    lines in the same order, each figure within 3 points of the quoted one (another processor trains other weights)
    and twice the quoted std (one seed is not the mean of three). -> the quoted lines and seed 0's, each by its label
    (the words before its first ": "): its figures after the label as {"mean", "std", "n"}, rows of seeds for
    paper.reports.statistics.separated."""
    lines, _ = quoted(name, task)
    shapes = [figures(line)[0] for line in lines]
    ran = [line for line in printed(results, task).splitlines() if figures(line)[0] in shapes]   # not warnings, bars
    assert [figures(line)[0] for line in ran] == shapes, printed(results, task)
    for line, line0 in zip(lines, ran, strict=True):
        for (value, std), (value0, _) in zip(figures(line)[1], figures(line0)[1], strict=True):
            assert abs(value0 - value) <= 3 + 2 * std, f"{name}: {line!r}: seed 0 printed {value0}"
    return by_label(lines, seeds=3), by_label(ran, seeds=1)


def by_label(lines: list[str], seeds: int) -> dict[str, list[dict]]:
    """Printed lines "label: figures", by label: the figures after it as rows of `seeds` seeds."""
    rows = {}
    for line in lines:
        label, colon, rest = line.strip().partition(": ")
        if colon:
            rows[label] = [{"mean": v, "std": s, "n": seeds} for v, s in figures(rest)[1]]
    return rows


def test_training_workbooks_type_no_figure_the_run_they_quote_did_not_print():
    """Every figure the texts of the training tasks state (a percentage, a count of points, a difference of logits) is
    one the run they quote printed; settings (steps, sizes, rates) are written without decimals or as code."""
    for name, (tasks, _) in TRAINING.items():
        for task in tasks:
            lines, prose = quoted(name, task)
            assert lines, f"{name}: task {task} quotes no run"
            printed_figures = set(re.findall(r"\d[\d,]*\.?\d*", "\n".join(lines)))
            for figure in typed_figures(prose):
                assert figure in printed_figures, f"{name}, task {task}: {figure} is in no line the text quotes"


def ahead(a: dict, b: dict) -> bool:
    """The texts' rule: a is ahead of b when its mean is higher by more than their two stds added."""
    return a["mean"] > b["mean"] and separated(a, b)


def level(a: dict, b: dict) -> bool:
    return not separated(a, b)


@pytest.mark.slow
def test_workbook_05_prints_what_its_text_states(graded):
    """The sweep: every model fits its training images, the ViT memorises 100; the ResNet is ahead of the ViT on 100
    images and on 1,000, the ViT's deficit narrower on 1,000. The probe: a shift of 1 or 2 pixels costs the ResNet
    less than the ViT, one of 4 pixels more. Differences called by the texts' rule on the quoted run; seed 0 holds
    those wide enough for one seed."""
    results = graded[0]["05_vit_vs_cnn"]
    sweep, sweep0 = seed0_against_quoted("05_vit_vs_cnn", 3, results)
    for rows, fits in ((sweep, 98.9), (sweep0, 97)):
        train, test = ({label: row[i]["mean"] for label, row in rows.items()} for i in (0, 1))
        assert min(train.values()) >= fits and train["vit on 100 images"] - test["vit on 100 images"] > 50
        gaps = [test[f"cnn on {n} images"] - test[f"vit on {n} images"] for n in (100, 1000)]
        assert gaps[0] > gaps[1] > 0
    assert all(ahead(sweep[f"cnn on {n} images"][1], sweep[f"vit on {n} images"][1]) for n in (100, 1000))
    probe, probe0 = seed0_against_quoted("05_vit_vs_cnn", 4, results)
    vit, cnn = probe["vit, points lost at shifts 1-4"], probe["cnn, points lost at shifts 1-4"]
    assert ahead(vit[0], cnn[0]) and ahead(vit[1], cnn[1]) and ahead(cnn[3], vit[3])
    vit, cnn = probe0["vit, points lost at shifts 1-4"], probe0["cnn, points lost at shifts 1-4"]
    assert vit[0]["mean"] > cnn[0]["mean"] and vit[1]["mean"] > cnn[1]["mean"]


STUDENTS = ("no teacher (λ = 0)", "hard distillation", "soft distillation (τ = 3, λ = 0.1)")


@pytest.mark.slow
def test_workbook_06_prints_what_its_text_states(graded):
    """Every student fits its training digits; the distillation heads learn the teacher, the untrained one of λ = 0
    does not; the three students are level on the held-out digits, the teacher ahead of each."""
    rows, rows0 = seed0_against_quoted("06_deit", 4, graded[0]["06_deit"])
    for table, fits, learns in ((rows, 99.8, 90), (rows0, 99, 85)):
        teacher = table["convnet teacher"][1]["mean"]
        for student in STUDENTS:
            train, test, agrees = (figure["mean"] for figure in table[student])
            assert train >= fits and teacher > test + table[student][1]["std"]
            assert agrees >= learns if student != STUDENTS[0] else agrees < 20
    assert all(level(rows[a][1], rows[b][1]) for a in STUDENTS for b in STUDENTS)


@pytest.mark.slow
def test_workbook_07_prints_what_its_text_states(graded):
    """The head alone cannot fit the digits 5-9, LoRA and full fine-tuning do; on the held-out digits each row is ahead
    of the one before, LoRA nearer full fine-tuning than the head alone; merged adapters change the logits by float32
    rounding only."""
    results = graded[0]["07_lora"]
    rows, rows0 = seed0_against_quoted("07_lora", 4, results)
    runs = ("head alone, digits 5-9", "LoRA on W_q, W_v (r=4) + head, digits 5-9", "every weight, digits 5-9")
    for table in (rows, rows0):
        (head, _), (lora, lora_test), (full, full_test) = (table[run] for run in runs)
        assert head["mean"] < 90 and min(lora["mean"], full["mean"]) >= 99
        head_test = table[runs[0]][1]
        assert lora_test["mean"] - head_test["mean"] > full_test["mean"] - lora_test["mean"] > 0
        assert table["merged into the weights"][0]["mean"] < 1e-4
    assert ahead(rows[runs[1]][1], rows[runs[0]][1]) and ahead(rows[runs[2]][1], rows[runs[1]][1])
    assert "LoRA trains 2,213 of 35,141 numbers (6.3%)" in printed(results, 4)


@pytest.mark.slow
def test_workbook_09_prints_what_its_text_states(graded):
    """Every run fits its training digits; at either learning rate the two poolings are level; lr 1e-2 is ahead of
    1e-3 for class-token pooling, and for average pooling higher by too little to call."""
    rows, rows0 = seed0_against_quoted("09_encoder_block", 5, graded[0]["09_encoder_block"])
    for table, fits in ((rows, 99.9), (rows0, 99)):
        assert all(train["mean"] >= fits for train, _ in table.values())
        assert table["token pooling, Adam lr 0.01"][1]["mean"] > table["token pooling, Adam lr 0.001"][1]["mean"]
    for lr in ("0.001", "0.01"):
        assert level(rows[f"token pooling, Adam lr {lr}"][1], rows[f"avg pooling, Adam lr {lr}"][1])
    assert ahead(rows["token pooling, Adam lr 0.01"][1], rows["token pooling, Adam lr 0.001"][1])
    low, high = rows["avg pooling, Adam lr 0.001"][1], rows["avg pooling, Adam lr 0.01"][1]
    assert high["mean"] > low["mean"] and level(high, low)



def test_workbook_12_quotes_the_digits_mean_colour_shares():
    """Task 2's quoted shares of the 8 mean colours among the digits' 2×2 patches, from lowlevel.mpp.targets."""
    from lowlevel.mpp import MPPConfig, targets
    images = torch.tensor(load_digits().images, dtype=torch.float32)[:, None] / 16.0
    train = images[torch.randperm(len(images), generator=torch.Generator().manual_seed(0))[:1400]]
    cfg = vit.ViTConfig(image_size=8, patch_size=2, in_channels=1, dim=32, depth=1, num_heads=4, mlp_dim=64,
                        num_classes=10)
    classes = targets(train, cfg, MPPConfig())
    shares = torch.bincount(classes.flatten(), minlength=8) / classes.numel()
    line = "the digits' 2×2 patches by mean colour 0-7: " + ", ".join(f"{s:.1%}" for s in shares)
    for path in (REPO / "exercises" / "12_masked_patch_prediction.md", SOLUTIONS / "12_masked_patch_prediction.md"):
        assert f"```text\n{line}\n```" in path.read_text()
        assert f"right for {shares[0]:.1%} of the patches" in path.read_text()


@pytest.mark.slow
def test_workbook_12_prints_what_its_text_states(graded):
    """Task 2 prints the quoted shares. The pre-trained model names held-out patches' mean colours more often than
    always guessing colour 0 (less than half of the patches) does; both fine-tuned models fit their 100 labelled
    digits; on the held-out digits the pre-trained one is ahead of the one from scratch (the quoted run, by the
    texts' rule)."""
    results = graded[0]["12_masked_patch_prediction"]
    assert quoted_block("12_masked_patch_prediction", 2) in printed(results, 2)
    rows, rows0 = seed0_against_quoted("12_masked_patch_prediction", 4, results)
    runs = ("MPP pre-trained, then fine-tuned, 100 labelled digits", "from scratch, 100 labelled digits")
    for table, fits in ((rows, 99.9), (rows0, 99)):
        assert table["mean colour of held-out chosen patches"][0]["mean"] > 50
        assert all(table[run][0]["mean"] >= fits for run in runs)
    assert ahead(rows[runs[0]][1], rows[runs[1]][1])


def quoted_block(name: str, task: int) -> str:
    """The ```text block of task `task`'s section in the workbook `name`."""
    section = re.search(rf"\n## Task {task}:.*?(?=\n## |\Z)", (REPO / "exercises" / f"{name}.md").read_text(), re.S)[0]
    return re.search(r"```text\n(.*?)\n```", section, re.S)[1]

@pytest.mark.slow
def test_workbook_10_prints_the_libraries_defaults_and_shifts_it_states(graded):
    out = printed(graded[0]["10_reading_timm_and_transformers"], 3)
    assert ("{'timm': {'layer_norm_eps': 1e-06, 'gelu': 'exact'}, 'transformers': {'layer_norm_eps': 1e-12, "
            "'gelu': 'exact'}}") in out
    shifts = [float(s) for s in re.findall(r"logits move by up to ([\d.e+-]+)", out)]
    assert len(shifts) == 2 and all(3e-4 <= s <= 5e-4 for s in shifts), out
    maps = printed(graded[0]["10_reading_timm_and_transformers"], 4)
    assert "timm: 3 maps" in maps and "transformers: 3 maps" in maps


def test_workbook_11_components_of_the_trained_filters_against_sklearn():
    """The numbers workbook 11 states, from scikit-learn's PCA (an implementation we did not write) on the model
    `python -m paper.train` trains: variance spread evenly at initialisation, concentrated after training, and a
    flat last component."""
    trained, cfg = trained_model(*EXERCISE_MODEL)
    initial = vit.init_params(cfg, torch.Generator().manual_seed(0))
    shares = {}
    for name, params in (("initial", initial), ("trained", trained)):
        pca = PCA(n_components=4).fit(params["patch.weight"].double().numpy())
        shares[name] = pca.explained_variance_ratio_
        last = pca.components_[-1]
    assert shares["initial"] == pytest.approx([0.33, 0.25, 0.23, 0.19], abs=0.01)    # the seeded initialisation
    # Trained with seeds 0-6 on this project's AMD EPYC (`python -m paper.train --data digits --stages pretrain --seed
    # S`; the workbook reads seed 0): shares 0.35-0.43, 0.25-0.31, 0.20-0.25, 0.11-0.14, the last component's entries
    # 0.29-0.67 in size, of one sign. Bounds widen that spread; the relations held on every seed.
    concentrated = shares["trained"]
    assert all(a > b for a, b in zip(concentrated[:-1], concentrated[1:], strict=True)) and concentrated[0] > shares["initial"][0]
    assert concentrated[-1] < shares["initial"][-1]
    for share, (low, high) in zip(concentrated, [(0.30, 0.48), (0.21, 0.35), (0.16, 0.29), (0.08, 0.17)], strict=True):
        assert low <= share <= high, concentrated
    assert len(set(np.sign(last))) == 1 and np.abs(last) == pytest.approx(np.full(4, 0.5), abs=0.3)


def test_workbook_05_grader_formulas_equal_the_libraries_when_nothing_is_wrong():
    """The hand formulas the 05 grader bends into known mistakes are right when unbent: parameters equal
    param_count and torchvision's, multiply-adds equal torch.utils.flop_counter's."""
    from exercises.grading import vit_vs_cnn as g
    from paper.references.vit import timm_vit
    from paper.reports.compare_summary import multiply_adds

    for cfg in g.VIT_CASES:
        assert g.vit_params_by_hand(cfg) == sum(p.numel() for p in timm_vit(cfg).parameters())
        params = vit.init_params(cfg)
        assert g.vit_macs_by_hand(cfg) == multiply_adds(lambda x, p=params, c=cfg: vit.forward(p, x, c), cfg)
    for cfg in g.CNN_CASES:
        net = g.resnet18(cfg).eval()
        assert g.resnet_params_by_hand(cfg) == sum(p.numel() for p in net.parameters())
        assert g.resnet_macs_by_hand(cfg) == multiply_adds(net, cfg)


@pytest.fixture(scope="module")
def hybrid_solution(tmp_path_factory):
    """Workbook 13's solution checked as a learner checks it."""
    return check_workbook(SOLUTIONS / "13_hybrid.md", timeout=120, output_dir=tmp_path_factory.mktemp("13_hybrid"))


@pytest.mark.slow
def test_workbook_13_prints_what_its_text_states(hybrid_solution):
    """Every figure workbook 13 quotes, printed by its solution and computed here from the project: token counts from
    the configs, multiply-adds from torch.utils.flop_counter on lowlevel.forward and resnet.feature_map (parameters on
    the meta device), the standardised variance σ²/(σ² + ε) from the kernel the solution draws."""
    from lowlevel import resnet
    from lowlevel.encoder import params_under
    from paper.models.hybrid_configs import hybrid_config
    from paper.models.vit_configs import vit_config
    from paper.reports.compare_summary import multiply_adds
    from paper.training.recipes import MNIST_HYBRID

    text = (SOLUTIONS / "13_hybrid.md").read_text()
    assert text.split("## Setup")[0] == (REPO / "exercises" / "13_hybrid.md").read_text().split("## Setup")[0]
    assert all(r.passed for r in hybrid_solution), [r.line() for r in hybrid_solution if not r.passed]

    kernel = torch.randn(64, 3, 7, 7, generator=torch.Generator().manual_seed(0)) * 0.05 + 0.01
    var = kernel.flatten(1).double().var(1, unbiased=False)
    shown = var / (var + 1e-8)
    out = printed(hybrid_solution, 1)
    assert f"variance {shown.min():.6f} to {shown.max():.6f}" in out and "-> (1, 64, 112, 112)" in out
    assert f"{shown.min():.6f} to\n{shown.max():.6f}" in text
    assert resnet.same_padding(torch.zeros(1, 1, 224, 224), 7, 2).shape[-1] == 229    # 2 + 224 + 3
    assert resnet.same_padding(torch.zeros(1, 1, 1, 224), 7, 2)[..., :2].eq(0).all()

    out = printed(hybrid_solution, 2)
    assert float(re.search(r"F.group_norm: largest difference ([\d.e+-]+)", out)[1]) < 1e-5
    assert "-> (1, 512, 28, 28)" in out

    out = printed(hybrid_solution, 3)
    counts = [hybrid_config("R50+ViT-B/16").num_tokens, hybrid_config("R50+ViT-B/16", image_size=384).num_tokens,
              hybrid_config("R50+ViT-L/32").num_tokens, MNIST_HYBRID.num_tokens]
    assert counts == [197, 577, 50, 50] == [vit_config("ViT-B/16").num_tokens, 577, 50, 50]
    assert "R50+ViT-B/16 at 224 px: 197 tokens; at 384 px: 577; R50+ViT-L/32 at 224 px: 50; MNIST hybrid at 28 px: 50" in out
    assert hybrid_config("R50+ViT-B/16").feature_size == (14, 14) and hybrid_config("R50+ViT-B/16").patch_channels == 1024
    for line in ("(vit.embed): largest difference", "convolution by E: largest difference"):
        assert float(re.search(re.escape(line) + r" ([\d.e+-]+)", out)[1]) < 1e-5
    assert "z_0 (2, 50, 64)" in out

    def counted(cfg):
        with torch.device("meta"):
            params = vit.init_params(cfg)
        whole = multiply_adds(lambda x: vit.forward(params, x.to("meta"), cfg), cfg)
        cnn = multiply_adds(lambda x: resnet.feature_map(params_under(params, "backbone."), x.to("meta"), cfg.backbone),
                            cfg) if cfg.backbone else 0
        return cnn, whole - cnn

    out = printed(hybrid_solution, 4)
    (cnn, transformer), (_, plain), (small_cnn, small) = (counted(c) for c in (
        hybrid_config("R50+ViT-B/16"), vit_config("ViT-B/16"), MNIST_HYBRID))
    hybrid = cnn + transformer
    quoted = [f"{cnn / 1e9:.2f} G", f"{transformer / 1e9:.2f} G", f"{hybrid / 1e9:.2f} G", f"{100 * cnn / hybrid:.1f}%",
              f"{hybrid / plain:.2f}×", f"{plain / 1e9:.2f} G", f"{small_cnn / 1e6:.2f} M",
              f"{(small_cnn + small) / 1e6:.2f} M", f"{100 * small_cnn / (small_cnn + small):.1f}%"]
    assert quoted == ["3.93 G", "17.60 G", "21.54 G", "18.3%", "1.23×", "17.56 G", "0.38 M", "8.41 M", "4.5%"]
    tail = text.split("## Task 4")[1].split("```\n\nA correct answer")[1]
    for figure in quoted:
        assert figure in out and figure.replace(" G", "").replace(" M", "") in tail, figure
    assert transformer - plain == 196 * (1024 - 16 * 16 * 3) * 768     # the same encoder, a wider patch embedding
    assert [f.name for f in next(r for r in hybrid_solution if r.task == 4).files] == ["hybrid_cost.png"]
