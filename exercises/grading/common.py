"""The grader API: what every workbook's hidden checks are written with.

A grader is a module in exercises/grading/, registered in `GRADERS` (exercises/grading/__init__.py) under its
workbook's file name. It declares

    TASKS = {1: check, ...}        task number -> check(ns, output_dir), which raises `Mistake` when the answer is
                                   wrong and returns None when it is right.
    REFERENCE = {"name": fn}       every function the original workbook's task blocks define -> its reference
                                   version, a module-level function (the checker sends it by module and name). After
                                   a task is graded these replace the learner's functions in the learner's namespace,
                                   so later tasks are graded on the references and one mistake fails one task.
    HINTS = {"key": "hint"}        every mistake the grader recognises, each hint naming its cause. The tests plant
                                   each one in a copy of the solution (tests/exercises/test_exercises.py) and expect its hint.
    prepare()  (optional)          run by the checker before the learner's process starts: e.g. training, on first
                                   use, the model the workbook reads (paper/training/trained.py).
    SECONDS = {n: seconds}         (optional) the tasks whose code trains for minutes: task n's code, its checks
                                   and its replay each get at least this long, however short --timeout is.

A check runs in the checker's process; the learner's code runs in another (exercises/runner.py). Its arguments:

    ns            the learner's namespace. `call(ns, "name", *args)` calls the function the workbook defined with
                  hidden inputs and returns its value; `ns.get("name")` reads a variable. Values cross as copies of
                  plain data: tensors, numbers, strings, None, tuples, lists, dicts and ViTConfig; anything else
                  arrives as a `Foreign` (name it with `type_name`). Nothing the learner's code does reaches this
                  process: the comparison, the task table and torch here are out of its reach.
    output_dir    where the workbook's code wrote its files: `expect_png(output_dir / "name.png", what)`.

and it compares with `expect(got, want, what, {hint: wrong variant, ...}, hint=..., atol=..., rtol=...)`: equal to
`want` passes; equal to a wrong variant fails with that variant's hint (the mistake made); anything else fails with
the general `hint`; a count, with `expect_integer(got, want, what, {wrong count: hint, ...}, hint)`. Tolerances are
chosen below the smallest effect a known mistake has, with the reason beside them; inputs in float64 let them be
tight.
"""
import numbers
from contextvars import ContextVar
from pathlib import Path

import torch

from exercises.wire import Foreign, text_of, unpack

# the files the task's code wrote in this run (set by the checker while a task's checks run; None: not known)
checks_written: ContextVar[set[Path] | None] = ContextVar("checks_written", default=None)


class Mistake(Exception):
    """A task's answer is wrong: `message` says what was seen, `hint` where the mistake most likely is."""

    def __init__(self, message: str, hint: str):
        super().__init__(message)
        self.message, self.hint = message, hint


def type_name(x) -> str:
    """The type of a value the learner's code returned, as the learner wrote it."""
    return x.type_name if isinstance(x, Foreign) else type(x).__name__


def call(ns, name: str, *args, **kwargs):
    """Call the learner's `name` with these arguments in the learner's process and return its value. A function that
    is missing, unfinished, or raises is a Mistake quoting the workbook's line that raised."""
    return returned(name, ns.call(name, *args, **kwargs))


def returned(name: str, reply: tuple):
    """The value in a call's reply, or the Mistake its reply tells."""
    kind = reply[0]
    if kind == "returned":
        try:
            return unpack(reply[1])
        except (ValueError, IndexError) as e:
            raise Mistake(f"`{name}` returned a value the checker cannot read",
                          "return plain values: tensors, numbers, tuples, lists, dicts") from e
    if kind == "missing":
        raise Mistake(f"no function named `{name}` was defined",
                      f"keep the name and signature of the skeleton: def {name}(...)")
    if kind == "not callable":
        raise Mistake(f"`{name}` is a {detail(reply)}, not a function",
                      f"keep the name and signature of the skeleton: def {name}(...)")
    if kind == "not implemented":
        raise Mistake(f"`{name}` is not implemented yet", "replace the `raise NotImplementedError` with your answer")
    if kind == "raised":
        raise Mistake(f"`{name}` raised {detail(reply)}",
                      "run your function on a small input; check each intermediate shape against the docstring")
    raise Mistake(f"`{name}`: the learner's process sent an unexpected reply {text_of(kind)!r}",
                  "do not write to the checker's pipes")


