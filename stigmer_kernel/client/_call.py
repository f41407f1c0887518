"""What both client transports share, with no event loop: a request's :class:`Call` (its
outputs and events as they arrive) and :func:`check_server`, the decision a waiting request
makes every :data:`LIVENESS_PERIOD` about a local server that may have stopped or restarted.

The asyncio :class:`~._transport.Transport` and the blocking
:class:`~._blocking.BlockingTransport` differ only in how they wait; what a message does to a
request, and what a restarted server means for it, is decided here, once.
"""

from __future__ import annotations

import codecs
import os
import time

from ..errors import ServerNotRunning, ServerRestarted

TYPE_CHECKING = False  # not typing's: see stigmer_kernel/__init__.py
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    from ..runtime import RuntimeDir
    from .discovery import ServerAddress

    OutputCallback = Callable[[str], Any]
    RawOutputCallback = Callable[[str, bytes], Any]
    EventCallback = Callable[[dict[str, Any]], Any]

#: How often a waiting request checks that the server process still exists.
LIVENESS_PERIOD = 1.0
#: After a clean restart (new key), how long a request waits for an answer of the old server
#: still on its way before it sends itself again.
RESEND_GRACE = 0.2


def client_identity() -> bytes:
    """A new DEALER identity for a client (see :mod:`._blocking` for a tagged sibling)."""
    return f"c:{os.getpid()}:{os.urandom(6).hex()}".encode()


def run_callback(what: str, callback: Callable[..., Any], *args: Any) -> None:
    """Call a user callback; an exception it raises is logged, never passed to the reader."""
    try:
        callback(*args)
    except Exception:
        import logging  # here: the blocking path imports it only for a callback that raised

        logging.getLogger("stigmer.client").exception(
            "the %s callback raised; the request carries on without it", what
        )


class Call:
    """A request in flight: collects outputs and events until its reply arrives."""

    def __init__(
        self,
        on_stdout: OutputCallback | None,
        on_stderr: OutputCallback | None,
        on_output: RawOutputCallback | None = None,
        keep: int | None = None,
    ) -> None:
        self.on_output = on_output
        self.keep = keep  # bytes of each stream kept for the result (None: all)
        self.kept = {"stdout": 0, "stderr": 0}
        self.dropped = {"stdout": 0, "stderr": 0}
        self.on = {"stdout": on_stdout, "stderr": on_stderr}
        self.decoders = {
            "stdout": codecs.getincrementaldecoder("utf-8")("replace"),
            "stderr": codecs.getincrementaldecoder("utf-8")("replace"),
        }
        self.chunks: dict[str, list[bytes]] = {"stdout": [], "stderr": []}
        self.events: list[dict[str, Any]] = []

    def stream(self, name: str, data: bytes | str) -> None:
        if name not in self.chunks:
            return
        if isinstance(data, str):
            data = data.encode()
        if self.keep is None:
            self.chunks[name].append(data)
        else:  # streamed in full below; kept up to the limit
            room = max(0, self.keep - self.kept[name])
            if room:
                self.chunks[name].append(data[:room])
                self.kept[name] += min(room, len(data))
            self.dropped[name] += max(0, len(data) - room)
        if self.on_output is not None:
            run_callback("on_output", self.on_output, name, data)
        callback = self.on[name]
        if callback is not None:
            text = self.decoders[name].decode(data)
            if text:
                run_callback(f"on_{name}", callback, text)

    def reply(self, content: dict[str, Any]) -> None:
        """The reply came: the output it carries inline (an execute_reply's ``output``, the
        command's last, after every stream message of it) goes out as those would have."""
        output = content.pop("output", None)
        if isinstance(output, list):
            for entry in output:
                if (
                    isinstance(entry, (list, tuple))
                    and len(entry) == 2
                    and isinstance(entry[1], (bytes, str))
                ):
                    self.stream(str(entry[0]), entry[1])

    def output(self, name: str) -> bytes:
        """What was kept of stream ``name`` for the result."""
        return b"".join(self.chunks[name])

    def flush(self) -> None:
        for name, callback in self.on.items():
            if callback is not None:
                text = self.decoders[name].decode(b"", final=True)
                if text:
                    run_callback(f"on_{name}", callback, text)


class Sent:
    """Where and when a request was (last) sent, for :func:`check_server`."""

    __slots__ = ("at", "to")

    def __init__(self, to: ServerAddress) -> None:
        self.to, self.at = to, time.time()

    def again(self, to: ServerAddress) -> None:
        self.to, self.at = to, time.time()


def check_server(
    runtime: RuntimeDir,
    sent: Sent,
    follow: Callable[[int], ServerAddress | None],
    what: str,
) -> bool:
    """The liveness check of a request waiting for its reply from the server of ``runtime``:
    whether to send it again (else wait on).

    :class:`ServerNotRunning` if no server runs there any more. If another process now serves
    it, ``follow(pid)`` makes the transport take that server's key and address (None: its key
    is not readable yet, look again at the next check). Then: a new key means a clean restart,
    whose server dropped what was signed with the old one unread (the old one would have
    answered it, and an answer still queued is read first), so the request is sent again
    (True, after :data:`RESEND_GRACE` for a late answer); a server that
    started before the request was sent has it; else it restarted with the request possibly
    run: :class:`~stigmer_kernel.errors.ServerRestarted`.
    """
    if not runtime.server_running():
        raise ServerNotRunning(f"the stigmer server of {runtime.path} stopped before answering")
    info = runtime.read_info() or {}
    pid = info.get("pid")
    if not isinstance(pid, int) or pid == sent.to.pid:
        return False  # nothing changed that matters
    current = follow(pid)
    if current is None:
        return False
    if current.key != sent.to.key:
        return True  # a clean restart dropped it unread: send it again (once per restart)
    started = info.get("started")
    if isinstance(started, (int, float)) and started < sent.at:
        sent.to = current  # it restarted before this was sent: the new one has it
        return False
    raise ServerRestarted(
        f"the stigmer server restarted (pid {sent.to.pid} -> {pid}) while this {what} was in "
        "flight; it may or may not have run — check before retrying"
    )
