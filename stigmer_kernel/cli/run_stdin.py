"""``stigmer run``'s stdin: whether the command gets this process's, and whether it can travel
in the request rather than be streamed."""

from __future__ import annotations

import os
import stat
import sys

from ..protocol.constants import STDIN_INLINE_MAX

TYPE_CHECKING = False  # not typing's: see stigmer_kernel/__init__.py
if TYPE_CHECKING:
    from typing import BinaryIO


def stdin_source(wanted: bool | None) -> BinaryIO | None:
    """This process's stdin if the command gets it, else None (it reads /dev/null).

    ``--stdin`` (True) passes any stdin, ``--no-stdin`` (False) none; by default a regular file
    or a pipe (``cmd < file``, ``producer | stigmer run ...``) or a socket is passed, and a
    terminal or a device (/dev/null) is not. It is streamed while the command runs (see
    ``AsyncClient.execute``): read only as fast as the command reads, and no further once the
    command ends; unless it is all there already (:func:`stdin_now`).
    """
    try:
        mode = os.fstat(sys.stdin.fileno()).st_mode
    except (AttributeError, ValueError, OSError):
        return None  # no stdin at all (closed descriptor)
    if wanted is None:
        wanted = stat.S_ISREG(mode) or stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)
    return sys.stdin.buffer if wanted else None


def stdin_now(stdin: BinaryIO) -> bytes | None:
    """All of ``stdin``, read, if it is all there already and small enough to travel in the
    request (``STDIN_INLINE_MAX``): a file (``cmd < small.txt``: what it holds now), or a pipe
    whose writers are gone (``echo hi | stigmer run ...``: poll says POLLHUP) with no more in
    it; else None, with nothing of it read: it is streamed as it comes. The command reads the
    same bytes either way, and the run needs no event loop (~100 ms of a start)."""
    fd = stdin.fileno()
    try:
        info = os.fstat(fd)
        if stat.S_ISREG(info.st_mode):
            size = info.st_size - os.lseek(fd, 0, os.SEEK_CUR)
        elif stat.S_ISFIFO(info.st_mode):
            import fcntl  # (here: a plain run with no stdin needs none of them)
            import select
            import termios

            poller = select.poll()
            poller.register(fd, select.POLLIN)
            events = poller.poll(0)
            if not events or not events[0][1] & select.POLLHUP:
                return None  # a writer may write more
            held = fcntl.ioctl(fd, termios.FIONREAD, bytes(4))
            size = int.from_bytes(held, sys.byteorder)
        else:
            return None
        if size > STDIN_INLINE_MAX:
            return None
        chunks: list[bytes] = []
        while size > 0 and (data := os.read(fd, size)):
            chunks.append(data)
            size -= len(data)
        return b"".join(chunks)
    except OSError:
        return None
