"""What crosses between the checker (exercises/checker.py) and the learner's process (exercises/runner.py), and how.

A message is 8 bytes of length, then the payload. Requests, checker to learner, are pickles: the learner's process
trusts the checker. Replies are `torch.save` archives of tagged plain data, read back with
`torch.load(weights_only=True)`, which builds tensors, numbers, strings, None, tuples, lists and dicts and refuses
anything else: whatever the learner's code writes into the pipe, a reply cannot run code in the checker. Every value
is tagged, so that no learner value can pass for another kind:

    ("tensor", t)  ("int", 3)  ("float", 0.5)  ("bool", True)  ("str", "x")  ("none", None)
    ("tuple", [...])  ("list", [...])  ("dict", [(key, value), ...])
    ("config", {field: value})     a lowlevel.ViTConfig, rebuilt in the checker through its own validation
    ("other", type name, repr)     anything else: the checker receives a `Foreign` naming the type
"""
import dataclasses
import io
import numbers
import os
import select
import time

import torch

from lowlevel import ViTConfig

LIMIT = 1 << 30            # the largest reply read back: far above any workbook value, far below a memory problem
DEPTH = 32                 # nesting deeper than this is reported as `Foreign`, not followed


class Closed(Exception):
    """The other end closed its pipe (its process ended)."""


class TimedOut(Exception):
    """The deadline passed before the whole message moved."""


@dataclasses.dataclass(frozen=True)
class Foreign:
    """A value the learner's code returned that is none of the plain kinds above: its type's name and its repr."""
    type_name: str
    text: str


def send(fd: int, payload: bytes, deadline: float | None = None) -> None:
    """Write one message; with a deadline (time.monotonic()), the fd must be non-blocking."""
    data = memoryview(len(payload).to_bytes(8, "big") + payload)
    while data:
        wait(fd, deadline, write=True)
        try:
            data = data[os.write(fd, data):]
        except BlockingIOError:
            continue
        except BrokenPipeError as e:
            raise Closed() from e


def receive(fd: int, deadline: float | None = None, limit: int = LIMIT) -> bytes:
    """Read one message; Closed at end of file, TimedOut at the deadline, ValueError when it is longer than `limit`."""
    size = int.from_bytes(read_exactly(fd, 8, deadline), "big")
    if size > limit:
        raise ValueError(f"message: expected at most {limit} bytes, got a length of {size}")
    return read_exactly(fd, size, deadline)


def read_exactly(fd: int, size: int, deadline: float | None) -> bytes:
    chunks, left = [], size
    while left:
        wait(fd, deadline, write=False)
        try:
            chunk = os.read(fd, min(left, 1 << 20))
        except BlockingIOError:
            continue
        if not chunk:
            raise Closed()
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def wait(fd: int, deadline: float | None, write: bool) -> None:
    if deadline is None:
        return
    left = deadline - time.monotonic()
    ready = select.select([], [fd], [], max(0.0, left)) if write else select.select([fd], [], [], max(0.0, left))
    if not any(ready):
        raise TimedOut()


def dump_reply(reply: tuple) -> bytes:
    """A reply, already made of tags, strings and tensors, as bytes (learner side)."""
    buffer = io.BytesIO()
    torch.save(reply, buffer)
    return buffer.getvalue()


def load_reply(data: bytes) -> tuple:
    """Bytes from the learner's process -> its reply; plain data only (weights_only), anything else is a ValueError."""
    try:
        reply = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as e:   # the unpickler refuses with pickle, zip and runtime errors alike
        raise ValueError(f"reply: expected plain data, the checker refused it ({type(e).__name__})") from e
    if not (isinstance(reply, tuple) and reply and isinstance(reply[0], str)):
        raise ValueError(f"reply: expected a tagged tuple, got {type(reply).__name__}")
    return reply


def text_of(x, limit: int = 300) -> str:
    """str(x), cut to `limit` characters; never raises, whatever x's __str__ does."""
    try:
        s = str(x)
    except BaseException:  # noqa: B036 - a learner's __str__ may raise anything
        s = f"<a {type(x).__name__} whose str() raised>"
    return s if len(s) <= limit else s[:limit] + "…"


def pack(x, depth: int = 0):
    """A learner's value -> tagged plain data (learner side). Containers are read with the base classes' own
    methods (an OrderedDict arrives as a dict, a named tuple as a tuple), so no subclass converts itself."""
    t = type(x)
    if depth > DEPTH:
        return "other", t.__name__, "(nested too deep)"
    if isinstance(x, torch.Tensor):
        try:
            return "tensor", torch.Tensor.detach(x).cpu().clone().as_subclass(torch.Tensor)
        except Exception:  # a tensor subclass that refuses to be copied
            return "other", t.__name__, text_of(object.__repr__(x))
    if t is bool or x is None:
        return ("bool", x) if t is bool else ("none", None)
    if t is str:
        return "str", x
    if isinstance(x, numbers.Integral):          # int, and numpy's integers
        return "int", int(x)
    if isinstance(x, numbers.Real):              # float, and numpy's floats
        return "float", float(x)
    if isinstance(x, (tuple, list)):
        items = list(list.__iter__(x)) if isinstance(x, list) else list(tuple.__iter__(x))
        return ("list" if isinstance(x, list) else "tuple"), [pack(v, depth + 1) for v in items]
    if isinstance(x, dict):
        return "dict", [(pack(k, depth + 1), pack(v, depth + 1)) for k, v in dict.items(x)]
    if t is ViTConfig:
        return "config", {f.name: pack(getattr(x, f.name), depth + 1) for f in dataclasses.fields(ViTConfig)}
    try:
        shown = repr(x)
    except BaseException:  # noqa: B036 - a learner's __repr__ may raise anything
        shown = f"<{t.__name__}>"
    return "other", t.__name__, text_of(shown)


SCALARS = {"int": int, "float": float, "bool": bool, "str": str}


def unpack(tagged):
    """Tagged plain data -> the value (checker side). Anything malformed is a ValueError."""
    if not (isinstance(tagged, tuple) and len(tagged) in (2, 3) and isinstance(tagged[0], str)):
        raise ValueError("reply: expected a tagged value")
    tag, value = tagged[0], tagged[1]
    if tag == "tensor" and isinstance(value, torch.Tensor):
        return value
    if tag in SCALARS and type(value) is SCALARS[tag]:
        return value
    if tag == "none" and value is None:
        return None
    if tag in ("tuple", "list") and isinstance(value, list):
        items = [unpack(v) for v in value]
        return tuple(items) if tag == "tuple" else items
    if tag == "dict" and isinstance(value, list):
        try:
            return {unpack(k): unpack(v) for k, v in value}
        except TypeError as e:       # an item that is not a pair, or a key that cannot be hashed
            raise ValueError("reply: a malformed dict") from e
    if tag == "config" and isinstance(value, dict):
        fields = {k: unpack(v) for k, v in value.items()}
        try:
            return ViTConfig(**fields)
        except (TypeError, ValueError) as e:
            return Foreign("ViTConfig", f"an invalid ViTConfig ({text_of(e)})")
    if tag == "other" and len(tagged) == 3 and isinstance(value, str) and isinstance(tagged[2], str):
        return Foreign(value, tagged[2])
    raise ValueError(f"reply: unexpected tag {tag!r}")

