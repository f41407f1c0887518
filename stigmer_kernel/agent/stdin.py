"""A command's stdin as a FIFO the agent writes into while the command runs.

Two uses. Interactive stdin, for commands whose client allows it (Jupyter's input_request):
the agent looks (every 100 ms) for one of the command's processes blocked in ``read`` on that
FIFO with nothing left to read: that is the moment a terminal would show a cursor, so the agent
asks the client for a line (``input_request``) and writes the answer into the FIFO. Streamed
stdin (a native client's ``stdin_chunk`` messages): the chunks are written as the command reads,
and the agent's end is closed at the client's end of input, which the command sees as EOF.
"""

from __future__ import annotations

import array
import contextlib
import fcntl
import os
import platform
import stat
import termios
from pathlib import Path

# read(2) and readv(2) syscall numbers by machine.
_READ_SYSCALLS = {
    "x86_64": {0, 19},
    "amd64": {0, 19},
    "aarch64": {63, 65},
    "arm64": {63, 65},
}.get(platform.machine().lower(), {0, 19})


class StdinPipe:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd = -1
        self._ident: tuple[int, int] | None = None
        self.pending = bytearray()  # written by the client, not yet taken by the FIFO

    def open(self, size: int = 0) -> None:
        """Make a new FIFO and hold it open (read-write, so nobody blocks on open); ``size``:
        the pipe capacity to ask for. A new one each time: a background job of an earlier
        command that kept the old one open reads none of this command's input."""
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        os.mkfifo(self.path, 0o600)
        self.fd = os.open(self.path, os.O_RDWR | os.O_NONBLOCK)
        info = os.fstat(self.fd)
        if not stat.S_ISFIFO(info.st_mode):
            raise OSError(f"{self.path} is not a FIFO")
        self._ident = (info.st_dev, info.st_ino)
        self.pending = bytearray()
        if size:
            with contextlib.suppress(OSError):  # the default (64 KiB) if the system says no
                fcntl.fcntl(self.fd, fcntl.F_SETPIPE_SZ, size)

    def close(self) -> None:
        if self.fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self.fd)
        self.fd = -1
        self.pending = bytearray()

    def unread(self) -> int:
        """Bytes written to the FIFO and not yet read by the command."""
        buf = array.array("i", [0])
        try:
            fcntl.ioctl(self.fd, termios.FIONREAD, buf, True)
        except OSError:
            return 0
        return buf[0] + len(self.pending)

    def write(self, data: bytes) -> None:
        self.pending += data
        self.flush()

    def flush(self) -> int:
        """Move what the FIFO takes now into it; returns how many bytes."""
        moved = 0
        while self.pending and self.fd >= 0:
            try:
                written = os.write(self.fd, self.pending)
            except BlockingIOError:
                break
            del self.pending[:written]
            moved += written
        return moved

    def opened_by(self, pid: int) -> bool:
        """Has ``pid`` (bash) this FIFO as its stdin, i.e. did it open it for the command?
        Until then the agent's end must stay open: a FIFO nobody holds loses what it holds,
        and bash's own open would wait for a writer forever."""
        try:
            info = os.stat(f"/proc/{pid}/fd/0")
        except FileNotFoundError:
            return True  # bash is gone: nothing will open it
        except OSError:
            return False
        return (info.st_dev, info.st_ino) == self._ident

    def reader_waiting(self, pids: list[int]) -> bool:
        """True if one of ``pids`` is blocked reading this FIFO and nothing is left to read."""
        if self._ident is None or self.unread():
            return False
        for pid in pids:
            try:
                fields = Path(f"/proc/{pid}/syscall").read_text().split()
            except OSError:
                continue
            if len(fields) < 2 or not fields[0].isdigit():
                continue  # "running", or no permission
            if int(fields[0]) not in _READ_SYSCALLS:
                continue
            try:
                fd = int(fields[1], 16)
                info = os.stat(f"/proc/{pid}/fd/{fd}")
            except (OSError, ValueError):
                continue
            if (info.st_dev, info.st_ino) == self._ident:
                return True
        return False
