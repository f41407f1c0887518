"""Process-tree helpers: subreaping, finding, proving and ending processes (agent and broker).

A command's processes are the agent's descendants started after the command began (their
``starttime`` in ``/proc/PID/stat``). Because the agent is a child subreaper, processes that
double-fork or ``setsid`` away are reparented to it and are still found: when the agent ends it
ends every one of them (:func:`end_descendants`). The broker is a child subreaper too, for the
local agents it starts: the processes of an agent that died without that last sweep come to it.

A pid that was recorded (in a re-adoption record, from a heartbeat) is signalled only after
proving it is still that process: its start time, read through a pidfd so that the pid cannot
change hands between the check and the signal (:func:`signal_if_same`).

Without ``/proc`` (not Linux) these helpers degrade to signalling the shell's process group only.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import glob
import os
import signal
import time
from pathlib import Path
from typing import NamedTuple

_PR_SET_DUMPABLE = 4
_PR_SET_CHILD_SUBREAPER = 36
_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_HAS_PROC = os.path.isdir("/proc/self")
_HAS_CHILDREN = os.path.exists("/proc/thread-self/children")  # CONFIG_PROC_CHILDREN
#: Seconds :func:`end_descendants` goes on killing what keeps appearing (a fork loop): an
#: agent ending, and a server ending a process tree on its event loop.
END_TIMEOUT = 2.0
KILL_TIMEOUT = 0.5
_GONE = (b"Z", b"X", b"x")  # zombie or dead: nothing left to end, only to reap


# Not a frozen dataclass: an agent's start imports no dataclasses (with inspect, ast).
class Stat(NamedTuple):
    """The fields of ``/proc/PID/stat`` that these helpers use."""

    state: bytes
    ppid: int
    sid: int
    start: int  # clock ticks since boot

    @property
    def alive(self) -> bool:
        return self.state not in _GONE


@functools.cache
def _libc() -> ctypes.CDLL | None:
    # glibc's name first: ctypes.util.find_library runs `ldconfig -p` (tens of milliseconds of
    # every agent's start, the first thing it does) to give that same name back; it is asked
    # only where that name is not libc's (musl, other systems).
    try:
        return ctypes.CDLL("libc.so.6", use_errno=True)
    except OSError:
        pass
    from ctypes.util import find_library

    try:
        return ctypes.CDLL(find_library("c") or "libc.so.6", use_errno=True)
    except OSError:
        return None


def _prctl(option: int, value: int) -> bool:
    try:
        libc = _libc()
        return libc is not None and bool(libc.prctl(option, value, 0, 0, 0) == 0)
    except AttributeError:  # no prctl: not Linux
        return False


def set_child_subreaper() -> bool:
    """Make orphaned descendants reparent to this process (Linux); False if unsupported."""
    return _prctl(_PR_SET_CHILD_SUBREAPER, 1)


def set_non_dumpable() -> bool:
    """Refuse other processes of the same uid a look into this one's memory and environment
    (``/proc/PID/mem``, ``environ``, ptrace): the agent holds its kernel's key. A program it
    execs is dumpable again. False if unsupported."""
    return _prctl(_PR_SET_DUMPABLE, 0)


def boot_ticks() -> int:
    """Now, in the clock ticks since boot that ``/proc/PID/stat`` start times use."""
    clock = getattr(time, "CLOCK_BOOTTIME", time.CLOCK_MONOTONIC)
    return int(time.clock_gettime(clock) * _CLK_TCK)


def stat(pid: int) -> Stat | None:
    """``pid``'s state, parent, session and start time, or None if there is no such process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            data = handle.read()
    except OSError:
        return None
    # The command name is in parentheses and may hold spaces: split after the last ')'.
    fields = data[data.rfind(b")") + 2 :].split()
    try:
        return Stat(fields[0], int(fields[1]), int(fields[3]), int(fields[19]))
    except (IndexError, ValueError):
        return None


def start_time(pid: int) -> int | None:
    """``pid``'s start time (clock ticks since boot), or None if there is no such process."""
    info = stat(pid)
    return info.start if info is not None else None


def child_start(pid: int, parent: int) -> int | None:
    """The start time of ``pid`` if it is a child of ``parent`` (how a pid an agent reports is
    proven to be its own before it is recorded), else None."""
    info = stat(pid)
    return info.start if info is not None and info.ppid == parent else None


def _all() -> dict[int, Stat]:
    found = {}
    for name in os.listdir("/proc"):
        if name.isdigit() and (info := stat(int(name))) is not None:
            found[int(name)] = info
    return found


def children(pid: int) -> list[int]:
    """The children of ``pid`` (every thread's), from ``/proc/PID/task/*/children``."""
    if not _HAS_CHILDREN:  # a kernel without CONFIG_PROC_CHILDREN: the long way
        return [child for child, info in _all().items() if info.ppid == pid]
    found: list[int] = []
    for path in glob.glob(f"/proc/{pid}/task/*/children"):
        with contextlib.suppress(OSError, ValueError), open(path, "rb") as handle:
            found.extend(int(p) for p in handle.read().split())
    return found


def descendants(
    root: int, full_scan: bool = False, prune: frozenset[int] | set[int] = frozenset()
) -> dict[int, int]:
    """All live descendants of ``root`` as {pid: starttime}: walked down from ``root`` through
    each process's children (a few reads for a kernel's handful of processes), or, with
    ``full_scan``, from every process's parent in ``/proc`` (which a process forking or exiting
    just then cannot hide from). The trees of the pids in ``prune`` are left out (a kernel's
    background processes)."""
    if not _HAS_PROC:
        return {}
    scan = full_scan or not _HAS_CHILDREN
    table = _all() if scan else {}
    kids: dict[int, list[int]] = {}
    for pid, entry in table.items():
        kids.setdefault(entry.ppid, []).append(pid)
    found: dict[int, int] = {}
    seen: set[int] = set()
    stack = [root]
    while stack:
        parent = stack.pop()
        for child in kids.get(parent, []) if scan else children(parent):
            info = table.get(child) if scan else stat(child)
            if child in seen or info is None or child in prune:
                continue
            seen.add(child)
            if info.alive:
                found[child] = info.start
            stack.append(child)
    return found


