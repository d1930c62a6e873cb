"""The learner's side of the checker: `python -m exercises.runner COMMANDS_FD REPLIES_FD SETTINGS_JSON`, started by
exercises/checker.py in a scratch directory and a session of its own, with two pipes.

Two processes run here. The supervisor (this one) makes itself the "child subreaper" of everything below it
(Linux prctl), forks the learner's process and waits for it. The learner's process opens a new session, so that
the checker can kill its whole process group; limits itself (address space, no new processes, CPU time per
request); confines itself with Landlock (exercises/sandbox.py: files change only in its scratch folders, no other
process traced or signalled); and serves the checker's requests one at a time, each a tuple whose second item is its time limit:

    ("run", seconds, code, file name, label, output dir)    run a block of workbook code in the namespace
    ("call", seconds, name, args, kwargs)                   call a function the workbook's code defined
    ("get", seconds, name)                                  read a value of the namespace
    ("bind", seconds, {name: function})                     put reference functions in place of the learner's

When the learner's process ends, done or killed by the checker, the processes it left behind have been
re-parented to the supervisor, whatever session or group they moved to: it kills them all, reports the exit
status and exits. Nothing is graded here: inputs come in, values go out (exercises/wire.py), and the checker
compares them in its own process, which the learner's code cannot reach.
"""
import ctypes
import json
import math
import os
import pickle
import resource
import signal
import sys
import time
import traceback
from pathlib import Path

import torch
import tqdm

from exercises import wire
from exercises.sandbox import confine

PR_SET_PDEATHSIG, PR_SET_CHILD_SUBREAPER = 1, 36     # linux/prctl.h
CPU_SLACK = 5     # CPU seconds past a request's wall-clock limit before the kernel stops the process: the checker's
                  # wall clock comes first; this one holds when the checker itself is gone
CLEANUP_SECONDS = 10.0


def prctl(option: int, value: int) -> None:
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(option, value, 0, 0, 0)


# ---- the learner's process ------------------------------------------------------------------------------------

def text_of_exception(e: BaseException, filename: str) -> str:
    """'ValueError: message at line 12 of 02_attention_maps.md: the line', whatever the exception's str() does."""
    try:
        frames = [f for f in traceback.extract_tb(e.__traceback__) if f.filename == filename]
        where = f" at line {frames[-1].lineno} of {Path(filename).name}: {frames[-1].line}" if frames else ""
    except Exception:  # a traceback the learner's code tampered with
        where = ""
    return f"{type(e).__name__}: {wire.text_of(e)}{where}"


def run_block(ns: dict, code: str, filename: str, label: str, output_dir: str) -> tuple:
    """Execute one block of the workbook in `ns`: ("ran",); ("failed", message, hint) when it is not Python or not
    done; ("raised", message, hint) when it raised while running (its functions may still be checked)."""
    ns["OUTPUT_DIR"] = Path(output_dir)
    name = Path(filename).name
    try:
        compiled = compile(code, filename, "exec")
    except (SyntaxError, ValueError) as e:
        line = f" at line {e.lineno} of {name}" if getattr(e, "lineno", None) else ""
        return ("failed", f"syntax error in {label}{line}: {getattr(e, 'msg', e)}",
                "fix the Python syntax: look at the line shown and the one before it")
    try:
        exec(compiled, ns)
    except NotImplementedError:
        return "failed", f"{label} is not done yet", "replace the `raise NotImplementedError` with your answer"
    except NameError as e:
        return ("raised", f"{label} raised {text_of_exception(e, filename)}",
                "this name should come from the setup or an earlier task: check the spelling, and keep the "
                "workbook's own lines that define it")
    except BaseException as e:  # noqa: B036 - learner code may raise anything, SystemExit included
        return "raised", f"{label} raised {text_of_exception(e, filename)}", "read the error and the line it points at"
    return ("ran",)


def packed(value) -> tuple:
    try:
        return wire.pack(value)
    except BaseException:  # noqa: B036 - a value whose type tests themselves raise
        return "other", "object", "(could not be read)"


def input_tensors(args: tuple, kwargs: dict) -> dict[str, torch.Tensor]:
    """The tensors among a call's arguments, by where they sit ("argument 1", "params['head.weight']", …)."""
    found = {}

    def walk(value, where: str) -> None:
        if isinstance(value, torch.Tensor):
            found[where] = value
        elif isinstance(value, dict):
            for k, v in value.items():
                walk(v, f"{where}[{k!r}]")
        elif isinstance(value, (list, tuple)):
            for i, v in enumerate(value):
                walk(v, f"{where}[{i}]")

    for i, value in enumerate(args):
        walk(value, f"argument {i + 1}")
    for k, value in kwargs.items():
        walk(value, k)
    return found


