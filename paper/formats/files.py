"""Reading tensor files with errors that name the file, and writing them whole or not at all (`paper.formats.atomic`).

Reading refuses, before opening anything for long or allocating much: a path that is no regular file (a FIFO or
/dev/zero would block or never end), an .npz member whose header declares more bytes than the member holds, or
whose arrays are not floating-point weights, and a config.json value of the wrong type. (safetensors and torch.load
check a tensor's declared size against the bytes stored before allocating it.)
"""
import contextlib
import json
import math
import os
import pickle
import re
import stat
import zipfile
from pathlib import Path

import numpy as np
import safetensors.torch
import torch
from safetensors import SafetensorError

from paper.formats.atomic import write_atomically

READ_ERRORS = (OSError, ValueError, RuntimeError, EOFError, KeyError, zipfile.BadZipFile, pickle.UnpicklingError,
               SafetensorError)


FILE_KINDS = ((stat.S_ISDIR, "directory"), (stat.S_ISFIFO, "FIFO"), (stat.S_ISCHR, "character device"),
              (stat.S_ISBLK, "block device"), (stat.S_ISSOCK, "socket"))
MAX_JSON_BYTES = 64 * 2 ** 20         # a config.json with 21k label names is ~1 MiB


def reason(error: Exception, longest: int = 200) -> str:
    """A library's error, short enough for a one-line message. torch.load's weights-only refusal is a page of advice
    (to load the file unsafely, among others) around one informative clause, which is kept."""
    text = str(error)
    clause = re.search(r"WeightsUnpickler error:\s*([^\n]+)", text)
    text = f"torch.load refuses it: {clause[1].strip()}" if clause else \
        next((line.strip() for line in text.splitlines() if line.strip()), type(error).__name__)
    return text if len(text) <= longest else text[:longest - 1] + "…"


@contextlib.contextmanager
def naming(path):
    """A ValueError raised within names `path` first: the user learns which file is wrong."""
    try:
        yield
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from e


def read_state_dict(path, convert, **overrides):
    """A state-dict file (torch.save or .safetensors) -> convert(state_dict, **overrides), usually (cfg, params); a
    ValueError names the file."""
    sd = load_tensors(path)
    with naming(path):
        return convert(sd, **overrides)


def regular_file(path) -> None:
    """Refuse at once what is not a regular file: reading a FIFO blocks until a writer comes, /dev/zero never ends."""
    try:
        mode = os.stat(path).st_mode
    except OSError as e:
        raise ValueError(f"{path}: expected a readable file, got {e.strerror.lower()}") from e
    if not stat.S_ISREG(mode):
        kind = next((name for test, name in FILE_KINDS if test(mode)), "special file")
        raise ValueError(f"{path}: expected a regular file, got a {kind}")


def is_safetensors(path) -> bool:
    """A safetensors file starts with an 8-byte little-endian header length, then the JSON header '{'."""
    with open(path, "rb") as f:
        head = f.read(9)
    return len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < os.path.getsize(path)


def is_npz(path) -> bool:
    """An .npz is a zip of .npy files (a torch.save file is a zip too, but of a pickle and raw storages)."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        names = z.namelist()
    return bool(names) and all(n.endswith(".npy") for n in names)


def load_tensors(path) -> dict[str, torch.Tensor]:
    """A state_dict from a .safetensors or torch.save file; a {"state_dict": ...} or {"model": ...} wrapper is
    opened."""
    regular_file(path)
    try:
        if is_safetensors(path):
            return safetensors.torch.load_file(path)
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except READ_ERRORS as e:
        raise ValueError(f"{path}: expected a readable .safetensors or torch checkpoint, got an unreadable file "
                         f"({reason(e)})") from e
    for wrapper in ("state_dict", "model"):
        if isinstance(sd, dict) and isinstance(sd.get(wrapper), dict):
            sd = sd[wrapper]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ValueError(f"{path}: expected a state_dict of tensors, got {type(sd).__name__}")
    return sd


def save_tensors(sd: dict[str, torch.Tensor], path) -> None:
    """.safetensors by the name's suffix, torch.save otherwise; atomic."""
    sd = {k: v.detach().contiguous() for k, v in sd.items()}
    if str(path).endswith(".safetensors"):
        write_atomically(path, lambda tmp: safetensors.torch.save_file(sd, tmp, metadata={"format": "pt"}))
    else:
        write_atomically(path, lambda tmp: torch.save(sd, tmp))


