"""Grade a workbook: extract the learner's code, run it in a separate process with a time limit, and report one
line per task. Whatever the learner's code does (syntax error, exception, hang, crash), the checker reports it
for that task and carries on."""
import json
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from exercises.grading import GRADERS
from exercises.runner import SETUP_SECONDS

REPO = Path(__file__).resolve().parent.parent
WORKBOOKS = REPO / "exercises"
HEADING = re.compile(r"^##\s+(Setup|Task\s+(\d+)\b.*)$")
CODE_BLOCK = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)


@dataclass
class Result:
    task: int
    title: str
    passed: bool
    message: str = ""
    hint: str = ""

    def line(self) -> str:
        head = f"  task {self.task} ({self.title}):"
        return f"{head} PASS" if self.passed else f"{head} FAIL: {self.message}. Hint: {self.hint}"


def sections(markdown: str) -> tuple[str, dict[int, tuple[str, str]]]:
    """The setup code and, per task number, (title, code): the ```python blocks under '## Setup' and under each
    '## Task N: title' heading, joined in order. Blocks elsewhere (recap, examples) are not run."""
    setup, tasks, current = [], {}, None
    parts = re.split(r"(?m)^(##\s+.*)$", markdown)
    for part in parts:
        m = HEADING.match(part)
        if part.startswith("##"):
            current = None if m is None else ("setup" if m[2] is None else int(m[2]))
            if isinstance(current, int):
                title = part.split(":", 1)[1].strip() if ":" in part else f"task {current}"
                tasks[current] = (title, [])
            continue
        blocks = CODE_BLOCK.findall(part)
        if current == "setup":
            setup += blocks
        elif current is not None:
            tasks[current][1].extend(blocks)
    return "\n".join(setup), {n: (title, "\n".join(code)) for n, (title, code) in tasks.items()}


def check_workbook(path: Path, *, timeout: float = 120.0, output_dir: Path | None = None,
                   only: int | None = None) -> list[Result]:
    """Grade every task of the workbook at `path` (or only task `only`); plots go to `output_dir` (default: the
    workbook's folder). The grader is chosen by the file name, so a copy of a workbook keeps its grader."""
    path = Path(path)
    graders = GRADERS.get(path.stem)
    if graders is None:
        return [Result(0, path.name, False, f"no grader for a workbook named {path.stem!r}",
                       f"keep the file name, one of {sorted(GRADERS)}")]
    try:
        setup, found = sections(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as e:
        return [Result(0, path.name, False, f"cannot read the workbook: {e}", "pass the path of a .md workbook")]
    numbers = [n for n in sorted(graders) if only is None or n == only]
    results = {n: Result(n, f"task {n}", False, f"the workbook has no '## Task {n}' section",
                         f"keep the '## Task {n}: ...' heading of the original workbook")
               for n in numbers if n not in found}
    runnable = [n for n in sorted(graders) if n in found and (only is None or n <= only)]
    if only is not None and only not in found:
        runnable = []
    output_dir = Path(output_dir or path.parent).resolve()
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        return [Result(n, f"task {n}", False, f"cannot write plots to {output_dir}: {e}",
                       "pass a writable folder with --output-dir") for n in numbers]
    if runnable:
        results.update(run_in_child(path.stem, setup, {n: found[n] for n in runnable}, timeout, output_dir, only))
    return [results[n] for n in numbers]


def run_in_child(workbook: str, setup: str, tasks: dict[int, tuple[str, str]], timeout: float,
                 output_dir: Path, only: int | None) -> dict[int, Result]:
    """Run the tasks in a child process (exercises/runner.py) and collect its per-task results."""
    with tempfile.TemporaryDirectory() as tmp:
        spec, results_file = Path(tmp) / "spec.json", Path(tmp) / "results.jsonl"
        spec.write_text(json.dumps({"workbook": workbook, "setup": setup, "timeout": timeout, "only": only,
                                    "output_dir": str(output_dir), "results": str(results_file),
                                    "tasks": {n: code for n, (_, code) in tasks.items()}}))
        env = {**os.environ, "MPLBACKEND": "Agg", "PYTHONPATH": str(REPO)}
        try:
            proc = subprocess.run([sys.executable, "-m", "exercises.runner", str(spec)], cwd=REPO, env=env,
                                  capture_output=True, text=True,
                                  timeout=2 * timeout * len(tasks) + SETUP_SECONDS + 30)   # code + checks per task
            ended = f"the checking process ended with exit code {proc.returncode}"
            detail = (proc.stderr.strip().splitlines() or [""])[-1]
        except subprocess.TimeoutExpired:
            ended, detail = "the checking process was stopped after its overall time limit", ""
        lines = results_file.read_text().splitlines() if results_file.exists() else []
    done = {}
    for line in lines:
        try:
            r = json.loads(line)
        except json.JSONDecodeError:   # a line cut short by a process that died while writing it
            continue
        done[r["task"]] = Result(r["task"], tasks[r["task"]][0], r["passed"], r["message"], r["hint"])
    graded = [n for n in tasks if only is None or n == only]
    missing = [n for n in graded if n not in done]
    for i, n in enumerate(missing):
        message = f"{ended} while running this task{': ' + detail if detail else ''}" if i == 0 else \
            f"not checked: {ended} during task {missing[0]}"
        done[n] = Result(n, tasks[n][0], False, message,
                         "something in your code stopped or froze Python itself (os._exit, a crash, running out of "
                         "memory, a hang inside a C call): run the task's code on its own")
    return done


def workbooks() -> list[Path]:
    """The workbooks a learner completes: exercises/NN_*.md."""
    return sorted(WORKBOOKS.glob("[0-9][0-9]_*.md"))
