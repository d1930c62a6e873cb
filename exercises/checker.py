"""Grade a workbook: `check_workbook(path)`, or `python -m exercises check` (exercises/__main__.py).

The learner's code runs in another process (exercises/runner.py) that cannot reach the checker's state: limited in
memory, processes and CPU time, in a scratch directory, its whole process group killed at the end, and each request
under a wall-clock limit that the checker enforces by killing it, whatever the code does with signals. It is
confined by Landlock (exercises/sandbox.py): it changes no file outside its scratch folders (its plots are copied
out by the checker), so neither the graders nor a module the checker imports later can be planted, and it can
neither trace nor signal the checker. The graders
(exercises/grading/) run here: they send hidden inputs to the learner's functions and compare what comes back with
the reference in this process.

Each task is graded alone. After a task, the grader's REFERENCE functions replace the learner's in the learner's
namespace; when the task failed, its block runs again from the original workbook (its definitions left out, the
references in their place), so that the values later tasks read are right. A task that hangs or kills its process
costs that task only: a fresh process runs the setup and replays the earlier tasks the same way.
"""
import ast
import contextlib
import json
import os
import pickle
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from exercises import wire
from exercises.grading import GRADERS
from exercises.grading.common import Mistake, checks_written
from exercises.notebooks import in_cells, markdown_of

REPO = Path(__file__).resolve().parent.parent
WORKBOOKS = REPO / "exercises"
HEADING = re.compile(r"^##\s+(Setup|Task\s+(\d+)\b.*)$")
SETUP_SECONDS = 120.0     # the setup block's imports get at least this long, however short --timeout is
START_SECONDS = 60.0      # starting Python and importing torch on a busy machine
MEMORY_BYTES = 8 << 30    # address space of the learner's process: the largest, workbook 10's, peaks at 4.6 GiB
SHOWN_LINES = 40          # of a task's printed output
SHOWN_WIDTH = 300         # characters of each of those lines


@dataclass
class Result:
    task: int
    title: str
    passed: bool
    message: str = ""
    hint: str = ""
    output: str = ""                                   # what the task's code printed, progress bars included
    files: list[Path] = field(default_factory=list)    # the files the task's code wrote into the output folder

    def line(self) -> str:
        head = f"  task {self.task} ({self.title}):"
        return f"{head} PASS" if self.passed else f"{head} FAIL: {self.message}. Hint: {self.hint}"


# ---- the workbook's text --------------------------------------------------------------------------------------

def sections(markdown: str) -> tuple[str, dict[int, tuple[str, str]]]:
    """The setup code and, per task number, (title, code): the ```python blocks under '## Setup' and under each
    '## Task N: title' heading. Every other line is blank in the code, so that its line numbers are the file's.
    Blocks elsewhere (recap, examples) are not run."""
    lines = markdown.splitlines()
    kept: dict[object, set[int]] = {"setup": set()}
    titles, current, fence = {}, None, None
    for i, line in enumerate(lines):
        if fence is not None:
            if line.strip() == "```":
                fence = None
            elif fence == "python" and current is not None:
                kept[current].add(i)
            continue
        if line.startswith("```"):
            fence = line[3:].strip()
            continue
        if line.startswith("##"):
            m = HEADING.match(line)
            current = None if m is None else ("setup" if m[2] is None else int(m[2]))
            if isinstance(current, int):
                titles[current] = line.split(":", 1)[1].strip() if ":" in line else f"task {current}"
                kept[current] = set()

    def code(key) -> str:
        return "\n".join(line if i in kept[key] else "" for i, line in enumerate(lines)) if kept[key] else ""

    return code("setup"), {n: (titles[n], code(n)) for n in titles}


def defined_functions(code: str) -> list[str]:
    """The functions a block defines at its top level."""
    return [node.name for node in ast.parse(code).body if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))]


def without_definitions(code: str) -> str:
    """The block with its top-level function and class definitions blanked out (line numbers kept)."""
    lines = code.split("\n")
    for node in ast.parse(code).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            start = min([node.lineno] + [d.lineno for d in node.decorator_list])
            lines[start - 1:node.end_lineno] = [""] * (node.end_lineno - start + 1)
    return "\n".join(lines)


def shown_output(text: str) -> list[str]:
    """Printed output as a terminal would leave it: each line's last carriage-return segment (progress bars end
    in their final state), blank lines dropped, at most SHOWN_LINES lines."""
    lines = [line.rsplit("\r", 1)[-1].rstrip() for line in text.replace("\r\n", "\n").split("\n")]
    lines = [line if len(line) <= SHOWN_WIDTH else f"{line[:SHOWN_WIDTH]} … ({len(line) - SHOWN_WIDTH:,} more "
             f"characters)" for line in lines if line.strip()]
    if len(lines) > SHOWN_LINES:
        lines = lines[:SHOWN_LINES] + [f"… {len(lines) - SHOWN_LINES} more lines"]
    return lines


