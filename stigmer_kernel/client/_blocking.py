"""The lean blocking transport: one request at a time, run in the calling thread.

:class:`BlockingTransport` is a DEALER with no event loop and no thread:
:meth:`~BlockingTransport.request` signs and sends, then polls and receives until the reply,
handing streams and events to the request's :class:`~._call.Call` as they arrive and checking
the server's liveness every :data:`~._call.LIVENESS_PERIOD` with the same
:func:`~._call.check_server` as the asyncio :class:`~._transport.Transport` (so a restarted
server is followed, and a request dropped by a clean restart sent again once, alike). It serves
``stigmer run`` and :meth:`Client.execute <._sync.Client.execute>` calls that need no streamed
stdin, no remote link and no concurrency; everything else goes the asyncio way.

The server knows a client by its DEALER identity: the kernels it created (the
``max_kernels_per_client`` limit), the kernels it is attached to, what ``detach_request``
forgets. Two sockets cannot share one identity (the server's ROUTER refuses a second
connection with a live identity), so a :class:`~._sync.Client`'s lean socket is its asyncio
socket's identity with :data:`~..protocol.constants.CLIENT_SOCKET_SEP` and a tag after it
(``c:PID:RANDOM/b``). The server counts kernels per *owner*, the identity up to that separator
(so the limit holds for the client as a whole), and the client says ``detach_request`` on both
sockets when it closes. ``stigmer run`` uses a lean socket alone, as its only identity.

Two wires serve it: a pyzmq DEALER (:class:`_ZmqLink`, for a :class:`~._sync.Client`, whose
process has pyzmq loaded anyway) and the pure-Python :class:`~._zmtp.ZmtpDealer`
(:class:`_ZmtpLink`, for ``stigmer run``, which then never imports pyzmq: importing it and
starting libzmq's I/O thread costs more than the whole request).
"""

from __future__ import annotations

import os
import select
import time

from ..errors import ClientTimeout, ProtocolError, RuntimeDirError, StigmerError
from ..protocol.session import Message, Session
from ._call import LIVENESS_PERIOD, RESEND_GRACE, Call, Sent, check_server

TYPE_CHECKING = False  # not typing's: see stigmer_kernel/__init__.py
if TYPE_CHECKING:
    from collections import deque
    from typing import Any, Protocol

    from ._call import EventCallback, OutputCallback, RawOutputCallback
    from .discovery import ServerAddress
else:
    from _collections import deque  # see protocol/session.py

#: As the asyncio transport's: output queued here before the server holds the rest.
_RCVHWM = 16
#: Milliseconds between two attempts to connect again after the server closed (libzmq's
#: default reconnect interval).
_RECONNECT_MS = 100

#: The message types this transport sends and reads, as their wire strings: the values of
#: their ``MsgType`` members (tests/client/test_lean_path.py holds them to it), which a plain
#: ``stigmer run`` does not import (protocol/constants.py says why).
EXECUTE_REQUEST = "execute_request"
INTERRUPT_REQUEST = "interrupt_request"
_DETACH_REQUEST = "detach_request"
_STREAM = "stream"
_KERNEL_EVENT = "kernel_event"
_STDIN_ACK = "stdin_ack"


if TYPE_CHECKING:

    class _Link(Protocol):
        """A DEALER connection as the transport uses it."""

        def send(self, frames: list[bytes]) -> None:
            """Send one message (queued if the link is down)."""

        def recv(self) -> list[bytes] | None:
            """The next message received, None if none is queued."""

        def poll(self, timeout_ms: int, wake_fd: int) -> tuple[bool, bool]:
            """Wait up to ``timeout_ms``: (input on the link, input on ``wake_fd``)."""

        def close(self, last: list[bytes]) -> None:
            """Send ``last`` if that can be done without waiting, and close."""


