"""Background processes from a client: :meth:`start`, :meth:`processes` and the handles.

A handle (:class:`AsyncProcess`) is only a kernel name, a process id (``"p1"``) and, for an
auto kernel, the side it runs on: any client, a new one included, can take one up again with
:meth:`ProcessesMixin.process`. Every call is one ``process_request`` that the kernel's agent
answers even while a command runs (docs/protocol.md, "Background processes"); ``output`` and
``wait`` are long-polls, so :meth:`AsyncProcess.follow` neither replays nor loses output.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from ..errors import RequestError, ServerNotRunning, ServerRestarted
from ..protocol import ErrorName, MsgType

if TYPE_CHECKING:
    from ._async import AsyncClient

#: Bytes of stdin sent in one request (the agent buffers up to 1 MiB per process).
STDIN_CHUNK = 256 * 1024
#: Seconds one long-poll waits at most (a longer wait is several of them).
_POLL = 30.0
#: Broker restarts in a row (with nothing read between) that follow() and wait() ride out: a
#: read asked again reads the same bytes, since it names its offset.
_RESTARTS = 5
#: Seconds follow() and wait() wait for a server that stopped to be back (a crash and a restart
#: by hand or by a supervisor); then they raise ServerNotRunning.
_DOWN = 15.0
#: Seconds between two asks while no server runs.
_DOWN_PAUSE = 0.2


#: What :class:`_RideOut` rides out.
_RIDDEN_OUT = (ServerRestarted, ServerNotRunning)


class _RideOut:
    """How follow() and wait() ride out a broker restart: the read in flight is asked again
    (:class:`ServerRestarted`, up to :data:`_RESTARTS` times in a row), and a server that is
    down (:class:`ServerNotRunning`) is waited for up to :data:`_DOWN` seconds."""

    def __init__(self) -> None:
        self.restarts = 0
        self.down_since: float | None = None

    def pause(self, exc: Exception) -> float:
        """Seconds to wait before asking again; raises ``exc`` when it is time to give up."""
        if isinstance(exc, ServerRestarted):
            self.restarts += 1
            if self.restarts <= _RESTARTS:
                return 0.0
            raise exc
        now = time.monotonic()
        if self.down_since is None:
            self.down_since = now
        if now - self.down_since < _DOWN:
            return _DOWN_PAUSE
        raise exc

    def answered(self) -> None:
        self.restarts, self.down_since = 0, None


#: Seconds a request may take beyond its own wait.
_SLACK = 30.0


@dataclass(frozen=True)
class OutputChunk:
    """What an ``output`` request returned for one stream. ``offset`` is where ``data``
    starts: later than the offset asked for when the journal no longer held those bytes
    (``dropped`` bytes of the stream are gone in all); ask from ``next`` for what follows."""

    stream: str
    data: bytes
    offset: int
    next: int
    end: int  # bytes the stream has had in all
    dropped: int
    eof: bool  # the process closed it
    running: bool
    exit_code: int | None

    @classmethod
    def from_reply(cls, stream: str, content: dict[str, Any]) -> OutputChunk:
        part = content[stream]
        return cls(
            stream=stream,
            data=bytes(part["data"]),
            offset=int(part["offset"]),
            next=int(part["next"]),
            end=int(part["end"]),
            dropped=int(part["dropped"]),
            eof=bool(part["eof"]),
            running=content.get("state") == "running",
            exit_code=content.get("exit_code"),
        )


@dataclass(frozen=True)
class ProcessInfo:
    """One background process as its kernel's agent described it."""

    id: str
    command: str
    pid: int
    state: str  # running | exited
    started: float  # Unix time
    exit_code: int | None  # 128 + N when killed by signal N
    signal: str | None  # e.g. "SIGTERM" when a signal ended it
    stdout_bytes: int
    stderr_bytes: int
    stdout_dropped: int
    stderr_dropped: int
    stdin: str  # open | closed

    @classmethod
    def from_reply(cls, content: Mapping[str, Any]) -> ProcessInfo:
        return cls(
            id=str(content["id"]),
            command=str(content["command"]),
            pid=int(content["pid"]),
            state=str(content["state"]),
            started=float(content["started"]),
            exit_code=content.get("exit_code"),
            signal=content.get("signal"),
            stdout_bytes=int(content["stdout"]["end"]),
            stderr_bytes=int(content["stderr"]["end"]),
            stdout_dropped=int(content["stdout"]["dropped"]),
            stderr_dropped=int(content["stderr"]["dropped"]),
            stdin=str(content.get("stdin", "closed")),
        )