def npz_headers(path) -> list[tuple[str, tuple, np.dtype, int, int]]:
    """(name, shape, dtype, bytes declared, bytes stored) of every .npy member, from the headers alone."""
    headers = []
    with zipfile.ZipFile(path) as z:
        for info in z.infolist():
            with z.open(info) as f:
                version = np.lib.format.read_magic(f)
                read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
                    np.lib.format.read_array_header_2_0
                shape, _, dtype = read_header(f)
                headers.append((info.filename.removesuffix(".npy"), shape, dtype, math.prod(shape) * dtype.itemsize,
                                info.file_size - f.tell()))
    return headers


def save_directory(directory, tensors_name: str, sd: dict[str, torch.Tensor], texts: dict[str, str]) -> None:
    """A directory of one tensor file and text files (transformers' save_pretrained layout, a timm hub directory),
    built beside `directory` and renamed over it: it appears whole or not at all (`paper.formats.atomic`)."""
    def write(tmp):
        save_tensors(sd, Path(tmp) / tensors_name)
        for name, text in texts.items():
            (Path(tmp) / name).write_text(text)
    write_atomically(directory, write, directory=True)


def load_arrays(path) -> dict[str, np.ndarray]:
    """Every array of an .npz, read now (np.load is lazy, so a truncated member would fail later). Each must hold
    floating-point numbers and exactly the bytes its header declares: np.load allocates the declared shape before
    reading, so an absurd one is refused first."""
    regular_file(path)
    try:
        headers = npz_headers(path)
    except READ_ERRORS as e:
        raise ValueError(f"{path}: expected a readable .npz archive, got an unreadable file ({reason(e)})") from e
    for name, shape, dtype, declared, stored in headers:
        if dtype.kind != "f":
            raise ValueError(f"{path}: array {name!r}: expected floating-point weights, got dtype {dtype}")
        if declared != stored:
            raise ValueError(f"{path}: array {name!r}: expected its header's shape {shape} ({declared:,} bytes) to "
                             f"match the {stored:,} bytes stored")
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except READ_ERRORS as e:
        raise ValueError(f"{path}: expected a readable .npz archive, got an unreadable file ({reason(e)})") from e


JSON_KINDS = {
    "an integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "a finite number": lambda v: isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v),
    "true or false": lambda v: isinstance(v, bool),
    "a string": lambda v: isinstance(v, str),
    "an integer or [height, width]": lambda v: JSON_KINDS["an integer"](v) or (
        isinstance(v, list) and len(v) == 2 and all(JSON_KINDS["an integer"](x) for x in v)),
    "a list of numbers": lambda v: isinstance(v, list) and all(JSON_KINDS["a finite number"](x) for x in v),
    "a list of integers": lambda v: isinstance(v, list) and all(JSON_KINDS["an integer"](x) for x in v),
    "an object": lambda v: isinstance(v, dict),
    "a list of strings": lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v),
}
REQUIRED = object()


def read_json(path) -> dict:
    """A JSON object from a regular file of sane size, or a ValueError naming the file."""
    regular_file(path)
    if os.path.getsize(path) > MAX_JSON_BYTES:
        raise ValueError(f"{path}: expected a JSON config of at most {MAX_JSON_BYTES:,} bytes, got "
                         f"{os.path.getsize(path):,}")
    try:
        with open(path, encoding="utf-8") as f:
            config = json.load(f)
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: expected a JSON config, got an unreadable file ({reason(e)})") from e
    if not isinstance(config, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(config).__name__}")
    return config


def json_value(config: dict, key: str, kind: str, where, default=REQUIRED):
    """config[key], which must be of `kind` (a key of JSON_KINDS); `default` when absent, unless REQUIRED.
    `where` (the file) is named in the error, with the key."""
    if key not in config:
        if default is REQUIRED:
            raise ValueError(f"{where}: {key}: expected {kind}, got no such field")
        return default
    value = config[key]
    if not JSON_KINDS[kind](value):
        raise ValueError(f"{where}: {key}: expected {kind}, got {value!r}")
    return value


def save_arrays(arrays: dict[str, np.ndarray], path) -> None:
    """An uncompressed .npz, written atomically (through a file object, so numpy adds no suffix)."""
    def write(tmp):
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
    write_atomically(path, write)