def identical(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Same shape, dtype and values, a NaN equal to a NaN in the same place."""
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if a.is_floating_point() or a.is_complex():
        return torch.equal(a.isnan(), b.isnan()) and torch.equal(a.nan_to_num(), b.nan_to_num())
    return torch.equal(a, b)


def call(ns: dict, name: str, args: tuple, kwargs: dict, filename: str) -> tuple:
    """Call ns[name]: ("returned", value, the inputs it changed in place) | ("raised", text) | ("not implemented",) |
    ("missing",) | ("not callable", type name)."""
    fn = ns.get(name)
    if fn is None:
        return ("missing",)
    if not callable(fn):
        return "not callable", type(fn).__name__
    inputs = input_tensors(args, kwargs)
    before = {where: tensor.detach().clone() for where, tensor in inputs.items()}
    try:
        value = fn(*args, **kwargs)
    except NotImplementedError:
        return ("not implemented",)
    except BaseException as e:  # noqa: B036 - learner code may raise anything
        return "raised", text_of_exception(e, filename)
    changed = [where for where, tensor in inputs.items() if not identical(tensor.detach(), before[where])]
    return "returned", packed(value), changed


def handle(ns: dict, request: tuple, filename: str) -> tuple:
    """One request (see the module's docstring) -> its reply."""
    kind, _, *rest = request
    if kind == "run":
        return run_block(ns, *rest)
    if kind == "call":
        return call(ns, *rest, filename)
    if kind == "get":
        return ("value", packed(ns[rest[0]])) if rest[0] in ns else ("missing",)
    if kind == "bind":
        ns.update(rest[0])
        return ("bound",)
    raise ValueError(f"request: expected run, call, get or bind, got {kind!r}")


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def limit_cpu(seconds: float, hard: int) -> None:
    """Let the next request use `seconds` (+ slack) of CPU time: SIGXCPU then, SIGKILL at the hard limit."""
    soft = min(hard, math.ceil(cpu_seconds() + seconds) + CPU_SLACK)
    resource.setrlimit(resource.RLIMIT_CPU, (soft, hard))


def serve(commands: int, replies: int, filename: str, cpu_hard: int) -> None:
    """Answer each numbered request with ("reply", its number, reply): a reply the learner's code wrote into the
    pipe itself can only answer the request in hand, and the checker drops what comes after."""
    ns = {"__name__": "__workbook__"}
    while True:
        try:
            number, request = pickle.loads(wire.receive(commands))
        except wire.Closed:
            return
        limit_cpu(request[1], cpu_hard)
        reply = handle(ns, request, filename)
        for stream in (sys.__stdout__, sys.__stderr__):    # the checker reads each block's output after its reply
            stream.flush()
        wire.send(replies, wire.dump_reply(("reply", number, reply)))


def learner_process(commands: int, replies: int, settings: dict) -> None:
    os.setsid()                                      # a session and process group of its own: killed as a whole
    prctl(PR_SET_PDEATHSIG, signal.SIGKILL)          # the supervisor gone, this process goes too
    torch.set_num_threads(1)       # small tensors: one thread is faster, and gives the same numbers on every machine
    tqdm.tqdm.monitor_interval = 0                   # tqdm's monitor is a thread, and no thread may start below
    resource.setrlimit(resource.RLIMIT_AS, (settings["memory"], settings["memory"]))
    resource.setrlimit(resource.RLIMIT_NPROC, (0, 0))   # no new process or thread (root is exempt: see main)
    confine(settings["writable"])                    # no file changed outside them, no checker traced or signalled
    serve(commands, replies, settings["workbook"], math.ceil(cpu_seconds() + settings["cpu"]))


# ---- the supervisor -------------------------------------------------------------------------------------------

def children(pid: int) -> list[int]:
    """The processes whose parent is `pid` (Linux /proc)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", "rb") as f:
                    stat = f.read()
            except OSError:
                continue
            if int(stat.rsplit(b")", 1)[1].split()[1]) == pid:     # after "pid (command)": state, then ppid
                found.append(int(entry))
    return found


def kill_leftovers(group: int) -> None:
    """Kill the learner's process group, then every process re-parented here, until none is left."""
    deadline = time.monotonic() + CLEANUP_SECONDS
    while time.monotonic() < deadline:
        try:
            os.killpg(group, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        left = children(os.getpid()) if os.path.isdir("/proc") else []
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            while os.waitpid(-1, os.WNOHANG)[0]:
                pass
        except ChildProcessError:                    # nothing left to reap
            if not left:
                return
        time.sleep(0.01)


def main(argv: list[str]) -> None:
    commands, replies, settings = int(argv[0]), int(argv[1]), json.loads(argv[2])
    prctl(PR_SET_CHILD_SUBREAPER, 1)    # orphans below come here, not to init: even those that left the session.
    # This also covers root, whom RLIMIT_NPROC does not bind.
    prctl(PR_SET_PDEATHSIG, signal.SIGTERM)         # the checker gone: clean up and go
    pid = os.fork()
    if pid == 0:
        status = 1
        try:
            learner_process(commands, replies, settings)
            status = 0
        except BaseException:  # noqa: B036 - the learner's process must never run the supervisor's code below
            traceback.print_exc()
        finally:
            os._exit(status)
    os.close(commands)
    signal.signal(signal.SIGTERM, lambda *_: os.kill(pid, signal.SIGKILL))
    wire.send(replies, wire.dump_reply(("started", pid)))
    _, status = os.waitpid(pid, 0)
    kill_leftovers(pid)
    try:
        wire.send(replies, wire.dump_reply(("ended", os.waitstatus_to_exitcode(status))))
    except wire.Closed:                              # the checker stopped listening first
        pass


if __name__ == "__main__":
    main(sys.argv[1:])
