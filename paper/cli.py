"""What every command does with bad input and with Ctrl-C, in one place: paper.convert, paper.verify, paper.train,
paper.bench, paper.compare and `python -m exercises` all end through `run`.

- A ValueError (this project's bad-input error: it names the field, what was expected and what was got), an OSError
  (a path that is missing, unreadable or unwritable, a full disk) or a FloatingPointError (a training loss that
  stopped being finite) ends the command with one line `error: …` on stderr and exit code 2, the code argparse gives
  a bad command line. `--debug` prints the traceback first.
- Ctrl-C (SIGINT) and SIGTERM end it with one line `interrupted…` and exit code 130 (128 + SIGINT, as a shell
  reports it). A loop that must not stop half-way through a step (paper.train) asks for `interrupts_deferred`.
- Anything else is a bug and keeps its traceback.
"""
import argparse
import contextlib
import signal
import sys
import threading
import traceback

BAD_INPUT = 2
INTERRUPTED = 130
REPORTED = (ValueError, OSError, FloatingPointError)


def parser(prog: str, description: str, **kwargs) -> argparse.ArgumentParser:
    """The command's ArgumentParser: its docstring as the description, and the shared --debug flag."""
    p = argparse.ArgumentParser(prog=prog, description=description,
                                formatter_class=argparse.RawDescriptionHelpFormatter, **kwargs)
    return with_debug_flag(p)


def with_debug_flag(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The shared --debug flag (on a sub-command's parser too: `run` looks for it anywhere in argv)."""
    p.add_argument("--debug", action="store_true", help="on an error, print the traceback before the one-line message")
    return p


def checkpoint_fields(parser: argparse.ArgumentParser, model: bool = True) -> None:
    """The flags for what a checkpoint's weights cannot tell, for the commands that read one: --num-heads and
    --image-size, and with `model` --model, a name that fixes the architecture."""
    if model:
        parser.add_argument("--model", help="paper, timm or torchvision model name (ViT-B/16, vit_large_patch16_384, "
                                            "DeiT-B⚗, deit_base_distilled_patch16_224, Swin-T, swin_t, "
                                            "swin_tiny_patch4_window7_256) fixing the architecture and image size; the "
                                            "checkpoint is refused if it differs. Classes and pre-logits stay the "
                                            "checkpoint's")
    parser.add_argument("--num-heads", type=positive, help="the head count, for a checkpoint that does not store it "
                                                           "and whose shapes match no known architecture")
    parser.add_argument("--image-size", type=positive, nargs=2, metavar=("H", "W"),
                        help="the image size, for a model whose file does not store it: a non-square ViT, a Swin "
                             "state dict that is no known model's (timm's, torchvision's and the paper's Swins are "
                             "known: 224, or 384 for M = 12)")


def checkpoint_overrides(args: argparse.Namespace) -> dict:
    """What checkpoint_fields' flags fix, as read_checkpoint's overrides: {"num_heads": H, "image_size": (H, W)}, the
    flags given only."""
    fields = {"num_heads": args.num_heads, "image_size": tuple(args.image_size) if args.image_size else None}
    return {k: v for k, v in fields.items() if v is not None}


def positive(text: str) -> int:
    """argparse type of a count that must be at least 1 (argparse reports the ValueError as "invalid positive value")."""
    value = int(text)
    if value < 1:
        raise ValueError(f"expected a positive integer, got {value}")
    return value


def non_negative(text: str) -> int:
    """argparse type of a count that may be 0."""
    value = int(text)
    if value < 0:
        raise ValueError(f"expected an integer >= 0, got {value}")
    return value


def one_line(error: BaseException) -> str:
    """The error's message on one line: a multi-line message (e.g. every bad key of a state_dict) joined by '; ', or
    by a space after a line that ends in a colon."""
    text = str(error)
    if isinstance(error, OSError) and error.strerror:     # without "[Errno N]", with the path when not in the text
        text = error.strerror + (f": {error.filename}" if error.filename and str(error.filename) not in error.strerror
                                 else "")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        return type(error).__name__
    text = lines[0]
    for line in lines[1:]:
        text += (" " if text.endswith(":") else "; ") + line
    return text


def raise_interrupt(signum, frame):
    """SIGTERM handler: stop the way Ctrl-C does, so that `finally` blocks and atomic writes clean up."""
    raise KeyboardInterrupt(f"{signal.Signals(signum).name} received")


def run(main, argv=None) -> None:
    """Call main(argv) and exit: 0, or main's own integer exit code; 2 with one line `error: …` on a ValueError,
    OSError or FloatingPointError; 130 with one line on Ctrl-C or SIGTERM."""
    argv = sys.argv[1:] if argv is None else list(argv)
    previous = signal.signal(signal.SIGTERM, raise_interrupt)
    try:
        code = main(argv)
    except REPORTED as e:
        if "--debug" in argv:
            traceback.print_exc()
        print(f"error: {one_line(e)}", file=sys.stderr)
        sys.exit(BAD_INPUT)
    except KeyboardInterrupt as e:
        if "--debug" in argv:
            traceback.print_exc()
        print(f"interrupted{': ' + one_line(e) if str(e) else ''}", file=sys.stderr)
        sys.exit(INTERRUPTED)
    finally:
        signal.signal(signal.SIGTERM, previous)
    sys.exit(code if isinstance(code, int) else 0)


@contextlib.contextmanager
def interrupts_deferred():
    """Within the block a first Ctrl-C or SIGTERM only sets the yielded Event, so that a loop can finish its step,
    save and then stop; a second one interrupts at once. Outside the main thread signals cannot be caught, and the
    Event is never set."""
    requested = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield requested
        return
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}

    def defer(signum, frame):
        requested.set()
        for s, handler in previous.items():         # the next signal acts at once
            signal.signal(s, handler)

    for s in previous:
        signal.signal(s, defer)
    try:
        yield requested
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
