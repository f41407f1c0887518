"""Flow control of command output: a slow client slows the command, it loses nothing.

The agent sends at most ``OUTPUT_WINDOW`` stream messages of a command ahead of the broker's
``output_ack``, which counts the messages that reached the client's socket. A chunk the
client's socket cannot take now (its queue is full: the client is not reading) is *held* here
and retried, instead of dropped; the command's reply waits behind its held output. The agent,
out of credit, stops reading the command's pipes, and the command blocks on its next write, as
it would writing to a slow reader in a shell.

Memory: per command at most ``OUTPUT_WINDOW`` (16) held messages of <= ``OUTPUT_CHUNK`` (1 MiB:
16 MiB), besides the client socket's own queue (``connections.SNDHWM``, 48 messages: 48 MiB);
an agent that ignores the
window (an older remote agent) loses what passes ``_HOLD_LIMIT``, counted as ``lost_messages``
as before.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..protocol import MsgType
from ..protocol.constants import OUTPUT_ACK_EVERY, OUTPUT_WINDOW

if TYPE_CHECKING:
    from .model import Kernel, Pending
    from .service import Hub

#: Held messages per command past which output is dropped (an agent that ignores the window).
_HOLD_LIMIT = 4 * OUTPUT_WINDOW
#: Seconds between retries of held output: the first, and the longest while nothing moves.
_RETRY_FIRST = 0.005
_RETRY_MAX = 0.2


@dataclasses.dataclass(eq=False)
class _Held:
    kernel: Kernel
    pending: Pending
    frames: collections.deque[list[bytes]] = dataclasses.field(default_factory=collections.deque)
    then: Callable[[], None] | None = None  # the completion waiting behind the output


class OutputFlow:
    """The held output of every command whose client is behind (one per broker)."""

    def __init__(self, broker: Hub) -> None:
        self.broker = broker
        self._held: dict[str, _Held] = {}  # by request msg_id
        self._retry: Any = None  # the asyncio.TimerHandle of the next retry
        self._delay = _RETRY_FIRST

    def output(self, kernel: Kernel, pending: Pending, frames: list[bytes]) -> None:
        """One stream message of ``pending`` from its agent: to the client, or held."""
        held = self._held.get(pending.msg_id)
        if held is not None:  # behind earlier held output: keep the order
            if len(held.frames) < _HOLD_LIMIT:
                held.frames.append(frames)
            else:
                pending.lost += 1
                self._delivered(kernel, pending)
            return
        if pending.sink.stream(kernel, pending, frames):
            self._delivered(kernel, pending)
        elif pending.sink.kind == "native" and _attached(kernel, pending):
            self._held[pending.msg_id] = _Held(kernel, pending, collections.deque([frames]))
            self._schedule(_RETRY_FIRST)
        else:  # its client is gone: nobody to wait for
            pending.lost += 1
            self._delivered(kernel, pending)

    def hold_reply(self, pending: Pending, then: Callable[[], None]) -> bool:
        """Run ``then`` (the completion) once ``pending``'s held output is out; False if none
        is held (the caller completes now)."""
        held = self._held.get(pending.msg_id)
        if held is None:
            return False
        held.then = then
        return True

    def forget(self, pending: Pending) -> None:
        """``pending`` was answered another way (its kernel died...): its held output goes."""
        self._held.pop(pending.msg_id, None)

    def client_gone(self, client: bytes) -> None:
        for msg_id, held in list(self._held.items()):
            if held.pending.client == client:
                del self._held[msg_id]
                held.pending.lost += len(held.frames)
                self._delivered(held.kernel, held.pending, len(held.frames))
                if held.then is not None:
                    held.then()

    def close(self) -> None:
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None

    # -- internals ----------------------------------------------------------------------------
    def _delivered(self, kernel: Kernel, pending: Pending, count: int = 1) -> None:
        pending.delivered += count
        if pending.delivered - pending.acked < OUTPUT_ACK_EVERY:
            return
        pending.acked = pending.delivered
        content = {"delivered": pending.delivered}
        self.broker.agents.tell(kernel, MsgType.OUTPUT_ACK, content, pending.header, True)

    def _schedule(self, delay: float) -> None:
        loop = self.broker.loop
        if self._retry is None and loop is not None:
            self._retry = loop.call_later(delay, self._flush)

    def _flush(self) -> None:
        self._retry = None
        moved = False
        for msg_id, held in list(self._held.items()):
            kernel, pending = held.kernel, held.pending
            if msg_id not in self._held:  # its client went in this pass
                continue
            if kernel.pending.get(msg_id) is not pending:  # answered meanwhile
                del self._held[msg_id]
                continue
            while held.frames and pending.sink.stream(kernel, pending, held.frames[0]):
                held.frames.popleft()
                moved = True
                self._delivered(kernel, pending)
            if held.frames and not _attached(kernel, pending):
                self.client_gone(pending.client)
            elif not held.frames:
                del self._held[msg_id]
                if held.then is not None:
                    held.then()
        if self._held:
            self._delay = _RETRY_FIRST if moved else min(self._delay * 2, _RETRY_MAX)
            self._schedule(self._delay)


def _attached(kernel: Kernel, pending: Pending) -> bool:
    """Is the client that asked still there (an auto side's clients are its parent's)?"""
    return pending.client in (kernel.parent or kernel).clients or pending.client in kernel.clients