class _ZmqLink:
    """A pyzmq DEALER."""

    def __init__(self, endpoint: str, identity: bytes) -> None:
        import zmq

        from ..protocol import wire

        self._zmq = zmq
        self._wire = wire
        self._ctx = zmq.Context()
        self._sock: zmq.Socket[bytes] = self._ctx.socket(zmq.DEALER)
        try:
            self._sock.setsockopt(zmq.LINGER, 500)
            self._sock.setsockopt(zmq.RCVHWM, _RCVHWM)
            self._sock.setsockopt(zmq.IDENTITY, identity)
            self._sock.connect(endpoint)
        except zmq.ZMQError as exc:
            self.close([])
            raise StigmerError(f"cannot connect to {endpoint}: {exc}") from None
        self._poller: zmq.Poller | None = None

    def send(self, frames: list[bytes]) -> None:
        self._wire.send_frames(self._sock, frames)

    def recv(self) -> list[bytes] | None:
        if not self._wire.waiting(self._sock):
            return None  # (asked first: cheaper than a recv raising zmq.Again)
        try:
            return self._sock.recv_multipart(self._zmq.NOBLOCK)
        except self._zmq.Again:
            return None

    def poll(self, timeout_ms: int, wake_fd: int) -> tuple[bool, bool]:
        if self._poller is None:
            self._poller = self._zmq.Poller()
            self._poller.register(self._sock, self._zmq.POLLIN)
            self._poller.register(wake_fd, self._zmq.POLLIN)
        events = dict(self._poller.poll(timeout_ms))
        return bool(events.get(self._sock)), bool(events.get(wake_fd))

    def close(self, last: list[bytes]) -> None:
        if last:
            import contextlib  # (pyzmq imports it anyway; the ZMTP path does without)

            with contextlib.suppress(self._zmq.ZMQError):  # Again: no link to say it on
                self._sock.send_multipart(last, flags=self._zmq.NOBLOCK)
        self._sock.close(linger=200)
        self._ctx.term()


class _ZmtpLink:
    """A :class:`~._zmtp.ZmtpDealer`, connected again (as libzmq would) after the server
    closed."""

    def __init__(self, endpoint: str, identity: bytes) -> None:
        from ._zmtp import ZmtpDealer

        self._dealer = ZmtpDealer(endpoint, identity)
        self._poller = select.poll()
        self._polled = -1  # the descriptor registered with _poller
        self._wake_fd = -1

    def send(self, frames: list[bytes]) -> None:
        self._dealer.send(frames)

    def recv(self) -> list[bytes] | None:
        return self._dealer.recv()

    def poll(self, timeout_ms: int, wake_fd: int) -> tuple[bool, bool]:
        if wake_fd != self._wake_fd:
            self._poller.register(wake_fd, select.POLLIN)
            self._wake_fd = wake_fd
        if not self._dealer.reconnect():
            timeout_ms = min(timeout_ms, _RECONNECT_MS)
        fd = self._dealer.fileno()
        if fd != self._polled:
            if self._polled >= 0:
                self._poller.unregister(self._polled)
            if fd >= 0:
                self._poller.register(fd, select.POLLIN)
            self._polled = fd
        events = dict(self._poller.poll(timeout_ms))
        return fd >= 0 and bool(events.get(fd)), bool(events.get(wake_fd))

    def close(self, last: list[bytes]) -> None:
        if last and self._dealer.connected:
            self._dealer.send(last)
        self._dealer.close()