class ProcessesMixin:
    """The background-process methods of :class:`~stigmer_kernel.client.AsyncClient`."""

    async def start(
        self,
        code: str,
        *,
        kernel: str = "default",
        mode: str | None = None,
        env: Mapping[str, str] | None = None,
        workdir: str | None = None,
        **options: Any,
    ) -> AsyncProcess:
        """Start ``code`` as a background process of ``kernel`` (created if needed) and
        return its handle at once. It runs in the kernel's context, as its next command
        would (its cwd, or ``workdir``; its exported variables plus ``env``; in its sandbox
        if it is one), in a process group of its own: the kernel's command timeout and
        interrupts never touch it; it ends with its kernel (shutdown, expiry, restart).
        ``options``: what :meth:`execute` takes for a kernel it creates (``cwd``, ``ttl``,
        ``sandbox_image``...)."""
        result = await cast("AsyncClient", self).execute(
            code, kernel=kernel, mode=mode, env=env, workdir=workdir, background=True, **options
        )
        if result.process is None:
            reason = result.evalue or f"status {result.status}"
            raise RequestError(
                f"kernel {kernel!r} did not start the process: {reason}",
                result.ename or ErrorName.BAD_REQUEST,
            )
        side = result.mode if result.auto else None
        return AsyncProcess(self, kernel, str(result.process["id"]), side, result.process)

    def process(self, kernel: str, process_id: str, side: str | None = None) -> AsyncProcess:
        """A handle on a process started earlier (by any client): its kernel and id (and,
        in auto mode, the side it runs on: ``local`` or ``sandbox``)."""
        return AsyncProcess(self, kernel, process_id, side)

    async def processes(
        self, kernel: str = "default", side: str | None = None
    ) -> list[ProcessInfo]:
        """The background processes of ``kernel`` (of one side of an auto kernel: ``side``,
        else the side its last command ran on), running and exited."""
        reply = await self._process_op(kernel, side, {"op": "list"})
        return [ProcessInfo.from_reply(entry) for entry in reply.get("processes", [])]

    async def _process_op(
        self, kernel: str, side: str | None, content: dict[str, Any], wait: float = 0.0
    ) -> dict[str, Any]:
        if side is not None:
            content["side"] = side
        return await cast("AsyncClient", self)._agent_request(
            MsgType.PROCESS_REQUEST, kernel, content, timeout=wait + _SLACK, creates=False
        )