# ---- the learner's namespace, in its own process ---------------------------------------------------------------

class LearnerStopped(Exception):
    """The learner's process is gone: it ran past its time limit (`timed_out`), ended, or sent an unreadable reply;
    `what` says which, `hint` what the learner's code may have done."""

    def __init__(self, what: str, timed_out: bool = False):
        super().__init__(what)
        self.what, self.timed_out = what, timed_out
        self.hint = PIPE_HINT if "reply" in what else CRASH_HINT


class Namespace:
    """The learner's namespace as graders see it (`ns` in exercises/grading/): calls, reads and binds go to the
    learner's process as requests, each within `deadline` (time.monotonic()) while a task's checks run."""
    deadline: float | None = None
    alive = True

    def close(self) -> None:
        pass

    def request(self, request: tuple) -> tuple:
        raise NotImplementedError

    def seconds_left(self, default: float) -> float:
        return default if self.deadline is None else max(0.0, self.deadline - time.monotonic())

    def call(self, name: str, *args, **kwargs) -> tuple:
        """The reply to calling the learner's `name` (exercises/grading/common.py's `call` reads it)."""
        return self.request(("call", self.seconds_left(SETUP_SECONDS), name, args, kwargs))

    def get(self, name: str, default=None):
        """The value of the learner's variable `name` (a copy, plain data: exercises/wire.py), or `default`."""
        reply = self.request(("get", self.seconds_left(SETUP_SECONDS), name))
        if reply[0] == "missing":
            return default
        try:
            if reply[0] == "value" and len(reply) == 2:
                return wire.unpack(reply[1])
        except ValueError:
            pass
        raise Mistake(f"the value of `{name}` could not be read", "keep to plain values: tensors, numbers, strings, "
                      "lists, tuples, dicts and configs")


class Learner(Namespace):
    """The learner's process (exercises/runner.py), in `scratch`, its output appended to `log`."""

    def __init__(self, workbook: Path, scratch: Path, writable: list[Path], log, cpu_seconds: float):
        commands_in, self.commands = os.pipe()
        self.replies, replies_out = os.pipe()
        settings = {"memory": MEMORY_BYTES, "cpu": cpu_seconds, "workbook": str(workbook),
                    "writable": [str(scratch), *map(str, writable)]}
        # one thread: the same numbers on every machine, and no library starts a thread pool, which the learner's
        # process could not (RLIMIT_NPROC 0); caches and temporary files in the scratch folder, the only one it may
        # write to besides the plots' (exercises/sandbox.py)
        threads = {name: "1" for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}
        places = {name: str(scratch) for name in ("TMPDIR", "MPLCONFIGDIR", "XDG_CACHE_HOME")}
        env = {**os.environ, **threads, **places, "MPLBACKEND": "Agg", "PYTHONPATH": str(REPO)}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "exercises.runner", str(commands_in), str(replies_out), json.dumps(settings)],
            pass_fds=(commands_in, replies_out), cwd=scratch, env=env, stdin=subprocess.DEVNULL, stdout=log,
            stderr=subprocess.STDOUT, start_new_session=True)
        os.close(commands_in)
        os.close(replies_out)
        os.set_blocking(self.commands, False)
        os.set_blocking(self.replies, False)
        self.pid, self.ended, self.number = None, None, 0
        try:
            message = self.message(time.monotonic() + START_SECONDS, START_SECONDS)
        except LearnerStopped:
            self.close()
            raise
        if message[0] != "started" or len(message) != 2 or not isinstance(message[1], int):
            self.stop("did not start")
            raise LearnerStopped(self.ended)
        self.pid = message[1]

    @property
    def alive(self) -> bool:
        return self.ended is None

    def request(self, request: tuple) -> tuple:
        if self.ended is not None:
            raise LearnerStopped(self.ended)
        self.number += 1
        seconds = request[1]
        deadline = time.monotonic() + seconds
        try:
            wire.send(self.commands, pickle.dumps((self.number, request)), deadline)
        except (wire.TimedOut, wire.Closed):
            pass             # it stopped reading: its reply (or its end) says why
        while True:
            message = self.message(deadline, seconds)
            if message[0] == "reply" and len(message) == 3 and isinstance(message[2], tuple) and message[2] \
                    and isinstance(message[2][0], str):
                if message[1] == self.number:
                    return message[2]
                if isinstance(message[1], int) and message[1] < self.number:
                    continue          # a second answer to an earlier request: one of them was written by the learner
            self.stop("sent a reply the checker cannot read")
            raise LearnerStopped(self.ended)

    def message(self, deadline: float, seconds: float) -> tuple:
        """The next message from the learner's process or its supervisor; its end is a LearnerStopped."""
        try:
            message = wire.load_reply(wire.receive(self.replies, deadline))
        except wire.TimedOut:
            self.stop(f"was stopped after {seconds:g} s")
            raise LearnerStopped(self.ended, timed_out=True) from None
        except wire.Closed:
            self.stop("ended without a word")
            raise LearnerStopped(self.ended) from None
        except ValueError:
            self.stop("sent a reply the checker cannot read")
            raise LearnerStopped(self.ended) from None
        if message[0] == "ended":
            code = message[1] if len(message) > 1 else "?"
            self.stop(f"ended with exit code {code}" if not isinstance(code, int) or code >= 0 else
                      f"was killed by signal {signal.Signals(-code).name if -code in signal.valid_signals() else -code}")
            raise LearnerStopped(self.ended)
        return message

    def stop(self, why: str) -> None:
        """Kill the learner's process group; the supervisor then kills whatever it left behind and exits."""
        self.ended = self.ended or why
        if self.pid is not None:
            for kill in (os.killpg, os.kill):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    kill(self.pid, signal.SIGKILL)
        self.close()

    def close(self) -> None:
        """End the learner's process (its requests' pipe closes, so it returns) and wait for the supervisor."""
        self.ended = self.ended or "was closed"
        for fd in ("commands", "replies"):
            if getattr(self, fd) is not None:
                os.close(getattr(self, fd))
                setattr(self, fd, None)
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