def started_since(
    root: int, since_ticks: int, exclude: set[int], prune: frozenset[int] | set[int] = frozenset()
) -> list[int]:
    """Descendants of ``root`` started at or after ``since_ticks``, minus ``exclude`` and the
    trees of ``prune``."""
    return [
        pid
        for pid, start in descendants(root, prune=prune).items()
        if start >= since_ticks - 1 and pid not in exclude
    ]


def signal_pids(pids: list[int], sig: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def signal_if_same(pid: int, start: int | None, sig: int) -> bool:
    """Send ``sig`` to ``pid`` only if it is still the process that started at ``start`` (ticks,
    as in ``/proc/PID/stat``); True if sent. A pid the OS has since given to another process is
    left alone: the pidfd is opened before the check, so the pid cannot change hands between
    the check and the signal."""
    if start is None or pid <= 0:
        return False
    try:
        fd: int | None = os.pidfd_open(pid)
    except ProcessLookupError:
        return False
    except (OSError, AttributeError):  # no pidfd (Linux < 5.3): the check narrows the race
        fd = None
    try:
        info = stat(pid)
        if info is None or info.start != start:
            return False
        if fd is not None:
            signal.pidfd_send_signal(fd, sig)
        else:
            os.kill(pid, sig)
        return True
    except (ProcessLookupError, PermissionError):
        return False
    finally:
        if fd is not None:
            os.close(fd)


def reap_children() -> None:
    """Collect every exited child of this process (only for a process about to end)."""
    with contextlib.suppress(ChildProcessError):
        while os.waitpid(-1, os.WNOHANG)[0] > 0:
            pass


def end_descendants(root: int, timeout: float = END_TIMEOUT) -> bool:
    """SIGKILL every live descendant of ``root`` until none is left (at most ``timeout``
    seconds); True if none is. ``root`` must be a child subreaper that cannot fork meanwhile
    (this process, ending; or a stopped one): what a killed process leaves is then reparented
    to ``root`` and found in the next round. The zombies of this process's children are reaped.
    """
    deadline = time.monotonic() + timeout
    confirmed = False  # an empty walk is checked once against every process's parent
    while True:
        found = descendants(root, full_scan=confirmed)
        for pid, start in found.items():
            signal_if_same(pid, start, signal.SIGKILL)
        if root == os.getpid():
            reap_children()
        if not found and confirmed:
            return True
        confirmed = not found
        if time.monotonic() > deadline:
            return False
        if found:
            time.sleep(0.005)


def kill_tree(pid: int, start: int | None, timeout: float = END_TIMEOUT) -> bool:
    """SIGKILL the process ``pid`` and everything below it, if it is still the process that
    started at ``start``; True if it was. Below a child subreaper (an agent) nothing escapes:
    it is stopped first, so what its killed descendants leave is reparented to it, not away."""
    if not signal_if_same(pid, start, signal.SIGSTOP):  # stopped, it neither forks nor reaps
        return False
    end_descendants(pid, timeout)
    signal_if_same(pid, start, signal.SIGKILL)
    return True


def kill_session(sid: int, leader_start: int | None = None) -> bool:
    """SIGKILL every process of session ``sid``; True if it was signalled.

    Without ``leader_start``: the caller's own child's session (bash, not yet reaped, so its pid
    and session id cannot have been reused). With it: a recorded session, signalled only if its
    leader (pid ``sid``) is still the process that started then. A session whose leader is gone
    is not signalled, as its id cannot be proven to be the recorded one (its members reparent to
    a subreaper, which ends them).
    """
    if leader_start is None:
        signal_group(sid, signal.SIGKILL)  # the whole group at once: none of it forks meanwhile
    if not _HAS_PROC:
        return leader_start is None
    table = _all()
    # Checked after the scan: a leader alive from before it until now held the session id.
    if leader_start is not None and start_time(sid) != leader_start:
        return False
    for pid, info in table.items():
        if info.sid == sid and info.alive:
            signal_if_same(pid, info.start, signal.SIGKILL)
    return True


def oom_kills() -> int | None:
    """How many processes the out-of-memory killer ended in this process's memory cgroup (v2
    ``memory.events``, v1 ``memory.oom_control``), or None where the kernel does not say."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":
            base, name = "/sys/fs/cgroup", "memory.events"
        elif "memory" in controllers.split(","):
            base, name = "/sys/fs/cgroup/memory", "memory.oom_control"
        else:
            continue
        # The cgroup's own directory; in a container whose cgroup path is the host's (no cgroup
        # namespace), its memory cgroup is mounted at the root instead.
        for directory in (f"{base}{path.rstrip('/')}", base):
            with contextlib.suppress(OSError, ValueError):
                for entry in Path(directory, name).read_text().splitlines():
                    key, _, value = entry.partition(" ")
                    if key == "oom_kill":
                        return int(value)
    return None


_OOM_SEEN = [oom_kills()]


def oom_killed() -> bool:
    """Whether the out-of-memory killer ended a process of this cgroup since the last time a
    command was asked this (read only after a SIGKILL: no cost on other commands)."""
    now = oom_kills()
    killed = now is not None and _OOM_SEEN[0] is not None and now > _OOM_SEEN[0]
    _OOM_SEEN[0] = now
    return killed
