"""The machinery of file transfers: one file up or down in chunks, within a window.

Used by :class:`~._files.FileMethods`, which gives each transfer its :class:`Ops` (the requests
of one kernel and mode). :func:`send` and :func:`fetch` keep up to the window's chunks in flight
and their order, and check the sha256 of every file; :func:`download_file` writes a local
temporary file and renames it once verified. Local files are read and written on the default
executor, so the event loop keeps serving replies meanwhile.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import os
import stat
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..errors import ChecksumMismatch, IsADirectory
from ..protocol import ErrorName
from ..protocol.constants import FILE_CHUNK_MAX

#: Bytes per read or write_chunk request.
CHUNK = FILE_CHUNK_MAX
#: Chunk requests in flight in one transfer (a tree's files share them).
WINDOW = 8
#: Files of a tree moved at once (small files are a round trip or three each).
FILES_AT_ONCE = 4

#: ``progress(done_bytes, total_bytes)``; total is 0 when unknown (a stream).
Progress = Callable[[int, int], Any]


class Ops(Protocol):
    """The file requests of one transfer: ``first`` may create the kernel (it sends the
    kernel's options), ``more`` carries only what the agent needs."""

    async def first(
        self, op: str, timeout: float | None = 60.0, **fields: Any
    ) -> dict[str, Any]: ...

    async def more(
        self, op: str, timeout: float | None = 60.0, **fields: Any
    ) -> dict[str, Any]: ...


@dataclass
class Transfer:
    """What an upload or download moved."""

    files: int = 0
    directories: int = 0
    bytes: int = 0
    seconds: float = 0.0
    #: Paths left out of a tree: symlinks to directories, FIFOs, sockets, devices.
    skipped: list[str] = field(default_factory=list)


class Moving:
    """One transfer's shared state: the window, the byte count, the progress callback."""

    def __init__(self, total: int, progress: Progress | None) -> None:
        self.window = asyncio.Semaphore(WINDOW)
        self.total = total
        self.progress = progress
        self.result = Transfer()
        self.started = time.monotonic()

    def moved(self, count: int) -> None:
        self.result.bytes += count
        if self.progress is not None:
            self.progress(self.result.bytes, self.total)

    def done(self) -> Transfer:
        self.result.seconds = time.monotonic() - self.started
        return self.result


async def upload_file(ops: Ops, local: str, remote: str, moving: Moving) -> None:
    loop = asyncio.get_running_loop()
    with open(local, "rb") as handle:
        permissions = stat.S_IMODE(os.fstat(handle.fileno()).st_mode)

        async def read(size: int) -> bytes:
            return await loop.run_in_executor(None, handle.read, size)

        await send(ops, remote, read, permissions, moving)


async def send(
    ops: Ops,
    path: str,
    read: Callable[[int], Awaitable[bytes]],
    permissions: int | None,
    moving: Moving,
) -> str:
    """One file to the kernel: write_open, chunks in flight within the window (their
    order kept), write_close with the sha256 of what was read. Returns its path."""
    fields: dict[str, Any] = {"path": path}
    if permissions is not None:
        fields["permissions"] = permissions
    opened = await ops.first("write_open", **fields)
    token = opened["token"]
    hasher = hashlib.sha256()
    loop = asyncio.get_running_loop()
    inflight: collections.deque[asyncio.Task[None]] = collections.deque()

    async def put(offset: int, data: bytes) -> None:
        try:
            await ops.more("write_chunk", token=token, offset=offset, data=data)
        finally:
            moving.window.release()
        moving.moved(len(data))

    try:
        offset = 0
        while True:
            await moving.window.acquire()
            try:
                data = await read(CHUNK)
            except BaseException:
                moving.window.release()
                raise
            if not data:
                moving.window.release()
                break
            await loop.run_in_executor(None, hasher.update, data)
            inflight.append(asyncio.create_task(put(offset, data)))
            offset += len(data)
            while inflight and inflight[0].done():
                await inflight.popleft()  # raises the first failure
        while inflight:
            await inflight.popleft()
        closed = await ops.more("write_close", timeout=None, token=token, sha256=hasher.hexdigest())
    except BaseException:
        for task in inflight:
            task.cancel()
        with contextlib.suppress(Exception):  # the agent may have dropped it already
            await asyncio.shield(ops.more("write_close", timeout=5, token=token, commit=False))
        raise
    return str(closed["path"])


async def download_file(ops: Ops, remote: str, local: str, bits: int, moving: Moving) -> None:
    """One remote file to a local temporary file, renamed onto ``local`` once verified."""
    directory, name = os.path.split(os.path.abspath(local))
    if os.path.isdir(local):
        raise IsADirectory(f"cannot write {local}: is a directory", ErrorName.IS_A_DIRECTORY)
    fd, temp = tempfile.mkstemp(prefix=f".{name[:200]}.", suffix=".stigmer", dir=directory)
    loop = asyncio.get_running_loop()
    try:
        with os.fdopen(fd, "wb") as handle:

            async def write(data: bytes) -> None:
                await loop.run_in_executor(None, handle.write, data)

            await fetch(ops, remote, write, moving)
            os.fchmod(handle.fileno(), bits & 0o777)
        os.replace(temp, local)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise


async def fetch(
    ops: Ops,
    path: str,
    write: Callable[[bytes], Awaitable[None]],
    moving: Moving,
) -> None:
    """One remote file, chunk by chunk with reads in flight within the window, handed to
    ``write`` in order; then its sha256 compared with the agent's."""
    async with moving.window:
        first = await ops.first("read", path=path, offset=0, length=CHUNK)
    path = first["path"]  # absolute: a cd meanwhile changes nothing
    hasher = hashlib.sha256()
    loop = asyncio.get_running_loop()

    async def got(data: bytes) -> None:
        await loop.run_in_executor(None, hasher.update, data)
        await write(data)
        moving.moved(len(data))

    await got(first["data"])
    if first["eof"]:
        expected = first.get("sha256")
    else:
        rest = (len(first["data"]), first["size"])
        await fetch_rest(ops, path, rest, got, moving)
        expected = (await ops.more("sha256", timeout=None, path=path))["sha256"]
    if expected != hasher.hexdigest():
        raise ChecksumMismatch(
            f"{path} changed while it was read (sha256 {hasher.hexdigest()} of what "
            f"arrived, {expected} now) — copy it again once it is written",
            ErrorName.CHECKSUM_MISMATCH,
        )


async def fetch_rest(
    ops: Ops,
    path: str,
    rest: tuple[int, int],
    got: Callable[[bytes], Awaitable[None]],
    moving: Moving,
) -> None:
    """The reads after the first, from ``rest`` (offset, size then), in order until
    one says eof (beyond the size first seen if the file grew)."""
    inflight: collections.deque[asyncio.Task[dict[str, Any]]] = collections.deque()
    planned, size = rest

    async def get(at: int) -> dict[str, Any]:
        try:
            return await ops.more("read", path=path, offset=at, length=CHUNK)
        finally:
            moving.window.release()

    try:
        while True:
            while len(inflight) < WINDOW and (planned < size or not inflight):
                await moving.window.acquire()
                inflight.append(asyncio.create_task(get(planned)))
                planned += CHUNK
            reply = await inflight.popleft()
            await got(reply["data"])
            if reply["eof"]:
                return
    finally:
        for task in inflight:
            task.cancel()


@dataclass
class Plan:
    dirs: list[str] = field(default_factory=list)
    files: list[str] = field(default_factory=list)


def local_tree(top: str) -> tuple[Plan, list[str], int]:
    """A local tree: its directories and regular files (relative), what is left out, and
    the bytes of its files."""
    plan, skipped, total = Plan(), [], 0
    for where, dirs, files in os.walk(top):
        relative = os.path.relpath(where, top)
        for name in dirs:
            path = os.path.join(where, name)
            if os.path.islink(path):
                skipped.append(path)
            else:
                plan.dirs.append(os.path.normpath(os.path.join(relative, name)))
        for name in files:
            path = os.path.join(where, name)
            try:
                st = os.stat(path)
            except OSError:
                skipped.append(path)  # a dangling symlink
                continue
            if stat.S_ISREG(st.st_mode):
                plan.files.append(os.path.normpath(os.path.join(relative, name)))
                total += st.st_size
            else:
                skipped.append(path)
    return plan, skipped, total


async def each(jobs: list[Any], one: Callable[[Any], Awaitable[None]]) -> None:
    """``one(job)`` for every job, :data:`FILES_AT_ONCE` at a time; the first error ends all."""
    queue = collections.deque(jobs)

    async def worker() -> None:
        while queue:
            await one(queue.popleft())

    workers = [asyncio.create_task(worker()) for _ in range(min(FILES_AT_ONCE, len(jobs)))]
    try:
        await asyncio.gather(*workers)
    finally:
        for task in workers:
            task.cancel()
        await asyncio.gather(*workers, return_exceptions=True)


def join(base: str, name: str) -> str:
    """``base/name`` in the kernel's world (POSIX paths)."""
    if not name or name == ".":
        return base
    return base.rstrip("/") + "/" + name if base else name
