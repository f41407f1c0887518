"""No set-uid or set-gid bit ever comes out of a sandbox: the sandbox agent's seccomp filter.

A file a sandbox command writes in ``/workspace`` is a file on the host. Were its set-uid bit
set (``cp /bin/bash x; chmod 4755 x``), any local user could run it as the file's owner, and a
mount option cannot help: ``nosuid`` on the container's bind mount binds nothing on the host's
own view of the directory. So the sandbox agent, before it reads its key or starts bash, sets
``PR_SET_NO_NEW_PRIVS`` and installs the seccomp filter below on itself. Every process of the
sandbox descends from the agent (it is the container's PID 1), inherits the filter and can
never remove it; it stacks on Docker's default profile, and the stricter answer wins.

The filter answers:

- ``chmod``, ``fchmod``, ``fchmodat``, ``fchmodat2`` with a mode holding S_ISUID or S_ISGID
  (06000), and ``open``, ``creat``, ``openat``, ``mknod``, ``mknodat`` creating a file with such
  a mode: EPERM. This covers ``chmod u+s``/``g+s``, ``install -m 4755``, ``cp -p``, ``tar -p``
  and ``os.open(path, O_CREAT, 0o4755)``, which all come down to these calls; ``mkdir`` cannot
  set either bit (the kernel drops them), and a write to an existing set-uid file clears it.
- ``openat2`` (its mode is in a struct a filter cannot read): ENOSYS, so libc and runtimes fall
  back to ``openat``. ``io_uring_setup``/``enter``/``register``: ENOSYS, as ring operations
  (an io_uring openat) never pass through seccomp.
- Any call of another ABI (i386 on x86_64, x32; arm32 on aarch64), whose numbers differ: ENOSYS.

Supported: x86_64 and aarch64. Elsewhere, or where the kernel refuses the filter, the agent does
not start (:class:`~stigmer_kernel.errors.StigmerError` with the reason): a sandbox never runs
unprotected. The numbers are the kernel's (arch/x86/entry/syscalls/syscall_64.tbl and
include/uapi/asm-generic/unistd.h); the filter costs a few BPF instructions per system call.
"""

from __future__ import annotations

import ctypes
import enum
import errno
import os
import platform
import stat
import sys
from typing import NamedTuple

from ..errors import StigmerError

#: The mode bits a sandbox may never set on a file.
SPECIAL_BITS = stat.S_ISUID | stat.S_ISGID

_PR_SET_SECCOMP = 22
_PR_SET_NO_NEW_PRIVS = 38
_SECCOMP_MODE_FILTER = 2
_SECCOMP_RET_ALLOW = 0x7FFF0000
_SECCOMP_RET_ERRNO = 0x00050000

# Classic BPF opcodes (linux/filter.h) the program uses.
_LD_W_ABS = 0x20  # BPF_LD | BPF_W | BPF_ABS: load a 32-bit word of struct seccomp_data
_JEQ_K = 0x15  # BPF_JMP | BPF_JEQ | BPF_K
_JGE_K = 0x35  # BPF_JMP | BPF_JGE | BPF_K
_JSET_K = 0x45  # BPF_JMP | BPF_JSET | BPF_K
_RET_K = 0x06  # BPF_RET | BPF_K

# struct seccomp_data: int nr; __u32 arch; __u64 instruction_pointer; __u64 args[6].
_NR_OFFSET = 0
_ARCH_OFFSET = 4
_ARGS_OFFSET = 16


class X86_64(enum.IntEnum):
    """x86_64 system call numbers (arch/x86/entry/syscalls/syscall_64.tbl)."""

    OPEN = 2
    CREAT = 85
    CHMOD = 90
    FCHMOD = 91
    MKNOD = 133
    OPENAT = 257
    MKNODAT = 259
    FCHMODAT = 268
    IO_URING_SETUP = 425
    IO_URING_ENTER = 426
    IO_URING_REGISTER = 427
    OPENAT2 = 437
    FCHMODAT2 = 452


