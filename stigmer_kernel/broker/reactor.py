"""The socket pump: registered ZeroMQ sockets, their handlers, and non-blocking sends.

Every socket of the broker is a plain ZeroMQ socket drained by :meth:`Reactor.pump` without
blocking. A socket is pumped when its file descriptor fires *and* after every send on it,
because ZeroMQ descriptors are edge-triggered and any operation may consume the edge. Every send
is non-blocking: a peer that stops reading loses output (counted in ``dropped_slow``), it never
stalls the broker; a message that must arrive (a final reply, a request for an agent) meets a
full queue by waiting, in order, for :meth:`Reactor.retry_deferred`.

The reactor knows nothing of kernels or frontends: the broker hands it sockets and handlers, a
``stats`` dict to count in, a guard of the connections of watched sockets and a callback for a
peer found gone.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import errno
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import zmq

from ..protocol.wire import NOBLOCK, send_frames, waiting

log = logging.getLogger("stigmer.broker")

BATCH = 256  # messages handled per socket per pump pass
PASS_LIMIT = 1024  # messages per pump call before yielding to the event loop
DEFERRED_PER_PEER = 10000  # messages that must arrive kept for one peer that does not read

#: A socket's handler: its message's frames (bytes, or zmq.Frame for a socket registered raw).
Handler = Callable[[list[Any]], None]
Socket = zmq.Socket[Any]


class Guard(Protocol):
    """Watches the connections of some sockets (connections.ConnectionGuard): the pump tells it
    which connection delivered each message, and which one's message was dropped as bad."""

    @property
    def watched(self) -> Mapping[Socket, Any]: ...

    def delivered(self, watched: Any, frames: list[Any], /) -> int: ...

    def refuse(self, watched: Any, fd: int, /) -> None: ...


class DropLog:
    """Logs dropped messages without letting a flood of garbage flood the log."""

    def __init__(self, per_second: int = 10) -> None:
        self.per_second = per_second
        self.window = 0.0
        self.count = 0
        self.suppressed = 0

    def __call__(self, where: str, reason: object) -> None:
        now = time.monotonic()
        if now - self.window >= 1.0:
            if self.suppressed:
                log.warning("%d more bad messages dropped (not logged)", self.suppressed)
            self.window, self.count, self.suppressed = now, 0, 0
        if self.count < self.per_second:
            self.count += 1
            log.warning("dropped a bad message from %s: %s", where, reason)
        else:
            self.suppressed += 1


