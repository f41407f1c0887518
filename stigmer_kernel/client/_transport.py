"""The client's delivery loop: one DEALER socket to the server and the requests in flight on it.

:class:`Transport` connects (finding or autostarting a local server, or over CurveZMQ to a
:class:`RemoteServer`), signs and sends each request, and runs a reader task that routes every
incoming message to the request it answers (by ``parent_header.msg_id``): streams and events to
its :class:`Call`, ``stdin_ack`` credit to its stdin feed, the reply to its future. While a
request waits, it checks that the server still runs (or that the link to a remote one holds)
and follows a server that restarted. Should the reader itself end, every pending and later
request fails at once with the reason. What a request says and what its reply means are the
API's (``_async.py``); of the content, the transport reads only the kernel its stdin goes to.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Any

import zmq
import zmq.asyncio

from ..config import Config
from ..errors import (
    ClientTimeout,
    ProtocolError,
    RuntimeDirError,
    StigmerError,
)
from ..protocol import Message, MsgType, Session
from ..runtime import RuntimeDir
from ._call import (
    LIVENESS_PERIOD,
    RESEND_GRACE,
    Call,
    Sent,
    check_server,
    client_identity,
    run_callback,
)
from ._remote import Link, RemoteServer
from ._stdin import StdinFeed
from .discovery import ServerAddress, find_server

if TYPE_CHECKING:
    from ._call import OutputCallback, RawOutputCallback

__all__ = [
    "AsyncCall",
    "Call",
    "Transport",
    "client_identity",
    "run_callback",
]
#: Messages (output chunks of <= 1 MiB: 16 MiB) queued here before the server holds the rest:
#: a caller that does not keep up (a slow stdout) then slows the command, not our memory.
_RCVHWM = 16


class AsyncCall(Call):
    """A :class:`Call` with the future its reply resolves and the stdin it streams."""

    def __init__(
        self,
        on_stdout: OutputCallback | None,
        on_stderr: OutputCallback | None,
        on_output: RawOutputCallback | None = None,
        keep: int | None = None,
    ) -> None:
        super().__init__(on_stdout, on_stderr, on_output, keep)
        self.future: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        self.feed: StdinFeed | None = None  # the command's stdin, streamed while it runs


class Transport:
    """One DEALER to the server, the sessions that sign on it and the requests in flight.

    ``on_event`` gets every ``kernel_event`` (on the reader task; it must not raise).
    """

    def __init__(
        self,
        config: Config,
        *,
        autostart: bool,
        remote: RemoteServer | None,
        on_event: Callable[[dict[str, Any]], None],
    ) -> None:
        self.config = config
        self.autostart = autostart
        self.remote = remote
        self.on_event = on_event
        self.address: ServerAddress | None = None
        self._ctx: zmq.asyncio.Context | None = None
        self._sock: zmq.asyncio.Socket | None = None
        self._session: Session | None = None
        self._old_session: Session | None = None  # the previous server's, after a restart
        self._calls: dict[str, AsyncCall] = {}
        #: This client's DEALER identity: the server knows it by it.
        self.identity = client_identity()
        self._reader: asyncio.Task[None] | None = None
        self._reader_failure: BaseException | None = None  # why the reader ended, if it did
        self._closed = False
        # A remote server: the CurveZMQ link as the socket monitor reports it.
        self._link: Link | None = None
        self._background: set[asyncio.Future[Any]] = set()  # sends nobody awaits

    # -- life cycle ---------------------------------------------------------------------------
    async def connect(self) -> None:
        """Find the server (or autostart one), open the DEALER and start the reader; once."""
        if self._sock is not None:
            return
        loop = asyncio.get_running_loop()
        if self.remote is not None:
            self.address = ServerAddress(
                self.remote.endpoint, self.remote.key, 0, RuntimeDir(self.config.runtime_dir)
            )
        else:
            self.address = await loop.run_in_executor(
                None, lambda: find_server(self.config, self.autostart)
            )
        self._session = Session(self.address.key)
        self._ctx = zmq.asyncio.Context()
        sock = self._ctx.socket(zmq.DEALER)
        try:
            if self.remote is not None:
                self.remote.secure(sock)
            sock.setsockopt(zmq.LINGER, 500)
            sock.setsockopt(zmq.RCVHWM, _RCVHWM)
            sock.setsockopt(zmq.IDENTITY, self.identity)
            if self.remote is not None:
                self._link = Link(self.remote.endpoint, sock)
            sock.connect(self.address.endpoint)
        except BaseException as exc:
            if self._link is not None:
                self._link.close_now()
                self._link = None
            sock.close(linger=0)
            if isinstance(exc, zmq.ZMQError):
                raise StigmerError(f"cannot connect to {self.address.endpoint}: {exc}") from None
            raise
        self._sock = sock
        self._reader = asyncio.create_task(self._read_loop(), name="stigmer-client-reader")
        self._reader.add_done_callback(self._reader_ended)

    async def aclose(self) -> None:
        """Say ``detach_request``, stop the reader, fail what still waits, close the socket."""
        if self._closed:
            return
        self._closed = True
        if self._sock is not None and self._session is not None:
            with contextlib.suppress(zmq.ZMQError):  # zmq.Again: no link to say goodbye on
                bye = self._session.msg(MsgType.DETACH_REQUEST.value, {})
                await self._sock.send_multipart(self._session.serialize(bye), flags=zmq.NOBLOCK)
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.wait({self._reader})  # whatever it ended with was seen by _reader_ended
        if self._link is not None:
            await self._link.close()
        for call in self._calls.values():
            if not call.future.done():
                call.future.set_exception(StigmerError("client closed"))
        self._calls.clear()
        if self._sock is not None:
            self._sock.close(linger=200)
        if self._ctx is not None:
            self._ctx.term()

    # -- plumbing -----------------------------------------------------------------------------
    def _reader_ended(self, task: asyncio.Task[None]) -> None:
        """The reader stopped outside :meth:`aclose`: no reply can arrive any more."""
        cause = task.exception() if not task.cancelled() else asyncio.CancelledError()
        if self._closed:
            return
        self._reader_failure = cause or RuntimeError("the reader task returned")
        for call in self._calls.values():
            if not call.future.done():
                call.future.set_exception(self._reader_error())

    def _reader_error(self) -> StigmerError:
        cause = self._reader_failure
        reason = type(cause).__name__ + (f": {cause}" if str(cause) else "")
        error = StigmerError(
            f"this client stopped receiving messages ({reason}); "
            "its requests cannot get replies — close it and use a new client"
        )
        error.__cause__ = cause
        return error

    async def _read_loop(self) -> None:
        assert self._sock is not None and self._session is not None
        while True:
            frames = await self._sock.recv_multipart()
            try:
                _, msg = self._session.deserialize(frames)
            except ProtocolError:
                if self._old_session is None:
                    continue
                try:  # the last words of a server that restarted, signed with its old key
                    _, msg = self._old_session.deserialize(frames)
                except ProtocolError:
                    continue
            mtype = msg.msg_type
            call = self._calls.get(msg.parent_id or "")
            if mtype == MsgType.STREAM.value:
                if call is not None:
                    call.stream(str(msg.content.get("name")), msg.content.get("data", b""))
            elif mtype == MsgType.STDIN_ACK.value:
                if call is not None and call.feed is not None:
                    call.feed.grant(msg.content)
            elif mtype == MsgType.KERNEL_EVENT.value:
                if call is not None:
                    call.events.append(msg.content)
                self.on_event(msg.content)
            elif call is not None and not call.future.done():
                call.reply(msg.content)
                call.future.set_result(msg)

    async def request(
        self,
        msg_type: MsgType,
        content: dict[str, Any],
        on_stdout: OutputCallback | None = None,
        on_stderr: OutputCallback | None = None,
        timeout: float | None = None,
        on_output: RawOutputCallback | None = None,
        keep: int | None = None,
        feed: StdinFeed | None = None,
        interrupt_on_cancel: str | None = None,
    ) -> tuple[Message, AsyncCall]:
        """Send ``content`` as a ``msg_type`` (connecting first) and wait for its reply, with
        the :class:`Call` that collected its output and events. :class:`ClientTimeout` after
        ``timeout`` seconds; :class:`ServerNotRunning` if the server (or the link to it) goes
        first; :class:`ServerError` if it restarted with the request possibly run. With
        ``interrupt_on_cancel`` (a kernel's name), a wait that is cancelled interrupts this
        request on that kernel, and only it (an ``interrupt_request`` naming it)."""
        if self._closed:
            raise StigmerError("this client is closed")
        await self.connect()
        if self._reader_failure is not None:
            raise self._reader_error()
        assert self._sock is not None and self._session is not None and self.address
        msg = self._session.msg(msg_type.value, content)
        call = AsyncCall(on_stdout, on_stderr, on_output, keep)
        call.feed = feed
        self._calls[msg.msg_id] = call
        try:
            if self._link is not None:
                await self._link.send(self._session.serialize(msg))
            else:
                await self._sock.send_multipart(self._session.serialize(msg), copy=False)
            if feed is not None:
                feed.start(self._stdin_sender(msg, str(content.get("kernel") or "default")))
            sent = Sent(self.address)
            loop = asyncio.get_running_loop()
            deadline = None if timeout is None else loop.time() + timeout
            runtime: RuntimeDir = self.address.runtime
            while True:
                wait = LIVENESS_PERIOD
                if deadline is not None:
                    wait = min(wait, max(0.0, deadline - loop.time()))
                done, _ = await asyncio.wait({call.future}, timeout=wait)
                if done:
                    reply = call.future.result()
                    call.flush()
                    return reply, call
                if deadline is not None and loop.time() >= deadline:
                    raise ClientTimeout(f"no reply to {msg_type.value} within {timeout:g}s")
                if self._link is not None:
                    self._link.check(sent=True)  # a server on another host: is the link there?
                    continue
                if check_server(
                    runtime, sent, lambda pid: self._follow(runtime, pid), msg_type.value
                ):
                    done, _ = await asyncio.wait({call.future}, timeout=RESEND_GRACE)
                    if done:
                        continue  # answered after all: returned at the top of the loop
                    await self._sock.send_multipart(self._session.serialize(msg), copy=False)
                    sent.again(self.address)
        except asyncio.CancelledError:
            if interrupt_on_cancel is not None and not call.future.done():
                self._interrupt_soon(interrupt_on_cancel, msg.msg_id)
            raise
        finally:
            self._calls.pop(msg.msg_id, None)
            if feed is not None:
                feed.stop()  # the command ended (or the wait did): no more of its stdin

    def _interrupt_soon(self, kernel: str, msg_id: str) -> None:
        """Send an interrupt of request ``msg_id`` on ``kernel``, without waiting (its reply is
        dropped: no call waits for it)."""
        if self._closed or self._sock is None or self._session is None:
            return
        content = {"kernel": kernel, "request": msg_id}
        frames = self._session.serialize(
            self._session.msg(MsgType.INTERRUPT_REQUEST.value, content)
        )
        sending: Awaitable[Any] = (
            self._link.send(frames)
            if self._link is not None
            else self._sock.send_multipart(frames, copy=False)
        )
        task = asyncio.ensure_future(sending)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _stdin_sender(
        self, request: Message, kernel: str
    ) -> Callable[[bytes, bool], Coroutine[Any, Any, None]]:
        """Sends ``request``'s streamed stdin, one stdin_chunk at a time."""

        async def send(data: bytes, eof: bool) -> None:
            assert self._sock is not None and self._session is not None
            chunk = self._session.msg(
                MsgType.STDIN_CHUNK.value, {"kernel": kernel, "data": data, "eof": eof}, request
            )
            frames = self._session.serialize(chunk)
            if self._link is not None:
                await self._link.send(frames)
            else:
                await self._sock.send_multipart(frames, copy=False)

        return send

    def _follow(self, runtime: RuntimeDir, pid: int) -> ServerAddress | None:
        """For :func:`check_server`: the address of server ``pid``, once followed."""
        assert self.address is not None
        if pid != self.address.pid and not self._follow_restart(runtime, pid):
            return None
        return self.address

    def _follow_restart(self, runtime: RuntimeDir, pid: int) -> bool:
        """The server of our runtime directory is now process ``pid``: take its key (a new one
        after a clean restart) so requests and replies are signed and checked with it. False
        if its key cannot be read yet."""
        assert self.address is not None
        try:
            key = runtime.read_key()
        except RuntimeDirError:
            return False
        if key != self.address.key:
            self._old_session, self._session = self._session, Session(key)
        self.address = self.address.of_server(pid, key)
        return True
