"""Output of a command the agent has read and not sent yet: plain data, no I/O.

A short command's output usually ends as its end report comes: kept here instead of sent at
once, it travels inside the command's ``execute_reply`` (its ``output``), saving a stream
message between agent, broker and client. The agent's loop sends what is kept before it waits
(:data:`UNSENT_WAIT_MS` after the last read at most, for the end report), so a command that goes
on streams as it writes; a chatty one's output goes out at least every :data:`MAX_AGE`.
"""

from __future__ import annotations

from typing import Any

from ..protocol.constants import INLINE_OUTPUT_MAX

#: Milliseconds the agent's loop waits for the end report with output kept (bash reports the
#: end right after a command's last write) before it sends that output.
UNSENT_WAIT_MS = 2
#: Seconds output stays kept at most while the loop does not wait (output keeps coming, a file
#: job works in slices).
MAX_AGE = 0.005


class UnsentOutput:
    """The kept output, in the order it was read: [stream name, data] entries (a stream's
    consecutive chunks joined), :data:`~..protocol.constants.INLINE_OUTPUT_MAX` bytes at most."""

    __slots__ = ("entries", "since", "size")

    def __init__(self) -> None:
        self.entries: list[list[Any]] = []
        self.size = 0
        self.since = 0.0  # monotonic time the oldest entry was kept

    def __bool__(self) -> bool:
        return bool(self.entries)

    def add(self, name: str, data: bytes, now: float) -> list[list[Any]]:
        """Keep ``data`` of stream ``name``; returns what must be sent now, in order: what was
        kept if it would pass the bound, and ``data`` itself if it is that large alone."""
        out = self.take() if self.size + len(data) > INLINE_OUTPUT_MAX else []
        if len(data) >= INLINE_OUTPUT_MAX:
            out.append([name, data])
        elif self.entries and self.entries[-1][0] == name:
            self.entries[-1][1] += data
            self.size += len(data)
        else:
            if not self.entries:
                self.since = now
            self.entries.append([name, data])
            self.size += len(data)
        return out

    def take(self) -> list[list[Any]]:
        """Everything kept (now no longer kept)."""
        entries, self.entries, self.size = self.entries, [], 0
        return entries

    def due(self, now: float, waits: bool) -> bool:
        """Whether what is kept must be sent now: the loop is about to wait (``waits``), or it
        was kept :data:`MAX_AGE` ago."""
        return bool(self.entries) and (waits or now - self.since >= MAX_AGE)
