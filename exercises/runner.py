"""The separate process that runs a learner's workbook: `python -m exercises.runner SPEC.json`.

The setup block and each task's blocks run in one shared namespace, in order, each under a time limit; then the
task is graded. One JSON line per graded task is appended to the results file as soon as it is known, so a
process that hangs or dies still leaves the results of the tasks before it."""
import json
import linecache
import signal
import sys
import traceback
from contextlib import contextmanager
from pathlib import Path

import torch

from exercises.grading import GRADERS
from exercises.grading.common import Mistake

SETUP_SECONDS = 120.0


class TaskTimeout(BaseException):
    """Raised by the alarm; a BaseException so that a learner's `except Exception` cannot swallow it."""


@contextmanager
def time_limit(seconds: float):
    def alarm(signum, frame):
        raise TaskTimeout()
    previous = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def run_block(code: str, name: str, ns: dict, seconds: float) -> tuple[str, str] | None:
    """Execute a block; None when it ran, else (message, hint)."""
    linecache.cache[f"<{name}>"] = (len(code), None, code.splitlines(True), f"<{name}>")  # source for tracebacks
    try:
        compiled = compile(code, f"<{name}>", "exec")
    except SyntaxError as e:
        return (f"syntax error in {name}, line {e.lineno}: {e.msg}",
                "fix the Python syntax: look at the line shown and the one before it")
    try:
        with time_limit(seconds):
            exec(compiled, ns)
    except TaskTimeout:
        return f"{name} did not finish within {seconds:g} s", "look for an endless loop or a far too large input"
    except NotImplementedError:
        return f"{name} is not done yet", "replace the `raise NotImplementedError` with your answer"
    except NameError as e:
        return (f"{name} raised NameError: {e}",
                "this name should come from the setup or an earlier task: finish the earlier tasks first, or check "
                "the spelling")
    except BaseException as e:  # noqa: B036 - learner code may raise anything, SystemExit included
        frames = [f for f in traceback.extract_tb(e.__traceback__) if f.filename == f"<{name}>"]
        where = f", line {frames[-1].lineno}: {frames[-1].line.strip()}" if frames else ""
        return f"{name} raised {type(e).__name__}: {e}{where}", "read the error and the line it points at"
    return None


def grade(grader, ns: dict, output_dir: Path, seconds: float) -> tuple[str, str] | None:
    """Run the hidden checks of one task; None when they pass, else (message, hint)."""
    try:
        with time_limit(seconds):
            grader(ns, output_dir)
    except Mistake as m:
        return m.message, m.hint
    except TaskTimeout:
        return (f"the checks did not finish within {seconds:g} s",
                "look for an endless loop, or work that grows far too fast with the input size")
    except BaseException as e:  # noqa: B036 - whatever the learner's return value makes the checks raise
        return (f"could not check the answer: {type(e).__name__}: {e}",
                "return exactly what the docstring asks for (types and shapes)")
    return None


def run_tasks(workbook: str, setup: str, tasks: dict[int, str], output_dir: Path, seconds: float,
              only: int | None, report) -> None:
    """Run the setup and the tasks' code in order in one namespace and grade each task (or only task `only`),
    calling report(task number, None or (message, hint)) as each result is known."""
    graders = GRADERS[workbook]
    ns = {"__name__": "__workbook__", "OUTPUT_DIR": output_dir}
    # the setup block is the workbook's own imports and helpers: it gets at least SETUP_SECONDS however short the
    # learner's time limit, so that a slow import is never reported as a hang
    setup_failure = run_block(setup, "setup", ns, max(seconds, SETUP_SECONDS)) if setup else None
    for number, code in tasks.items():
        graded = only is None or number == only
        if setup_failure:
            if graded:
                report(number, (f"the setup block failed: {setup_failure[0]}", setup_failure[1]))
            continue
        failure = run_block(code, f"task {number}", ns, seconds)
        if graded:
            report(number, failure or grade(graders[number], ns, output_dir, seconds))
        if number == only:
            break


def main(spec_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    torch.set_num_threads(1)   # workbook tensors are small: one thread is faster and gives the same numbers each run
    with open(spec["results"], "a") as results:
        def report(number: int, failure: tuple[str, str] | None) -> None:
            message, hint = failure or ("", "")
            results.write(json.dumps({"task": number, "passed": failure is None, "message": message,
                                      "hint": hint}) + "\n")
            results.flush()

        run_tasks(spec["workbook"], spec["setup"], {int(n): code for n, code in spec["tasks"].items()},
                  Path(spec["output_dir"]), spec["timeout"], spec["only"], report)


if __name__ == "__main__":
    main(sys.argv[1])