class AARCH64(enum.IntEnum):
    """aarch64 system call numbers (include/uapi/asm-generic/unistd.h): no legacy open, creat,
    chmod or mknod there."""

    MKNODAT = 33
    FCHMOD = 52
    FCHMODAT = 53
    OPENAT = 56
    IO_URING_SETUP = 425
    IO_URING_ENTER = 426
    IO_URING_REGISTER = 427
    OPENAT2 = 437
    FCHMODAT2 = 452


#: AUDIT_ARCH_* (linux/audit.h): EM_X86_64 / EM_AARCH64 | 64-bit | little-endian.
AUDIT_ARCH_X86_64 = 0xC000003E
AUDIT_ARCH_AARCH64 = 0xC00000B7
#: x86_64: numbers with this bit are the x32 ABI's.
X32_SYSCALL_BIT = 0x40000000


# Not a frozen dataclass: an agent's start imports no dataclasses (with inspect, ast).
class Arch(NamedTuple):
    """What the filter checks on one architecture."""

    audit: int  # the seccomp_data.arch value of this ABI; any other is refused
    mode_arg: dict[int, int]  # system call -> index of its mode argument
    refused: tuple[int, ...]  # system calls refused outright (ENOSYS)
    foreign_from: int | None = None  # numbers at or above this belong to another ABI


ARCHES: dict[str, Arch] = {
    "x86_64": Arch(
        audit=AUDIT_ARCH_X86_64,
        mode_arg={
            X86_64.CHMOD: 1,
            X86_64.FCHMOD: 1,
            X86_64.FCHMODAT: 2,
            X86_64.FCHMODAT2: 2,
            X86_64.OPEN: 2,
            X86_64.CREAT: 1,
            X86_64.OPENAT: 3,
            X86_64.MKNOD: 1,
            X86_64.MKNODAT: 2,
        },
        refused=(
            X86_64.OPENAT2,
            X86_64.IO_URING_SETUP,
            X86_64.IO_URING_ENTER,
            X86_64.IO_URING_REGISTER,
        ),
        foreign_from=X32_SYSCALL_BIT,
    ),
    "aarch64": Arch(
        audit=AUDIT_ARCH_AARCH64,
        mode_arg={
            AARCH64.FCHMOD: 1,
            AARCH64.FCHMODAT: 2,
            AARCH64.FCHMODAT2: 2,
            AARCH64.OPENAT: 3,
            AARCH64.MKNODAT: 2,
        },
        refused=(
            AARCH64.OPENAT2,
            AARCH64.IO_URING_SETUP,
            AARCH64.IO_URING_ENTER,
            AARCH64.IO_URING_REGISTER,
        ),
    ),
}
ARCHES["arm64"] = ARCHES["aarch64"]


class _SockFilter(ctypes.Structure):
    _fields_ = [
        ("code", ctypes.c_ushort),
        ("jt", ctypes.c_ubyte),
        ("jf", ctypes.c_ubyte),
        ("k", ctypes.c_uint),
    ]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(_SockFilter))]


#: One instruction before its jumps are resolved: (code, k, label if true, label if false).
_Insn = tuple[int, int, str | None, str | None]