class AsyncProcess:
    """A background process of a kernel: ``kernel``, ``id`` and (auto mode) ``side``."""

    def __init__(
        self,
        client: ProcessesMixin,
        kernel: str,
        process_id: str,
        side: str | None = None,
        started: Mapping[str, Any] | None = None,
    ) -> None:
        self.client = client
        self.kernel = kernel
        self.id = process_id
        self.side = side
        started = started or {}
        #: What the start's reply said (None for a handle taken up by id).
        self.pid: int | None = started.get("pid")
        self.command: str | None = started.get("command")

    def __repr__(self) -> str:
        side = f", side={self.side!r}" if self.side else ""
        return f"AsyncProcess(kernel={self.kernel!r}, id={self.id!r}{side})"

    async def _op(self, op: str, polls: float = 0.0, **fields: Any) -> dict[str, Any]:
        """One operation on this process; ``polls``: seconds the agent may hold the answer."""
        content = {"op": op, "id": self.id, **fields}
        return await self.client._process_op(self.kernel, self.side, content, polls)

    async def info(self) -> ProcessInfo:
        """Its state now (running or exited, exit code, output sizes)."""
        return ProcessInfo.from_reply(await self._op("wait", timeout=0))

    async def output(
        self,
        since: int = 0,
        stream: str = "stdout",
        *,
        max_bytes: int | None = None,
        wait: float = 0.0,
    ) -> OutputChunk:
        """``stream``'s output from byte offset ``since`` (what its journal still holds:
        see :attr:`OutputChunk.offset`). With ``wait``, the answer waits up to that many
        seconds for output beyond ``since`` or for the process to exit."""
        if stream not in ("stdout", "stderr"):
            raise RequestError("stream is 'stdout' or 'stderr'", ErrorName.BAD_REQUEST)
        fields: dict[str, Any] = {"stream": stream, "since": since, "wait": wait}
        if max_bytes is not None:
            fields["max"] = max_bytes
        reply = await self._op("output", wait, **fields)
        return OutputChunk.from_reply(stream, reply)

    async def follow(self, since: int = 0, stream: str = "stdout") -> AsyncIterator[OutputChunk]:
        """Every chunk of ``stream`` from ``since`` on, as it is written, until the process
        has exited and nothing more came (long-polls: nothing is replayed or skipped, except
        what the journal dropped before it was read, which the chunk's ``offset`` shows). A
        broker restart (its kernels re-adopted) is ridden out: the read is asked again
        (:class:`_RideOut`)."""
        riding = _RideOut()
        while True:
            try:
                chunk = await self.output(since, stream, wait=_POLL)
            except _RIDDEN_OUT as exc:
                await asyncio.sleep(riding.pause(exc))
                continue
            riding.answered()
            if chunk.data:
                yield chunk
            elif not chunk.running:
                return
            since = chunk.next

    async def write_stdin(self, data: bytes | str) -> None:
        """Write ``data`` to its stdin (waiting while the process does not read)."""
        view = memoryview(data.encode() if isinstance(data, str) else data)
        pause = 0.01
        while view:
            piece = bytes(view[:STDIN_CHUNK])
            try:
                await self._op("stdin", data=piece)
            except RequestError as exc:
                if exc.ename != ErrorName.STDIN_OVERFLOW:
                    raise
                await asyncio.sleep(pause)  # it has not read what it got: later
                pause = min(pause * 2, 0.2)
                continue
            pause = 0.01
            view = view[len(piece) :]

    async def close_stdin(self) -> None:
        """Close its stdin once what was written is in (it reads EOF)."""
        await self._op("stdin", data=b"", eof=True)

    async def signal(self, sig: int | str = "TERM") -> None:
        """Send ``sig`` (a number or a name: ``TERM``, ``SIGINT``...) to its process group."""
        await self._op("signal", signal=sig)

    async def kill(self) -> None:
        await self.signal("KILL")

    async def wait(self, timeout: float | None = None) -> int:
        """Its exit code (128 + N if signal N ended it), once it has exited; raises
        :class:`TimeoutError` if it still runs after ``timeout`` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        riding = _RideOut()
        while True:
            left = _POLL if deadline is None else max(0.0, min(_POLL, deadline - time.monotonic()))
            try:
                reply = await self._op("wait", left, timeout=left)
            except _RIDDEN_OUT as exc:  # (a wait only reads)
                await asyncio.sleep(riding.pause(exc))
                continue
            riding.answered()
            if reply.get("state") != "running":
                code = reply.get("exit_code")
                return int(code) if isinstance(code, int) else -1
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"process {self.id} of kernel {self.kernel!r} still runs")


class Process:
    """The blocking twin of :class:`AsyncProcess` (from :meth:`Client.start`)."""

    def __init__(self, handle: AsyncProcess, call: Callable[[Coroutine[Any, Any, Any]], Any]):
        self._handle = handle
        self._call = call
        self.kernel, self.id, self.side = handle.kernel, handle.id, handle.side
        self.pid, self.command = handle.pid, handle.command

    def __repr__(self) -> str:
        side = f", side={self.side!r}" if self.side else ""
        return f"Process(kernel={self.kernel!r}, id={self.id!r}{side})"

    def info(self) -> ProcessInfo:
        return cast(ProcessInfo, self._call(self._handle.info()))

    def output(
        self,
        since: int = 0,
        stream: str = "stdout",
        *,
        max_bytes: int | None = None,
        wait: float = 0.0,
    ) -> OutputChunk:
        """See :meth:`AsyncProcess.output`."""
        coro = self._handle.output(since, stream, max_bytes=max_bytes, wait=wait)
        return cast(OutputChunk, self._call(coro))

    def follow(self, since: int = 0, stream: str = "stdout") -> Iterator[OutputChunk]:
        """See :meth:`AsyncProcess.follow`."""
        riding = _RideOut()
        while True:
            try:
                chunk = self.output(since, stream, wait=_POLL)
            except _RIDDEN_OUT as exc:
                time.sleep(riding.pause(exc))
                continue
            riding.answered()
            if chunk.data:
                yield chunk
            elif not chunk.running:
                return
            since = chunk.next

    def write_stdin(self, data: bytes | str) -> None:
        self._call(self._handle.write_stdin(data))

    def close_stdin(self) -> None:
        self._call(self._handle.close_stdin())

    def signal(self, sig: int | str = "TERM") -> None:
        self._call(self._handle.signal(sig))

    def kill(self) -> None:
        self._call(self._handle.kill())

    def wait(self, timeout: float | None = None) -> int:
        """See :meth:`AsyncProcess.wait`."""
        return cast(int, self._call(self._handle.wait(timeout)))
