"""Output cut to fit a model's context: the head and the tail kept, the middle elided.

A pure function: bytes and a budget in, text out, with what was left out counted.
"""

from __future__ import annotations

from dataclasses import dataclass

#: Bytes of one stream handed to the model by default (about 4k tokens).
DEFAULT_LIMIT = 16_000
#: Share of the budget given to the head; the rest is the tail (errors tend to be last).
HEAD_SHARE = 0.25


@dataclass(frozen=True)
class Bounded:
    """``text`` is what the model sees; ``elided_bytes``/``elided_lines`` count what the
    marker in its middle replaced (both 0 when nothing was cut)."""

    text: str
    total_bytes: int
    elided_bytes: int
    elided_lines: int

    @property
    def truncated(self) -> bool:
        return self.elided_bytes > 0


def bound(data: bytes, limit: int = DEFAULT_LIMIT) -> Bounded:
    """``data`` decoded as UTF-8 if it fits in ``limit`` bytes; else its first quarter and
    last three quarters of ``limit``, cut at line ends where one is near, with a marker
    line between saying how many bytes and lines were left out."""
    if limit < 0:
        raise ValueError(f"limit must be >= 0, not {limit}")
    total = len(data)
    if total <= limit:
        return Bounded(data.decode("utf-8", "replace"), total, 0, 0)
    head_end = _cut_back(data, int(limit * HEAD_SHARE))
    tail_start = _cut_forward(data, total - (limit - head_end), head_end)
    middle = data[head_end:tail_start]
    lines = middle.count(b"\n")
    head = data[:head_end].decode("utf-8", "replace")
    tail = data[tail_start:].decode("utf-8", "replace")
    if head and not head.endswith("\n"):
        head += "\n"
    marker = f"[... {len(middle)} bytes, {lines} lines elided ...]\n"
    return Bounded(head + marker + tail, total, len(middle), lines)


#: How far a cut may move to land on a line end.
_SLACK = 200


def _cut_back(data: bytes, at: int) -> int:
    """A cut at or before ``at``: just after a newline within reach, else ``at`` itself
    moved back off a UTF-8 continuation byte."""
    newline = data.rfind(b"\n", max(0, at - _SLACK), at)
    if newline >= 0:
        return newline + 1
    while 0 < at < len(data) and data[at] & 0xC0 == 0x80:
        at -= 1
    return at


def _cut_forward(data: bytes, at: int, floor: int) -> int:
    """A cut at or after ``at`` (never before ``floor``): just after a newline within reach,
    else ``at`` moved forward off a UTF-8 continuation byte."""
    at = max(at, floor)
    newline = data.find(b"\n", at, at + _SLACK)
    if newline >= 0 and newline + 1 < len(data):
        return newline + 1
    while at < len(data) and data[at] & 0xC0 == 0x80:
        at += 1
    return at