# ---- grading ---------------------------------------------------------------------------------------------------

def snapshot(folder: Path) -> dict[str, tuple[int, int, int]]:
    """Each file's (modification time, size, inode): a file written, or replaced by os.replace, changes one."""
    found = {}
    for path in folder.iterdir():
        with contextlib.suppress(FileNotFoundError):         # removed between the listing and the look
            if path.is_file():
                stat = path.stat()
                found[path.name] = (stat.st_mtime_ns, stat.st_size, stat.st_ino)
    return found


class Grading:
    """One workbook's tasks, each graded alone (see the module's docstring)."""

    def __init__(self, grader, workbook: Path, setup: str, found: dict, timeout: float, output_dir: Path,
                 plots_dir: Path, discard_dir: Path, start, read_output):
        self.grader, self.workbook, self.setup, self.found = grader, workbook, setup, found
        self.timeout, self.output_dir, self.discard_dir = timeout, output_dir, discard_dir
        self.plots_dir = plots_dir      # where the learner's code writes its plots; the checker copies them out
        self.start, self.read_output = start, read_output        # () -> a fresh Namespace; () -> new output text
        self.skeleton_path = WORKBOOKS / f"{workbook.stem}.md"
        self.skeleton = sections(self.skeleton_path.read_text(encoding="utf-8"))[1]

    def references(self, task: int) -> dict:
        """The reference functions of `task`: those its block in the original workbook defines."""
        names = defined_functions(self.skeleton[task][1]) if task in self.skeleton else []
        return {name: self.grader.REFERENCE[name] for name in names if name in self.grader.REFERENCE}

    def seconds(self, task: int) -> float:
        return task_seconds(self.grader, task, self.timeout)

    def replay(self, ns: Namespace, task: int) -> None:
        """Bind the task's references, then run its original block without its definitions, plots discarded."""
        ns.request(("bind", self.timeout, self.references(task)))
        if task in self.skeleton:
            code = without_definitions(self.skeleton[task][1])
            ns.request(("run", self.seconds(task), code, str(self.skeleton_path), f"task {task} (reference)",
                        str(self.discard_dir)))

    def fresh(self, done: list[int]) -> tuple[Namespace | None, tuple[str, str] | None]:
        """A new learner's process with the setup run and the tasks `done` replayed -> (ns, None) or (None, failure)."""
        try:
            ns = self.start()
        except LearnerStopped as s:
            return None, (f"the process for your code {s.what}", "run `python -c 'import torch'` to check the "
                                                                 "installation")
        seconds = max(self.timeout, SETUP_SECONDS)   # a slow import is never reported as a hang
        try:
            reply = ns.request(("run", seconds, self.setup, str(self.workbook), "the setup", str(self.plots_dir)))
            if reply[0] in ("failed", "raised"):
                ns.close()
                return None, (f"the setup block failed: {reply[1]}", reply[2])
            for task in done:
                self.replay(ns, task)
        except LearnerStopped as s:
            return None, (f"the setup block did not finish within {seconds:g} s" if s.timed_out else
                          f"the process running the setup and earlier tasks {s.what}",
                          "run the setup block on its own: something there hangs or stops Python")
        self.read_output()            # the replays' output is not the task's
        return ns, None

    def run(self, numbers: list[int]) -> dict[int, Result]:
        """Grade the tasks `numbers` (each in the workbook), the tasks before them run as their references."""
        with learner_threads():
            return self.run_tasks(numbers)

    def run_tasks(self, numbers: list[int]) -> dict[int, Result]:
        results, done, ns = {}, [], None
        last = max(numbers)
        try:
            for task in [n for n in sorted(self.grader.TASKS) if n <= last]:
                if ns is None:
                    ns, failure = self.fresh(done)
                    if failure:
                        for n in numbers:
                            if n >= task:
                                results[n] = Result(n, self.title(n), False, *failure)
                        return results
                passed = False
                if task in numbers:
                    results[task] = self.task(ns, task)
                    passed = results[task].passed
                if task == last:
                    break
                done.append(task)
                try:
                    if passed:
                        ns.request(("bind", self.timeout, self.references(task)))
                    else:
                        self.replay(ns, task)
                except LearnerStopped:
                    ns = None
                if ns is not None and not ns.alive:
                    ns = None
        finally:
            if ns is not None:
                ns.close()
        return results

    def title(self, task: int) -> str:
        return self.found.get(task, self.skeleton.get(task, (f"task {task}",)))[0]

    def task(self, ns: Namespace, task: int) -> Result:
        """Run the learner's block of `task`, then its checks. A block that raised is checked too: when the checks
        recognise a known mistake, its hint names the cause better than the exception does."""
        title, code = self.found[task]
        before = snapshot(self.plots_dir)
        failure, raised = None, None
        try:
            reply = ns.request(("run", self.seconds(task), code, str(self.workbook), f"task {task}",
                                str(self.plots_dir)))
            if reply[0] == "failed":
                failure = (reply[1], reply[2])
            elif reply[0] == "raised":
                raised = (reply[1], reply[2])
        except LearnerStopped as s:
            failure = (f"task {task} did not finish within {self.seconds(task):g} s", "look for an endless loop or a "
                       "far too large input") if s.timed_out else \
                      (f"the process running your code {s.what} while running task {task}", s.hint)
        files = self.collect(before)
        if failure is None:
            failure = self.check(ns, task, set(files))
            if raised:
                known = failure is not None and failure[1] in self.grader.HINTS.values()
                failure = (f"{failure[0]} (and {raised[0]})", failure[1]) if known else raised
        return Result(task, title, failure is None, *(failure or ("", "")), output=self.read_output(), files=files)

    def collect(self, before: dict) -> list[Path]:
        """Copy the plots the task's code wrote (new or changed since `before`) to the output folder. -> their paths
        there."""
        written = sorted(name for name, stat in snapshot(self.plots_dir).items() if before.get(name) != stat)
        for name in written:
            shutil.copyfile(self.plots_dir / name, self.output_dir / name)
        return [self.output_dir / name for name in written]

    def check(self, ns: Namespace, task: int, files: set[Path]) -> tuple[str, str] | None:
        """The task's hidden checks: None when they pass, else (message, hint)."""
        ns.deadline = time.monotonic() + self.seconds(task)
        token = checks_written.set(files)
        try:
            self.grader.TASKS[task](ns, self.output_dir)
        except Mistake as m:
            return m.message, m.hint
        except LearnerStopped as s:
            if s.timed_out:
                return (f"the checks did not finish within {self.seconds(task):g} s",
                        "look for an endless loop, or work that grows far too fast with the input size")
            return f"the process running your code {s.what} while it was being checked", s.hint
        except Exception as e:  # whatever the learner's return value makes the checks raise
            return (f"could not check the answer: {type(e).__name__}: {wire.text_of(e)}",
                    "return exactly what the docstring asks for (types and shapes)")
        finally:
            ns.deadline = None
            checks_written.reset(token)
        return None