IN_PLACE = "work on new tensors (w + …, w.clone(), {**params}): the caller's tensors must stay as they were"


def call_unchanged(ns, name: str, *args, **kwargs):
    """`call`, for a function whose docstring promises not to change its inputs: one that changed any of them in
    place (the caller's tensors) is a Mistake naming which."""
    reply = ns.call(name, *args, **kwargs)
    if reply[0] == "returned" and not (len(reply) == 3 and isinstance(reply[2], list)):
        raise Mistake(f"`{name}`: the learner's process sent an unexpected reply", "do not write to the checker's pipes")
    if reply[0] == "returned" and reply[2]:
        raise Mistake(f"`{name}` changed its input {', '.join(map(str, reply[2][:3]))} in place", IN_PLACE)
    return returned(name, reply)


def detail(reply: tuple) -> str:
    return text_of(reply[1], limit=600) if len(reply) > 1 else "?"


def close(a, b, atol: float, rtol: float) -> bool:
    return (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape
            and torch.allclose(a.detach().double(), b.detach().double(), atol=atol, rtol=rtol))


def expect(got, want: torch.Tensor, what: str, mistakes: dict[str, torch.Tensor] | None = None, *,
           hint: str, atol: float = 1e-5, rtol: float = 1e-4) -> None:
    """`got` must equal `want`. Otherwise the hint of the first wrong variant in `mistakes` that `got` equals is
    given (that is the mistake made), else `hint`. The default tolerances are for float32: the learner may order
    sums differently."""
    if not isinstance(got, torch.Tensor):
        raise Mistake(f"{what}: expected a torch.Tensor, got {type_name(got)}", "return a tensor, as the docstring says")
    if close(got, want, atol, rtol):
        return
    for mistake_hint, wrong in (mistakes or {}).items():
        if close(got, wrong, atol, rtol):
            raise Mistake(f"{what}: {describe(got, want)}", mistake_hint)
    raise Mistake(f"{what}: {describe(got, want)}", hint)


def expect_integer(got, want: int, what: str, mistakes: dict[int, str], hint: str) -> None:
    """`got` must be the integer `want` (a count). Otherwise the hint `mistakes` gives for the wrong value got (the
    count a known mistake gives), else `hint`."""
    if not isinstance(got, numbers.Integral):
        raise Mistake(f"{what} returned {type_name(got)}, expected an integer", "return an int")
    if got != want:
        raise Mistake(f"{what}: expected {want:,}, got {got:,}", mistakes.get(got, hint))


def describe(got: torch.Tensor, want: torch.Tensor) -> str:
    if got.shape != want.shape:
        return f"wrong shape: expected {tuple(want.shape)}, got {tuple(got.shape)}"
    err = (got.detach().double() - want.detach().double()).abs().max().item()
    return f"wrong values (shape {tuple(got.shape)} is right; largest error {err:.3g})"


def expect_png(path: Path, what: str) -> None:
    """A file the task asks for must be a readable PNG, written by this run of the task's code."""
    from PIL import Image
    if not path.is_file():
        raise Mistake(f"{what}: no file {path}", f"save the figure to OUTPUT_DIR / '{path.name}'")
    written = checks_written.get()
    if written is not None and path not in written:
        raise Mistake(f"{what}: {path.name} was not written by this run",
                      f"save the figure to OUTPUT_DIR / '{path.name}' in the task's code; a file left by an earlier "
                      "run does not count")
    try:
        with Image.open(path) as im:
            if im.format != "PNG":
                raise Mistake(f"{what}: {path.name} is a {im.format}, not a PNG", "save with format='png'")
    except OSError as e:
        raise Mistake(f"{what}: {path.name} is not a readable image ({e})", "save the figure with plt.savefig") from e
