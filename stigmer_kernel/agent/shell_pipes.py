"""What comes out of a bash session's pipes, as bytes (docs/architecture.md, "The shell session").

* :class:`ControlScanner` finds bash's own reports in the control pipe.
* :class:`BetweenCommands` keeps, up to a limit, what background jobs write to the output pipes
  while no command runs.

Nothing here does I/O: :class:`~stigmer_kernel.agent.shell.BashSession` reads the pipes and
feeds these.
"""

from __future__ import annotations

#: Output written between commands (by background jobs) is kept for the next command up to
#: this many bytes per stream; the rest is counted and dropped, so the agent's memory stays bounded.
BETWEEN_COMMANDS_LIMIT = 1024 * 1024


class ControlScanner:
    """Finds ``MARKER kind payload END`` messages in the control pipe's byte stream.

    Everything else bash prints there (prompts, traces, its own errors) is skipped. Only a tail
    that could be the start of a marker is kept between chunks.
    """

    def __init__(self, marker: bytes, end: bytes) -> None:
        self.marker = marker
        self.end = end
        self._buf = b""

    def feed(self, data: bytes) -> list[tuple[str, str]]:
        buf = self._buf + data
        found: list[tuple[str, str]] = []
        pos = 0
        while True:
            start = buf.find(self.marker, pos)
            if start < 0:
                keep = _partial_suffix(buf[pos:], self.marker)
                self._buf = buf[len(buf) - keep :] if keep else b""
                return found
            stop = buf.find(self.end, start + len(self.marker))
            if stop < 0:
                self._buf = buf[start:]
                if len(self._buf) > 1 << 20:  # a path cannot be that long: no end is coming
                    self._buf = b""
                return found
            body = buf[start + len(self.marker) : stop].decode("utf-8", "surrogateescape")
            if body:
                found.append((body[0], body[1:]))
            pos = stop + len(self.end)


def _partial_suffix(buf: bytes, marker: bytes) -> int:
    """Length of the longest suffix of ``buf`` that is a proper prefix of ``marker``."""
    first = marker[:1]
    at = buf.find(first, max(0, len(buf) - len(marker) + 1))
    while at >= 0:  # (from the longest: only where the marker's first byte is)
        if marker.startswith(buf[at:]):
            return len(buf) - at
        at = buf.find(first, at + 1)
    return 0


class BetweenCommands:
    """Output that arrived while no command ran (background jobs), kept for the next command
    up to ``limit`` bytes per stream; the rest is counted in ``dropped``."""

    def __init__(self, limit: int = BETWEEN_COMMANDS_LIMIT) -> None:
        self.limit = limit
        self.kept: dict[int, bytearray] = {}
        self.dropped = 0

    def keep(self, fd: int, data: bytes) -> None:
        kept = self.kept.setdefault(fd, bytearray())
        room = max(0, self.limit - len(kept))
        if len(data) > room:
            self.dropped += len(data) - room
            data = data[:room]
        kept += data

    def take(self, fd: int) -> bytes:
        return bytes(self.kept.pop(fd, b""))

    def take_dropped(self) -> int:
        dropped, self.dropped = self.dropped, 0
        return dropped