PIPE_HINT = "only the checker writes to its pipes: leave the file descriptors your code did not open alone"
CRASH_HINT = ("something in your code stopped or froze Python itself (os._exit, a crash, running out of memory, a "
              "hang inside a C call): run the task's code on its own")


def task_seconds(grader, task: int, timeout: float) -> float:
    """The wall-clock limit of a task's code, of its checks and of its replay: `timeout`, or the longer time the
    grader's SECONDS gives a task that trains for minutes."""
    return max(timeout, getattr(grader, "SECONDS", {}).get(task, 0.0))


def task_numbers(stem: str, tasks) -> list[int]:
    """The tasks to grade in the workbook named `stem`: all of them, or `tasks`, each of which must exist."""
    known = sorted(GRADERS[stem].TASKS)
    if tasks is None:
        return known
    unknown = sorted(set(tasks) - set(known))
    if unknown:
        raise ValueError(f"task: expected one of {known} for {stem}.md, got {unknown[0]}")
    return sorted(set(tasks))


THREADS_LOCK = threading.Lock()
THREADS_HELD = {"gradings": 0, "before": 1}


@contextlib.contextmanager
def learner_threads():
    """The references computed on one thread while any grading runs in this process, as the learner's process
    computes (runner.py): float32 results that depend on the kernels' blocking (a training step's weights, say) then
    agree to rounding on any processor. Counted, so that gradings running side by side restore the thread count
    once, when the last ends."""
    with THREADS_LOCK:
        if THREADS_HELD["gradings"] == 0:
            THREADS_HELD["before"] = torch.get_num_threads()
            torch.set_num_threads(1)
        THREADS_HELD["gradings"] += 1
    try:
        yield
    finally:
        with THREADS_LOCK:
            THREADS_HELD["gradings"] -= 1
            if THREADS_HELD["gradings"] == 0:
                torch.set_num_threads(THREADS_HELD["before"])


