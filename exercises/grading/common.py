"""What every grader shares: the failure it raises, calling the learner's functions safely, and comparing their
output with the reference and with deliberately wrong variants, each named by the hint it deserves."""
import traceback

import torch


class Mistake(Exception):
    """A task's answer is wrong: `message` says what was seen, `hint` where the mistake most likely is."""

    def __init__(self, message: str, hint: str):
        super().__init__(message)
        self.message, self.hint = message, hint


def learner_function(ns: dict, name: str):
    """The function `name` the learner's code defined."""
    fn = ns.get(name)
    if not callable(fn):
        raise Mistake(f"no function named `{name}` was defined",
                      f"keep the name and signature of the skeleton: def {name}(...)")
    return fn


def call(ns: dict, name: str, *args, **kwargs):
    """Call the learner's `name`; an exception becomes a Mistake that quotes the learner's line that raised it."""
    fn = learner_function(ns, name)
    try:
        return fn(*args, **kwargs)
    except NotImplementedError:
        raise Mistake(f"`{name}` is not implemented yet",
                      "replace the `raise NotImplementedError` with your answer") from None
    except Exception as e:
        frames = [f for f in traceback.extract_tb(e.__traceback__) if f.filename.startswith("<task")]
        where = f" at {frames[-1].filename[1:-1]}, line {frames[-1].lineno}: {frames[-1].line}" if frames else ""
        raise Mistake(f"`{name}` raised {type(e).__name__}: {e}{where}",
                      "run your function on a small input; check each intermediate shape against the docstring") from e


def close(a, b, atol: float, rtol: float) -> bool:
    return (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape
            and torch.allclose(a.detach().double(), b.detach().double(), atol=atol, rtol=rtol))


def expect(got, want: torch.Tensor, what: str, mistakes: dict[str, torch.Tensor] | None = None, *,
           hint: str, atol: float = 1e-5, rtol: float = 1e-4) -> None:
    """`got` must equal `want`. Otherwise the hint of the first wrong variant in `mistakes` that `got` equals is
    given (that is the mistake made), else `hint`. Float32 tolerances: the learner may order sums differently."""
    if not isinstance(got, torch.Tensor):
        raise Mistake(f"{what}: expected a torch.Tensor, got {type(got).__name__}",
                      "return a tensor, as the docstring says")
    if close(got, want, atol, rtol):
        return
    for mistake_hint, wrong in (mistakes or {}).items():
        if close(got, wrong, atol, rtol):
            raise Mistake(f"{what}: {describe(got, want)}", mistake_hint)
    raise Mistake(f"{what}: {describe(got, want)}", hint)


def describe(got: torch.Tensor, want: torch.Tensor) -> str:
    if got.shape != want.shape:
        return f"wrong shape: expected {tuple(want.shape)}, got {tuple(got.shape)}"
    err = (got.detach().double() - want.detach().double()).abs().max().item()
    return f"wrong values (shape {tuple(got.shape)} is right; largest error {err:.3g})"


def expect_png(path, what: str) -> None:
    """A plot the task asks for must be a readable PNG file."""
    from PIL import Image
    if not path.is_file():
        raise Mistake(f"{what}: no file {path}", f"save the figure to OUTPUT_DIR / '{path.name}'")
    try:
        with Image.open(path) as im:
            if im.format != "PNG":
                raise Mistake(f"{what}: {path.name} is a {im.format}, not a PNG", "save with format='png'")
    except OSError as e:
        raise Mistake(f"{what}: {path.name} is not a readable image ({e})", "save the figure with plt.savefig") from e
