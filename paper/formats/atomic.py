"""The one way this project writes a file or a directory: whole or not at all.

The content is written beside the destination under a temporary name, flushed to disk, given the mode a plain
`open()` or `mkdir()` would have given it (0666 or 0777 less the umask; `tempfile` makes 0600 and 0700), and only
then renamed over the destination with `os.replace`, which is atomic on POSIX. A reader sees the old content or the
new one, never half of either; a failure (an exception, a full disk, Ctrl-C) removes the temporary and leaves the
destination as it was. An OSError (a read-only or full disk, a parent that is a file) names the destination.

A process killed outright (SIGKILL, the out-of-memory killer, a power cut) runs no cleanup and leaves its temporary
beside the destination. So a writer holds a lock (`flock`) on its temporary while it writes, and every write to a
destination first removes the temporaries of earlier writes to it whose lock nobody holds: their writers are gone (the
kernel drops a dead process's locks). A run resumed after a kill (`paper.train --resume`) rewrites its checkpoints and
leaves no temporary behind, while a write still in progress in another process keeps its own.
"""
import contextlib
import errno
import fcntl
import os
import shutil
import tempfile
from pathlib import Path


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def fsync_tree(path: Path) -> None:
    """Flush a written file, or every file of a written directory, to disk."""
    for f in ([path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]):
        with open(f, "rb") as handle:
            os.fsync(handle.fileno())


def writable_parent(path: Path) -> None:
    """Make `path`'s parent directories; one that is a file is an OSError naming it (mkdir would only say "File
    exists")."""
    for parent in reversed(path.parents):
        if parent.exists() and not parent.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, f"{parent} is a file, not a directory")
    path.parent.mkdir(parents=True, exist_ok=True)


def write_atomically(path, write, *, directory: bool = False) -> None:
    """Call write(temporary path), then move what it wrote to `path`. With directory=True the temporary path is an
    empty directory for `write` to fill, and the finished directory replaces `path` (an existing one included)."""
    path = Path(path)
    try:
        writable_parent(path)
        replace_with_written(path, write, directory)
    except OSError as e:
        reason = getattr(e, "reason", None) or e.strerror or str(e)     # a nested write's reason, not its message
        message = f"could not write {path}: {reason}"
        error = OSError(e.errno, message) if e.errno else OSError(message)
        error.reason = reason
        raise error from e


@contextlib.contextmanager
def locked(path: Path):
    """Hold an exclusive lock on the file or directory `path` (an open descriptor; the kernel drops it when the
    process dies)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def is_abandoned(path: Path) -> bool:
    """Whether no process holds a lock on `path`: the write that made it has ended without removing it."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False                                   # removed meanwhile, or not ours to read
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)                                   # (closing releases the lock just taken)
    return True


def remove_abandoned(path: Path) -> None:
    """Remove the temporaries (`.NAME.*.tmp`, `.NAME.*.old`) that killed writes to `path` left beside it."""
    try:
        names = [e.name for e in os.scandir(path.parent)]
    except OSError:
        return                                         # a folder we may write in but not list: nothing to tidy
    for name in names:
        leftover = path.parent / name
        if name.startswith(f".{path.name}.") and name.endswith((".tmp", ".old")) and is_abandoned(leftover):
            if leftover.is_dir():
                shutil.rmtree(leftover, ignore_errors=True)
            else:
                leftover.unlink(missing_ok=True)


def replace_with_written(path: Path, write, directory: bool) -> None:
    prefix = f".{path.name}."
    remove_abandoned(path)
    if directory:
        tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=prefix, suffix=".tmp"))
    else:
        fd, name = tempfile.mkstemp(dir=path.parent, prefix=prefix, suffix=".tmp")
        os.close(fd)
        tmp = Path(name)
    try:
        with locked(tmp):                              # ours while we write: no other writer removes it
            write(str(tmp))
            fsync_tree(tmp)
            os.chmod(tmp, (0o777 if directory else 0o666) & ~current_umask())
            if directory and path.is_dir():
                old = Path(tempfile.mkdtemp(dir=path.parent, prefix=prefix, suffix=".old"))
                with locked(old):
                    os.replace(path, old / path.name)  # the old directory steps aside, then the new one takes its name
                    os.replace(tmp, path)
                    shutil.rmtree(old)
            else:
                os.replace(tmp, path)
    except BaseException:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        raise


def write_text(path, text: str) -> None:
    """A text file (UTF-8), written atomically."""
    write_atomically(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
