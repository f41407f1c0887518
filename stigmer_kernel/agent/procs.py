"""Process-tree helpers for the agent: subreaping, finding and ending a command's processes.

A command's processes are the agent's descendants started after the command began (their
``starttime`` in ``/proc/PID/stat``). Because the agent is a child subreaper, processes that
double-fork or ``setsid`` away are reparented to it and are still found. Without ``/proc``
(not Linux) these helpers degrade to signalling the shell's process group only.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import signal
import time

_PR_SET_CHILD_SUBREAPER = 36
_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_HAS_PROC = os.path.isdir("/proc/self")


def set_child_subreaper() -> bool:
    """Make orphaned descendants reparent to this process (Linux); False if unsupported."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        return bool(libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0)
    except (OSError, AttributeError):
        return False


def boot_ticks() -> int:
    """Now, in the clock ticks since boot that ``/proc/PID/stat`` start times use."""
    clock = getattr(time, "CLOCK_BOOTTIME", time.CLOCK_MONOTONIC)
    return int(time.clock_gettime(clock) * _CLK_TCK)


def _stat(pid: int) -> tuple[int, int] | None:
    """(ppid, starttime) of ``pid``, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            data = handle.read()
    except OSError:
        return None
    # The command name is in parentheses and may hold spaces: split after the last ')'.
    fields = data[data.rfind(b")") + 2 :].split()
    try:
        return int(fields[1]), int(fields[19])
    except (IndexError, ValueError):
        return None


def descendants(root: int) -> dict[int, int]:
    """All live descendants of ``root`` as {pid: starttime}."""
    if not _HAS_PROC:
        return {}
    children: dict[int, list[int]] = {}
    starts: dict[int, int] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        info = _stat(int(name))
        if info is None:
            continue
        children.setdefault(info[0], []).append(int(name))
        starts[int(name)] = info[1]
    found: dict[int, int] = {}
    stack = [root]
    while stack:
        for child in children.get(stack.pop(), ()):
            if child not in found:
                found[child] = starts[child]
                stack.append(child)
    return found


def started_since(root: int, since_ticks: int, exclude: set[int]) -> list[int]:
    """Descendants of ``root`` started at or after ``since_ticks``, minus ``exclude``."""
    return [
        pid
        for pid, start in descendants(root).items()
        if start >= since_ticks - 1 and pid not in exclude
    ]


def signal_pids(pids: list[int], sig: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def kill_session(sid: int) -> None:
    """SIGKILL every process of session ``sid`` (the shell's session and its jobs)."""
    signal_group(sid, signal.SIGKILL)
    if not _HAS_PROC:
        return
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as handle:
                data = handle.read()
            fields = data[data.rfind(b")") + 2 :].split()
            if int(fields[3]) == sid:
                os.kill(int(name), signal.SIGKILL)
        except (OSError, IndexError, ValueError):
            continue
