"""One background process of a kernel: its ``Popen``, its output journals and its status.

:class:`Journal` keeps the last bytes of one stream with absolute offsets (what falls out of
the bound is counted); :class:`BackgroundProcess` is what the agent's process table
(agent/processes.py) holds for one process.
"""

from __future__ import annotations

import collections
import contextlib
import signal
import subprocess
from typing import Any

from ..protocol import ErrorName


class Journal:
    """The last ``limit`` bytes of one stream, addressed by absolute offsets from 0."""

    def __init__(self, limit: int) -> None:
        self.limit = max(1, limit)
        self.chunks: collections.deque[bytes] = collections.deque()
        self.size = 0  # bytes held
        self.end = 0  # bytes written in all: the offset of the next one
        self.eof = False

    @property
    def start(self) -> int:
        """The oldest offset still held: as many bytes were dropped."""
        return self.end - self.size

    def append(self, data: bytes) -> None:
        """``data`` was written: kept, and the oldest bytes beyond the bound dropped."""
        self.end += len(data)
        self.chunks.append(data)
        self.size += len(data)
        while self.size > self.limit:
            first = self.chunks[0]
            over = self.size - self.limit
            if len(first) <= over:
                self.chunks.popleft()
                self.size -= len(first)
            else:
                self.chunks[0] = first[over:]
                self.size -= over

    def read(self, since: int, most: int) -> tuple[int, bytes]:
        """Up to ``most`` bytes from offset ``since`` (or the oldest held, if later): (offset
        of the first byte returned, bytes)."""
        offset = max(since, self.start)
        skip = offset - self.start
        out: list[bytes] = []
        room = most
        for chunk in self.chunks:
            if room <= 0:
                break
            if skip >= len(chunk):
                skip -= len(chunk)
                continue
            piece = chunk[skip : skip + room]
            skip = 0
            out.append(piece)
            room -= len(piece)
        return offset, b"".join(out)


class BackgroundProcess:
    # A plain class, not a dataclass: an agent's start imports no dataclasses (inspect, ast).

    id: str
    command: str
    popen: subprocess.Popen[bytes]
    started: float  # Unix time
    journals: dict[str, Journal]
    fds: dict[int, str]  # open output pipes: fd -> stream name
    stdin_fd: int
    stdin_buffer: bytearray
    stdin_close: bool  # close the pipe once the buffer is written
    stdin_written: int
    pidfd: int
    changed: int  # counts output and the exit: long-polls answer when it moves

    def __init__(
        self,
        id: str,
        command: str,
        popen: subprocess.Popen[bytes],
        started: float,
        journals: dict[str, Journal],
        fds: dict[int, str] | None = None,
        stdin_fd: int = -1,
        stdin_buffer: bytearray | None = None,
        stdin_close: bool = False,
        stdin_written: int = 0,
        pidfd: int = -1,
        changed: int = 0,
    ) -> None:
        self.id = id
        self.command = command
        self.popen = popen
        self.started = started
        self.journals = journals
        self.fds = {} if fds is None else fds
        self.stdin_fd = stdin_fd
        self.stdin_buffer = bytearray() if stdin_buffer is None else stdin_buffer
        self.stdin_close = stdin_close
        self.stdin_written = stdin_written
        self.pidfd = pidfd
        self.changed = changed

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def returncode(self) -> int | None:
        return self.popen.returncode

    @property
    def running(self) -> bool:
        return self.popen.returncode is None

    def status(self) -> dict[str, Any]:
        """What ``list``, ``wait`` and ``output`` say about it."""
        code = self.popen.returncode
        sig = None
        if code is not None and code < 0:
            with contextlib.suppress(ValueError):
                sig = signal.Signals(-code).name
        return {
            "id": self.id,
            "command": self.command,
            "pid": self.pid,
            "state": "running" if code is None else "exited",
            "started": self.started,
            "exit_code": code if code is None or code >= 0 else 128 - code,
            "signal": sig,
            "stdin": "open" if self.stdin_fd >= 0 and not self.stdin_close else "closed",
            **{
                name: {"end": j.end, "dropped": j.start, "eof": j.eof}
                for name, j in self.journals.items()
            },
        }


class ProcessError(Exception):
    """A process request that cannot be served: its error name and message."""

    def __init__(self, ename: str, message: str) -> None:
        super().__init__(message)
        self.ename = ename
        self.message = message


def parse_signal(value: Any) -> int:
    """A signal by number, or by name with or without ``SIG`` (``TERM``, ``sigkill``)."""
    if isinstance(value, int) and not isinstance(value, bool):
        try:
            return int(signal.Signals(value))
        except ValueError:
            pass
    elif isinstance(value, str):
        name = value.strip().upper()
        if name.isdigit():
            return parse_signal(int(name))
        name = name if name.startswith("SIG") else "SIG" + name
        with contextlib.suppress(KeyError):
            return int(signal.Signals[name])
    raise ProcessError(ErrorName.BAD_REQUEST, f"unknown signal {value!r} (e.g. TERM, KILL, 9)")


def how(proc: BackgroundProcess) -> str:
    status = proc.status()
    if status["signal"]:
        return f"killed by {status['signal']}"
    return f"exit code {status['exit_code']}"
