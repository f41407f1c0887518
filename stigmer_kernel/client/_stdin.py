"""A command's stdin, streamed while it runs (``stdin_stream`` and ``stdin_chunk``).

:func:`prepare` turns what a caller passes as ``stdin`` into either bytes that travel in the
execute request (known in full at once and at most ``STDIN_INLINE_MAX``) or a
:class:`StdinFeed`. The feed waits for the agent's first ``stdin_ack`` (the command has
started), then reads its source only as far as the agent's credit allows (``STDIN_WINDOW``
bytes ahead of what it wrote into the command's stdin), so memory stays bounded whatever the
size, and a command that does not read stops the reading here. The request's end stops the
feed at once: a source that never ends (an inherited pipe nobody closes, ``yes``) does not keep
the caller waiting.

Sources: a file object with a pipe, socket or terminal descriptor is read from that
descriptor when it is readable (as :mod:`subprocess` does, so no thread blocks on it); other
file objects and iterators of bytes are read on a daemon thread, one chunk at a time; async
iterators on the event loop; bytes from memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import select
import stat
import threading
from collections.abc import AsyncIterable, Awaitable, Callable, Iterable, Iterator
from typing import IO, Any, Protocol

from ..protocol.constants import STDIN_CHUNK, STDIN_INLINE_MAX, STDIN_WINDOW

log = logging.getLogger("stigmer.client")

#: What ``execute(stdin=...)`` takes.
StdinSource = (
    str | bytes | bytearray | memoryview | IO[bytes] | Iterable[bytes] | AsyncIterable[bytes]
)
#: Sends one chunk: (data, eof).
Send = Callable[[bytes, bool], Awaitable[None]]


class _Reader(Protocol):
    async def read(self, size: int) -> bytes:
        """Up to ``size`` bytes (maybe more, from an iterator); b"" at the end."""

    def close(self) -> None:
        """Stop reading (the command ended)."""


class _Memory:
    def __init__(self, data: bytes | bytearray | memoryview) -> None:
        self.view = memoryview(data).cast("B")

    async def read(self, size: int) -> bytes:
        piece, self.view = self.view[:size], self.view[size:]
        return bytes(piece)

    def close(self) -> None:
        self.view = memoryview(b"")


class _Descriptor:
    """A pipe, socket or terminal: read when the event loop says it is readable."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._waiting: asyncio.Future[None] | None = None

    async def read(self, size: int) -> bytes:
        loop = asyncio.get_running_loop()
        while True:
            ready: asyncio.Future[None] = loop.create_future()
            self._waiting = ready
            loop.add_reader(self.fd, _wake, ready)
            try:
                await ready
            finally:
                loop.remove_reader(self.fd)
                self._waiting = None
            try:
                data = os.read(self.fd, size)
            except BlockingIOError:
                continue  # another reader of the same pipe was first
            except OSError as exc:  # a terminal hung up (EIO)...: the input ended
                log.debug("stdin read failed (%s); sending its end", exc)
                return b""
            if data and len(data) < size:  # a pipe gives 64 KiB a read: take what else is there
                more, _ = _ready_now(self.fd, size - len(data))
                data += more
            return data

    def close(self) -> None:
        if self._waiting is not None and not self._waiting.done():
            self._waiting.cancel()


def _wake(ready: asyncio.Future[None]) -> None:
    if not ready.done():
        ready.set_result(None)


class _Thread:
    """A source whose reads may block, read on a daemon thread (which a source that never
    returns leaves blocked, never the caller) at most ``STDIN_CHUNK`` bytes ahead; what it
    read meanwhile goes out together (a generator of short lines makes few chunks)."""

    def __init__(self, pull: Callable[[int], bytes]) -> None:
        self.pull = pull
        self._lock = threading.Condition()
        self._buffer = bytearray()
        self._ended = False
        self._error: BaseException | None = None
        self._closed = False
        self._waiting = False  # the loop waits for the thread: wake it
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None

    async def read(self, size: int) -> bytes:
        if self._thread is None:
            self._loop, self._wake = asyncio.get_running_loop(), asyncio.Event()
            self._thread = threading.Thread(target=self._run, name="stigmer-stdin", daemon=True)
            self._thread.start()
        assert self._wake is not None
        while True:
            with self._lock:
                if self._buffer:
                    data = bytes(self._buffer[:size])
                    del self._buffer[:size]
                    self._lock.notify()
                    return data
                if self._error is not None:
                    raise self._error
                if self._ended:
                    return b""
                self._waiting = True
                self._wake.clear()
            await self._wake.wait()

    def _run(self) -> None:
        while True:
            with self._lock:
                while len(self._buffer) >= STDIN_CHUNK and not self._closed:
                    self._lock.wait()
                if self._closed:
                    return
            try:
                data: bytes | BaseException = self.pull(STDIN_CHUNK)
            except BaseException as exc:  # handed to the caller's task
                data = exc
            with self._lock:
                if self._closed:
                    return
                if isinstance(data, BaseException):
                    self._error = data
                elif data:
                    self._buffer += data
                else:
                    self._ended = True
                wake, self._waiting = self._waiting, False
                done = self._ended or self._error is not None
            if wake and self._loop is not None and self._wake is not None:
                with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
                    self._loop.call_soon_threadsafe(self._wake.set)
            if done:
                return

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._lock.notify()


class _Async:
    def __init__(self, source: AsyncIterable[bytes]) -> None:
        self.source = source.__aiter__()

    async def read(self, size: int) -> bytes:
        async for chunk in self.source:
            if chunk:
                return _as_bytes(chunk)
        return b""

    def close(self) -> None:
        pass


