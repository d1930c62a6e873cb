"""Reading tensor files with errors that name the file, and writing them whole or not at all (`paper.atomic`)."""
import os
import pickle
import zipfile

import numpy as np
import safetensors.torch
import torch
from safetensors import SafetensorError

from paper.atomic import write_atomically

READ_ERRORS = (OSError, ValueError, RuntimeError, EOFError, KeyError, zipfile.BadZipFile, pickle.UnpicklingError,
               SafetensorError)


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
    try:
        if is_safetensors(path):
            return safetensors.torch.load_file(path)
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except READ_ERRORS as e:
        raise ValueError(f"{path}: expected a readable .safetensors or torch checkpoint, got an unreadable file "
                         f"({e})") from e
    for wrapper in ("state_dict", "model"):
        if isinstance(sd, dict) and isinstance(sd.get(wrapper), dict):
            sd = sd[wrapper]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ValueError(f"{path}: expected a state_dict of tensors, got {type(sd).__name__}")
    return sd


def read_state_dict(path, convert, **overrides):
    """convert(the state dict in `path`, **overrides), a refusal naming the file."""
    sd = load_tensors(path)
    try:
        return convert(sd, **overrides)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from e


def save_tensors(sd: dict[str, torch.Tensor], path) -> None:
    """.safetensors by the name's suffix, torch.save otherwise; atomic."""
    sd = {k: v.detach().contiguous() for k, v in sd.items()}
    if str(path).endswith(".safetensors"):
        write_atomically(path, lambda tmp: safetensors.torch.save_file(sd, tmp, metadata={"format": "pt"}))
    else:
        write_atomically(path, lambda tmp: torch.save(sd, tmp))


def load_arrays(path) -> dict[str, np.ndarray]:
    """Every array of an .npz, read now (np.load is lazy, so a truncated member would fail later)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except READ_ERRORS as e:
        raise ValueError(f"{path}: expected a readable .npz archive, got an unreadable file ({e})") from e


def save_arrays(arrays: dict[str, np.ndarray], path) -> None:
    """An uncompressed .npz, written atomically (through a file object, so numpy adds no suffix)."""
    def write(tmp):
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
    write_atomically(path, write)
