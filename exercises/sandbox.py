"""Confining the learner's process with Landlock (Linux ≥ 5.13), which any process may apply to itself, root or not.

After `confine(writable)` the process and everything it starts can create, change or remove files only beneath the
`writable` folders (and write to /dev/null); it still reads everything, so the libraries it imports later load as
usual. Landlock also keeps a confined process from tracing any process outside its domain (ptrace: the checker, the
supervisor), and from ABI 6 on from signalling one or reaching its abstract UNIX sockets. So the learner's code can
neither change the checker's files (its graders, a module it imports later) nor the checker as it runs.

The interface is three system calls, the same numbers on every architecture (include/uapi/asm-generic/unistd.h),
and two structs (include/uapi/linux/landlock.h); ctypes makes the calls, as Python has no binding of its own.
"""
import ctypes
import os
import struct

LANDLOCK_CREATE_RULESET, LANDLOCK_ADD_RULE, LANDLOCK_RESTRICT_SELF = 444, 445, 446
CREATE_RULESET_VERSION = 1 << 0
RULE_PATH_BENEATH = 1
PR_SET_NO_NEW_PRIVS = 38

# LANDLOCK_ACCESS_FS_* that change the file system, with the ABI version that introduced each.
WRITE_FILE, REMOVE_DIR, REMOVE_FILE = 1 << 1, 1 << 4, 1 << 5
MAKE = sum(1 << bit for bit in range(6, 13))          # MAKE_CHAR, _DIR, _REG, _SOCK, _FIFO, _BLOCK, _SYM
REFER, TRUNCATE = 1 << 13, 1 << 14                    # ABI 2, ABI 3
SCOPE_ABSTRACT_UNIX_SOCKET, SCOPE_SIGNAL = 1 << 0, 1 << 1   # ABI 6


def libc():
    return ctypes.CDLL(None, use_errno=True)


def abi_version() -> int:
    """The kernel's Landlock ABI version; 0 where Landlock is missing or disabled."""
    version = libc().syscall(LANDLOCK_CREATE_RULESET, None, ctypes.c_size_t(0), ctypes.c_uint32(CREATE_RULESET_VERSION))
    return max(version, 0)


def check(result: int, what: str) -> int:
    if result < 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"landlock {what}: {os.strerror(errno)}")
    return result


def confine(writable: list[str]) -> int:
    """Restrict this process (and its future children) to changing files beneath `writable`. -> the ABI version
    applied, 0 when the kernel has no Landlock (then nothing is restricted)."""
    abi = abi_version()
    if abi < 1:
        return 0
    changes = WRITE_FILE | REMOVE_DIR | REMOVE_FILE | MAKE | (REFER if abi >= 2 else 0) | (TRUNCATE if abi >= 3 else 0)
    scoped = SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL if abi >= 6 else 0
    attr = struct.pack("=QQQ", changes, 0, scoped)[:24 if abi >= 6 else 16 if abi >= 4 else 8]
    call = libc().syscall
    ruleset = check(call(LANDLOCK_CREATE_RULESET, attr, ctypes.c_size_t(len(attr)), ctypes.c_uint32(0)), "ruleset")
    try:
        for path, allowed in [(p, changes) for p in writable] + [("/dev/null", WRITE_FILE | (changes & TRUNCATE))]:
            fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
            try:
                rule = struct.pack("=Qi", allowed, fd)                     # landlock_path_beneath_attr, packed
                check(call(LANDLOCK_ADD_RULE, ruleset, RULE_PATH_BENEATH, rule, ctypes.c_uint32(0)), f"rule {path}")
            finally:
                os.close(fd)
        check(libc().prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")
        check(call(LANDLOCK_RESTRICT_SELF, ruleset, ctypes.c_uint32(0)), "restrict_self")
    finally:
        os.close(ruleset)
    return abi