def _as_bytes(chunk: Any) -> bytes:
    if isinstance(chunk, str):
        return chunk.encode("utf-8", "surrogateescape")
    if isinstance(chunk, (bytes, bytearray, memoryview)):
        return bytes(chunk)
    raise TypeError(f"stdin chunks must be bytes, not {type(chunk).__name__}")


def _next_of(items: Iterator[Any]) -> Callable[[int], bytes]:
    def pull(size: int) -> bytes:
        for chunk in items:
            if chunk:
                return _as_bytes(chunk)
        return b""

    return pull


def _read_of(handle: Any) -> Callable[[int], bytes]:
    def pull(size: int) -> bytes:
        return _as_bytes(handle.read(size) or b"")

    return pull


class StdinFeed:
    """Streams one command's stdin as the agent grants credit (see the module docstring)."""

    def __init__(self, reader: _Reader, prefix: bytes = b"") -> None:
        self.reader = reader
        self.prefix = prefix  # read already (while looking for a small input's end)
        self.window = STDIN_WINDOW
        self.sent = 0
        self.written = 0  # as the agent last acknowledged
        self.started = False
        self._credit = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def grant(self, content: dict[str, Any]) -> None:
        """A stdin_ack: ``written`` bytes are in the command's stdin; ``window`` (first one)."""
        written, window = content.get("written"), content.get("window")
        if isinstance(written, int):
            self.written = max(self.written, written)
        if isinstance(window, int) and window > 0:
            self.window = window
        self.started = True
        self._credit.set()

    def start(self, send: Send) -> None:
        self._task = asyncio.create_task(self._run(send), name="stigmer-stdin-feed")

    def stop(self) -> None:
        """The request ended: read no more."""
        if self._task is not None:
            self._task.cancel()
        self.reader.close()

    async def _room(self) -> int:
        while (room := self.window - (self.sent - self.written)) <= 0 or not self.started:
            self._credit.clear()
            await self._credit.wait()
        return room

    async def _run(self, send: Send) -> None:
        try:
            pending = self.prefix
            self.prefix = b""
            while True:
                room = await self._room()
                if not pending:
                    pending = await self.reader.read(min(STDIN_CHUNK, room))
                    if not pending:
                        await send(b"", True)
                        return
                piece = pending[: min(STDIN_CHUNK, room)]
                pending = pending[len(piece) :]
                await send(piece, False)
                self.sent += len(piece)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("reading stdin for the command failed; it reads no more of it")


def _descriptor(source: Any) -> int | None:
    fileno = getattr(source, "fileno", None)
    if fileno is None:
        return None
    try:
        fd = fileno()
    except (OSError, ValueError, AttributeError):  # io.BytesIO: UnsupportedOperation
        return None
    return fd if isinstance(fd, int) else None


def _ready_now(fd: int, limit: int = STDIN_INLINE_MAX + 1) -> tuple[bytes, bool]:
    """What a pipe holds already, up to ``limit`` bytes, and whether it ended there."""
    chunks: list[bytes] = []
    size = 0
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    while size < limit and poller.poll(0):
        try:
            data = os.read(fd, min(STDIN_CHUNK, limit - size))
        except BlockingIOError:
            break
        except OSError:
            return b"".join(chunks), True
        if not data:
            return b"".join(chunks), True
        chunks.append(data)
        size += len(data)
    return b"".join(chunks), False


def prepare(source: StdinSource) -> tuple[bytes | None, StdinFeed | None]:
    """(bytes for the request's ``stdin``, None) or (None, a feed that streams it)."""
    if isinstance(source, str):
        source = source.encode("utf-8", "surrogateescape")
    if isinstance(source, (bytes, bytearray, memoryview)):
        if memoryview(source).nbytes <= STDIN_INLINE_MAX:
            return bytes(source), None
        return None, StdinFeed(_Memory(source))
    fd = _descriptor(source)
    if fd is not None:
        try:
            info = os.fstat(fd)
        except OSError as exc:
            raise ValueError(f"stdin descriptor {fd} cannot be read: {exc.strerror}") from None
        mode = info.st_mode
        if stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode) or stat.S_ISCHR(mode):
            # Like subprocess: read from the descriptor.
            ready, ended = _ready_now(fd)
            if ended:
                return ready, None  # it was all there already: no stream needed
            if stat.S_ISCHR(mode) and not os.isatty(fd):  # /dev/zero: epoll refuses it
                return None, StdinFeed(_Thread(lambda size: os.read(fd, size)), ready)
            return None, StdinFeed(_Descriptor(fd), ready)  # no thread waits on a silent pipe
        if stat.S_ISREG(info.st_mode):
            with contextlib.suppress(OSError):
                if info.st_size - os.lseek(fd, 0, os.SEEK_CUR) <= STDIN_INLINE_MAX:
                    return _as_bytes(source.read()), None  # type: ignore[union-attr]
    if hasattr(source, "read"):
        return None, StdinFeed(_Thread(_read_of(source)))
    if hasattr(source, "__aiter__"):
        return None, StdinFeed(_Async(source))  # type: ignore[arg-type]
    if hasattr(source, "__iter__"):
        return None, StdinFeed(_Thread(_next_of(iter(source))))
    raise TypeError(
        f"stdin must be bytes, str, a binary file or an iterator of bytes, not "
        f"{type(source).__name__}"
    )