def program(arch: Arch) -> list[tuple[int, int, int, int]]:
    """The filter for ``arch`` as (code, jt, jf, k) instructions."""
    eperm = _SECCOMP_RET_ERRNO | errno.EPERM
    enosys = _SECCOMP_RET_ERRNO | errno.ENOSYS
    body: list[_Insn | str] = [
        (_LD_W_ABS, _ARCH_OFFSET, None, None),
        (_JEQ_K, arch.audit, None, "enosys"),
        (_LD_W_ABS, _NR_OFFSET, None, None),
    ]
    if arch.foreign_from is not None:
        body.append((_JGE_K, arch.foreign_from, "enosys", None))
    body += [(_JEQ_K, nr, "enosys", None) for nr in arch.refused]
    body += [(_JEQ_K, nr, f"arg{index}", None) for nr, index in arch.mode_arg.items()]
    body.append((_RET_K, _SECCOMP_RET_ALLOW, None, None))
    for index in sorted(set(arch.mode_arg.values())):
        # The low 32 bits of a 64-bit argument (little-endian): the kernel reads a mode as
        # umode_t, so the high ones never count.
        body += [
            f"arg{index}",
            (_LD_W_ABS, _ARGS_OFFSET + 8 * index, None, None),
            (_JSET_K, SPECIAL_BITS, "eperm", None),
            (_RET_K, _SECCOMP_RET_ALLOW, None, None),
        ]
    body += ["eperm", (_RET_K, eperm, None, None), "enosys", (_RET_K, enosys, None, None)]
    labels: dict[str, int] = {}
    insns: list[_Insn] = []
    for item in body:
        if isinstance(item, str):
            labels[item] = len(insns)
        else:
            insns.append(item)

    def offset(at: int, label: str | None) -> int:
        if label is None:
            return 0  # the next instruction
        jump = labels[label] - at - 1
        assert 0 <= jump <= 255, "a BPF jump reaches 255 instructions at most"
        return jump

    return [(code, offset(i, jt), offset(i, jf), k) for i, (code, k, jt, jf) in enumerate(insns)]


def install(probe_dir: str, machine: str | None = None) -> None:
    """Install the filter on the calling thread, for good; raise StigmerError if it cannot be.

    Call it before any other thread exists (threads started before it would go unfiltered) and
    before anything of the user runs. ``probe_dir``: a writable directory where a nameless file
    proves the filter works.
    """
    machine = machine or platform.machine()
    arch = ARCHES.get(machine)
    if arch is None or sys.byteorder != "little":
        raise StigmerError(
            f"sandbox agent: no seccomp filter for {machine} ({sys.byteorder}-endian); sandbox "
            "mode runs on x86_64 and aarch64 hosts only — use --mode local here"
        )
    insns = program(arch)
    table = (_SockFilter * len(insns))(*(_SockFilter(c, jt, jf, k) for c, jt, jf, k in insns))
    prog = _SockFprog(len(insns), table)
    libc = ctypes.CDLL(None, use_errno=True)
    prctl = libc.prctl
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p, ctypes.c_ulong, ctypes.c_ulong]
    prctl.restype = ctypes.c_int
    for option, value, pointer in (
        (_PR_SET_NO_NEW_PRIVS, 1, None),
        (_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, ctypes.addressof(prog)),
    ):
        if prctl(option, value, pointer, 0, 0) != 0:
            code = ctypes.get_errno()
            raise StigmerError(
                f"sandbox agent: the kernel refused its seccomp filter ({os.strerror(code)}); "
                "sandboxes need seccomp filters (CONFIG_SECCOMP_FILTER) — use --mode local here"
            )
    _prove(probe_dir)


def _prove(directory: str) -> None:
    """Check that the filter holds: a set-uid chmod of a nameless file must fail."""
    fd = _nameless_file(directory)
    try:
        os.fchmod(fd, 0o4600)
    except PermissionError:
        return
    finally:
        os.close(fd)
    raise StigmerError(
        "sandbox agent: its seccomp filter is installed but does not refuse set-uid modes; "
        "not starting"
    )


def _nameless_file(directory: str) -> int:
    """A new file without a name in ``directory``, made as ``tempfile.TemporaryFile`` makes
    one (``O_TMPFILE``, else a file unlinked at once), without importing tempfile (and shutil,
    bz2, lzma) at every sandbox start."""
    flags = os.O_RDWR | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        return os.open(directory, flags | os.O_TMPFILE, 0o600)
    except OSError:  # no O_TMPFILE here (kernel or file system): as tempfile does, a named one
        pass
    for _ in range(100):
        path = os.path.join(directory, f".stigmer-probe-{os.urandom(6).hex()}")
        try:
            fd = os.open(path, flags | os.O_CREAT, 0o600)
        except FileExistsError:
            continue
        os.unlink(path)
        return fd
    raise FileExistsError(errno.EEXIST, "no free name for a probe file", directory)