class Reactor:
    """Owns the registered sockets: their event-loop readers, the pump, sends and deferrals.

    ``stats`` gets ``dropped_bad`` (counted by handlers: a watched connection whose message
    raised it is refused) and ``dropped_slow`` (sends lost to a full queue). ``on_gone(peer,
    sock)`` is called when a ROUTER says a peer is unreachable, after its deferred messages went.
    """

    def __init__(
        self,
        stats: dict[str, int] | None = None,
        guard: Guard | None = None,
        on_gone: Callable[[bytes, Socket], None] | None = None,
    ) -> None:
        self.stats = stats if stats is not None else {}
        self.stats.setdefault("dropped_bad", 0)
        self.stats.setdefault("dropped_slow", 0)
        self.guard = guard
        self.on_gone = on_gone
        self.drop_log = DropLog()
        self.loop: asyncio.AbstractEventLoop | None = None
        self._handlers: dict[Socket, Handler] = {}
        self._raw: set[Socket] = set()  # sockets whose handler takes zmq.Frame objects
        self._ready: set[Socket] = set()
        self._pump_scheduled = False
        self._pumping = False  # sockets marked meanwhile are drained by the running pump
        # Messages that met a full queue: retried in order (up to DEFERRED_PER_PEER per peer)
        # until the peer reads or is gone, instead of being dropped.
        self._deferred: dict[tuple[Socket, bytes], collections.deque[list[bytes]]] = {}

    # -- sockets --------------------------------------------------------------------------------
    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Watch every registered socket on ``loop`` (and those registered later)."""
        self.loop = loop
        for sock in self._handlers:
            loop.add_reader(sock.fileno(), self._readable, sock)
            self._mark(sock)

    def register(self, sock: Socket, handler: Handler, raw: bool = False) -> None:
        """Hand each message of ``sock`` to ``handler``; ``raw``: as zmq.Frame objects (to read
        their properties, e.g. the ZAP User-Id)."""
        self._handlers[sock] = handler
        if raw:
            self._raw.add(sock)
        if self.loop is not None:
            self.loop.add_reader(sock.fileno(), self._readable, sock)
            self._mark(sock)

    def registered(self, sock: Socket) -> bool:
        return sock in self._handlers

    def unregister(self, sock: Socket, linger: int = 0) -> None:
        """Stop delivering ``sock``'s messages, forget what waits to be sent on it, close it."""
        if self._handlers.pop(sock, None) is not None and self.loop is not None:
            with contextlib.suppress(Exception):
                self.loop.remove_reader(sock.fileno())
        self._ready.discard(sock)
        self._raw.discard(sock)
        for key in [k for k in self._deferred if k[0] is sock]:
            del self._deferred[key]
        sock.close(linger)

    def close(self, linger: int = 0) -> None:
        """Unregister and close every socket (``linger``: ms their last messages may take)."""
        for sock in list(self._handlers):
            self.unregister(sock, linger)

    # -- the pump -------------------------------------------------------------------------------
    def _mark(self, sock: Socket) -> None:
        self._ready.add(sock)
        if not (self._pump_scheduled or self._pumping) and self.loop is not None:
            self._pump_scheduled = True
            self.loop.call_soon(self.pump)

    def _readable(self, sock: Socket) -> None:
        """The event loop's reader callback: pumped now, not one loop turn later."""
        self._ready.add(sock)
        if not self._pumping:
            self.pump()

    def pump(self) -> None:
        """Drain the ready sockets, at most :data:`PASS_LIMIT` messages before the event loop's
        timers get their turn."""
        self._pump_scheduled = False
        self._pumping = True
        try:
            self._pump()
        finally:
            self._pumping = False

    def _pump(self) -> None:
        handled = 0
        while self._ready:
            sock = self._ready.pop()
            handler = self._handlers.get(sock)
            if handler is None or sock.closed:
                continue
            raw = sock in self._raw
            # Sockets others can reach: each message's connection is recorded, and a connection
            # whose message the handler drops as bad is closed (connections.py).
            guard = self.guard
            watched = guard.watched.get(sock) if guard is not None else None
            for _ in range(BATCH):
                try:
                    if not waiting(sock):  # (cheaper than a recv raising zmq.Again)
                        break
                    frames = sock.recv_multipart(NOBLOCK, copy=not raw and watched is None)
                except zmq.Again:
                    break
                except zmq.ZMQError as exc:  # e.g. a socket closed while handling
                    log.debug("recv failed: %s", exc)
                    break
                handled += 1
                if watched is not None:
                    assert guard is not None
                    try:
                        fd = guard.delivered(watched, frames)
                    except Exception:  # as for a handler: the socket must go on being drained
                        log.exception("error while noting the connection of a message")
                        fd = -1
                    if not raw:
                        frames = [frame.bytes for frame in frames]  # type: ignore[union-attr]
                    bad = self.stats["dropped_bad"]
                try:
                    handler(frames)
                except Exception:  # a bug must not take the broker down
                    log.exception("error while handling a message")
                if watched is not None and self.stats["dropped_bad"] != bad:
                    assert guard is not None
                    guard.refuse(watched, fd)
            else:
                self._ready.add(sock)  # more may be waiting: come back to it
            if handled >= PASS_LIMIT and self._ready:
                self._pump_scheduled = True  # let timers run, then carry on
                assert self.loop is not None
                self.loop.call_soon(self.pump)
                return

    # -- sending --------------------------------------------------------------------------------
    def send(self, sock: Socket | None, frames: list[bytes], must_arrive: bool = False) -> bool:
        """Non-blocking send; False if the peer is gone or not reading.

        With ``must_arrive`` (final replies), a full queue defers the message for a retry
        instead of dropping it.
        """
        if sock is None or sock.closed:
            return False
        key = (sock, frames[0])
        if must_arrive and key in self._deferred:
            self._deferred[key].append(frames)  # keep the order of what must arrive
            return False
        try:
            send_frames(sock, frames, NOBLOCK)
            return True
        except zmq.Again:
            if must_arrive and sock.type == zmq.ROUTER:
                queue = self._deferred.setdefault(key, collections.deque(maxlen=DEFERRED_PER_PEER))
                queue.append(frames)
            else:
                self.stats["dropped_slow"] += 1
            return False
        except zmq.ZMQError as exc:
            if exc.errno == errno.EHOSTUNREACH:
                self.forget_peer(sock, frames[0])
                if self.on_gone is not None:
                    self.on_gone(frames[0], sock)
                return False
            raise
        finally:
            self._mark(sock)

    def deferred(self, sock: Socket | None, peer: bytes) -> bool:
        """Do messages for ``peer`` of ``sock`` wait for a retry?"""
        return sock is not None and (sock, peer) in self._deferred

    def forget_peer(self, sock: Socket | None, peer: bytes) -> None:
        """``peer`` of ``sock`` is gone: what waited for it goes."""
        if sock is not None:
            self._deferred.pop((sock, peer), None)

    def retry_deferred(self) -> None:
        """Send what waits, in order per peer, until a queue is full again."""
        for key, queue in list(self._deferred.items()):
            while queue:
                sock = key[0]
                try:
                    send_frames(sock, queue[0], NOBLOCK)
                except zmq.Again:
                    break
                except zmq.ZMQError:
                    queue.clear()
                    break
                finally:
                    self._mark(sock)
                queue.popleft()
            if not queue:
                self._deferred.pop(key, None)