def check_workbook(path: Path, *, timeout: float = 120.0, output_dir: Path | None = None,
                   tasks=None) -> list[Result]:
    """Grade the workbook at `path`: every task, or those in `tasks` (earlier ones then run as their reference
    versions). Plots go to `output_dir` (default: the workbook's folder). The grader is chosen by the file name, so
    a copy of a workbook keeps its grader. A task number the grader does not have is a ValueError."""
    path = Path(path).resolve()
    grader = GRADERS.get(path.stem)
    if grader is None:
        return [Result(0, path.name, False, f"no grader for a workbook named {path.stem!r}",
                       f"keep the file name, one of {sorted(GRADERS)}")]
    numbers = task_numbers(path.stem, tasks)
    try:
        markdown = markdown_of(path)
    except (OSError, UnicodeDecodeError, ValueError) as e:
        return [Result(0, path.name, False, f"cannot read the workbook: {e}",
                       "pass the path of a .md workbook or of the .ipynb jupytext made of it")]
    setup, found = sections(markdown)
    output_dir = Path(output_dir or path.parent).resolve()
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        return [Result(n, f"task {n}", False, f"cannot write plots to {output_dir}: {e}",
                       "pass a writable folder with --output-dir") for n in numbers]
    missing = {n: Result(n, f"task {n}", False, f"the workbook has no '## Task {n}' section",
                         f"keep the '## Task {n}: ...' heading of the original workbook")
               for n in numbers if n not in found}
    runnable = [n for n in numbers if n in found]
    if not runnable:
        return [missing[n] for n in numbers]
    if hasattr(grader, "prepare"):
        grader.prepare()
    with tempfile.TemporaryDirectory(prefix="exercises-", ignore_cleanup_errors=True) as tmp:
        scratch, plots, discard = Path(tmp) / "scratch", Path(tmp) / "plots", Path(tmp) / "discard"
        for folder in (scratch, plots, discard):
            folder.mkdir()
        log_path = Path(tmp) / "output.log"
        with open(log_path, "ab") as log, open(log_path, "rb") as reader:     # two offsets: the writer's, ours
            def read_output() -> str:
                return reader.read().decode("utf-8", errors="replace")

            cpu = SETUP_SECONDS + 3 * sum(task_seconds(grader, n, timeout) for n in grader.TASKS)   # a backstop
            grading = Grading(grader, path, setup, found, timeout, output_dir, plots, discard,
                              lambda: Learner(path, scratch, [plots, discard], log, cpu), read_output)
            results = grading.run(runnable)
    if path.suffix == ".ipynb":                   # line numbers of the markdown, told as the notebook's cells
        for r in results.values():
            r.message, r.hint = in_cells(r.message, path.name, markdown), in_cells(r.hint, path.name, markdown)
    return [missing.get(n) or results[n] for n in numbers]


def workbooks() -> list[Path]:
    """The workbooks a learner completes: exercises/NN_*.md."""
    return sorted(WORKBOOKS.glob("[0-9][0-9]_*.md"))