class BlockingTransport:
    """A DEALER to a local server at ``address``, used by one thread at a time.

    ``on_event`` gets every ``kernel_event`` (it must not raise). :meth:`send_soon` may be
    called from a signal handler (Ctrl-C) while :meth:`request` waits. ``zmtp``: ``stigmer
    run``'s way, the pure-Python wire (no pyzmq) and a lean session (its frames hashed without
    loading OpenSSL, see ``Session``), else a pyzmq socket.
    """

    def __init__(
        self,
        address: ServerAddress,
        identity: bytes,
        on_event: EventCallback | None = None,
        *,
        zmtp: bool = False,
    ) -> None:
        self.address = address
        self.identity = identity
        self.on_event = on_event
        self._lean = zmtp
        self._session = Session(address.key, lean=zmtp)
        self._old_session: Session | None = None  # the previous server's, after a restart
        self._closed = False
        self._aborted = False  # set by abort(): the waiting request fails
        self._soon: deque[tuple[str, dict[str, Any]]] = deque()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        try:
            self._link: _Link = (_ZmtpLink if zmtp else _ZmqLink)(address.endpoint, identity)
        except BaseException:
            os.close(self._wake_r)
            os.close(self._wake_w)
            raise

    def close(self) -> None:
        """Say ``detach_request`` (if connected) and close the socket."""
        if self._closed:
            return
        self._closed = True
        bye = self._session.msg(_DETACH_REQUEST, {})
        self._link.close(self._session.serialize(bye))
        os.close(self._wake_r)
        os.close(self._wake_w)

    def abort(self) -> None:
        """Make the request waiting now (if any) fail with "client closed", from any thread,
        so that :meth:`close` can follow once it returned."""
        self._aborted = True
        self._wake()

    def send_soon(self, msg_type: str, content: dict[str, Any]) -> None:
        """Send a request whose reply nobody waits for, from the waiting loop (so it is safe
        in a signal handler or a callback): an interrupt while a command runs. ``msg_type``
        is the wire string (a ``MsgType`` member's value)."""
        self._soon.append((msg_type, content))
        self._wake()

    def _wake(self) -> None:
        """Make the waiting loop look at its flags and queue (contextlib's ``suppress`` is not
        imported by the lean path: hence ``try`` in these two)."""
        try:
            os.write(self._wake_w, b"\0")
        except OSError:  # (BlockingIOError: a wake-up is pending already)
            return

    def _woken(self) -> None:
        try:
            os.read(self._wake_r, 512)
        except BlockingIOError:
            return

    def _send(self, msg: Message) -> None:
        self._link.send(self._session.serialize(msg))

    def _receive(self, frames: list[bytes]) -> Message | None:
        try:
            return self._session.deserialize(frames)[1]
        except ProtocolError:
            if self._old_session is None:
                return None
            try:  # the last words of a server that restarted, signed with its old key
                return self._old_session.deserialize(frames)[1]
            except ProtocolError:
                return None

    def request(
        self,
        msg_type: str,
        content: dict[str, Any],
        on_stdout: OutputCallback | None = None,
        on_stderr: OutputCallback | None = None,
        timeout: float | None = None,
        on_output: RawOutputCallback | None = None,
        keep: int | None = None,
    ) -> tuple[Message, Call]:
        """As :meth:`Transport.request <._transport.Transport.request>`, in this thread;
        ``msg_type`` is the wire string (a ``MsgType`` member's value)."""
        if self._closed or self._aborted:
            raise StigmerError("this client is closed")
        msg = self._session.msg(msg_type, content)
        call = Call(on_stdout, on_stderr, on_output, keep)
        self._send(msg)
        sent = Sent(self.address)
        now = time.monotonic()
        deadline = None if timeout is None else now + timeout
        check_at = now + LIVENESS_PERIOD
        resend_at: float | None = None
        runtime = self.address.runtime
        while True:
            if self._aborted:
                raise StigmerError("client closed")
            while self._soon:
                extra_type, extra = self._soon.popleft()
                self._send(self._session.msg(extra_type, extra))
            now = time.monotonic()
            wake = check_at if resend_at is None else min(check_at, resend_at)
            if deadline is not None:
                wake = min(wake, deadline)
            readable, woken = self._link.poll(max(0, int((wake - now) * 1000) + 1), self._wake_r)
            if woken:
                self._woken()
            if readable:
                reply = self._drain(msg.msg_id, call)
                if reply is not None:
                    call.flush()
                    return reply, call
            now = time.monotonic()  # output streaming in does not put off the checks below
            if deadline is not None and now >= deadline:
                raise ClientTimeout(f"no reply to {msg_type} within {timeout:g}s")
            if resend_at is not None and now >= resend_at:
                resend_at = None
                self._send(msg)
                sent.again(self.address)
            if now >= check_at:
                check_at = now + LIVENESS_PERIOD
                resend = check_server(runtime, sent, self._follow, msg_type)
                if resend and resend_at is None:
                    resend_at = now + RESEND_GRACE  # unless its answer comes first

    def _drain(self, msg_id: str, call: Call) -> Message | None:
        """Everything queued on the socket; the reply to ``msg_id`` if it came."""
        while True:
            frames = self._link.recv()
            if frames is None:
                return None  # nothing (more) queued
            msg = self._receive(frames)
            if msg is None or msg.parent_id != msg_id:
                if msg is not None and msg.msg_type == _KERNEL_EVENT:
                    self._event(msg.content, None)
                continue  # a late reply to an earlier request, or the reply to send_soon
            mtype = msg.msg_type
            if mtype == _STREAM:
                call.stream(str(msg.content.get("name")), msg.content.get("data", b""))
            elif mtype == _KERNEL_EVENT:
                self._event(msg.content, call)
            elif mtype != _STDIN_ACK:
                call.reply(msg.content)
                return msg

    def _event(self, event: dict[str, Any], call: Call | None) -> None:
        if call is not None:
            call.events.append(event)
        if self.on_event is not None:
            self.on_event(event)

    def _follow(self, pid: int) -> ServerAddress | None:
        """For :func:`check_server`: take the key of server ``pid`` (a new one after a clean
        restart); None if it cannot be read yet."""
        if pid != self.address.pid:
            try:
                key = self.address.runtime.read_key()
            except RuntimeDirError:
                return None
            if key != self.address.key:
                self._old_session, self._session = self._session, Session(key, lean=self._lean)
            self.address = self.address.of_server(pid, key)
        return self.address
