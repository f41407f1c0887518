"""The asyncio client for agent runners.

One DEALER socket to the broker; a reader task routes each incoming message to the request it
answers (by ``parent_header.msg_id``), so any number of tasks can use one client at once.
User callbacks run on that task: one that raises is logged and the request carries on. Should
the reader itself end, every pending and later request fails at once with the reason.
"""

from __future__ import annotations

import asyncio
import codecs
import collections
import contextlib
import dataclasses
import logging
import os
import time
from collections.abc import Callable, Coroutine, Mapping
from typing import Any

import zmq
import zmq.asyncio

from ..config import Config, load_config
from ..curve import client_keys, make_client
from ..environment import checked_env, client_environment
from ..errors import (
    ClientTimeout,
    ProtocolError,
    RequestError,
    RuntimeDirError,
    ServerError,
    ServerNotRunning,
    StigmerError,
)
from ..protocol import ErrorName, Message, MsgType, Session
from ..runtime import RuntimeDir
from ._errors import raise_for, refused
from ._stdin import StdinFeed, StdinSource, prepare
from .discovery import ServerAddress, find_server
from .result import ExecResult

log = logging.getLogger("stigmer.client")

OutputCallback = Callable[[str], Any]
RawOutputCallback = Callable[[str, bytes], Any]
EventCallback = Callable[[dict[str, Any]], Any]

#: How often a waiting request checks that the server process still exists.
_LIVENESS_PERIOD = 1.0
#: Messages (output chunks of <= 64 KiB) queued here before the server holds the rest: a
#: caller that does not keep up (a slow stdout) then slows the command, not our memory.
_RCVHWM = 256


def _run_callback(what: str, callback: Callable[..., Any], *args: Any) -> None:
    """Call a user callback; an exception it raises is logged, never passed to the reader."""
    try:
        callback(*args)
    except Exception:
        log.exception("the %s callback raised; the request carries on without it", what)


class _Call:
    """A request in flight: collects outputs until its reply arrives."""

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
        self.future: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        self.on = {"stdout": on_stdout, "stderr": on_stderr}
        self.decoders = {
            "stdout": codecs.getincrementaldecoder("utf-8")("replace"),
            "stderr": codecs.getincrementaldecoder("utf-8")("replace"),
        }
        self.chunks: dict[str, list[bytes]] = {"stdout": [], "stderr": []}
        self.events: list[dict[str, Any]] = []
        self.feed: StdinFeed | None = None  # the command's stdin, streamed while it runs

    def stream(self, name: str, data: bytes) -> None:
        if name not in self.chunks:
            return
        if self.keep is None:
            self.chunks[name].append(data)
        else:  # streamed in full below; kept up to the limit
            room = max(0, self.keep - self.kept[name])
            if room:
                self.chunks[name].append(data[:room])
                self.kept[name] += min(room, len(data))
            self.dropped[name] += max(0, len(data) - room)
        if self.on_output is not None:
            _run_callback("on_output", self.on_output, name, data)
        callback = self.on[name]
        if callback is not None:
            text = self.decoders[name].decode(data)
            if text:
                _run_callback(f"on_{name}", callback, text)

    def flush(self) -> None:
        for name, callback in self.on.items():
            if callback is not None:
                text = self.decoders[name].decode(b"", final=True)
                if text:
                    _run_callback(f"on_{name}", callback, text)


class _Link:
    """The CurveZMQ link to a remote server, watched through a socket monitor: a refused key or
    a server that cannot be reached ends requests with an error instead of silence."""

    #: Seconds without a working link before waiting requests fail.
    UNREACHABLE_AFTER = 10.0

    def __init__(self, endpoint: str, sock: Any) -> None:
        self.endpoint = endpoint
        self.up = False
        self.down_since = time.monotonic()
        self.refused: str | None = None
        self.sock = sock
        # Queue only to a connection whose handshake is done: a request is sent now or never
        # (a failed one is not delivered later behind the caller's back).
        sock.setsockopt(zmq.IMMEDIATE, 1)
        # ZMTP heartbeats: a half-open link (host gone, NAT dropped it) ends as a disconnect.
        sock.setsockopt(zmq.HEARTBEAT_IVL, 2000)
        sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, 6000)
        self.monitor = sock.get_monitor_socket(
            zmq.EVENT_HANDSHAKE_SUCCEEDED
            | zmq.EVENT_HANDSHAKE_FAILED_AUTH
            | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
            | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
            | zmq.EVENT_DISCONNECTED
        )
        self.task = asyncio.create_task(self._watch(), name="stigmer-client-link")

    async def _watch(self) -> None:
        from zmq.utils.monitor import parse_monitor_message

        while True:
            event = parse_monitor_message(await self.monitor.recv_multipart())["event"]
            if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self.up, self.refused = True, None
            elif event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
                self.up = False
                self.refused = (
                    f"the server at {self.endpoint} refused this client's CURVE key: ask its "
                    "owner to `stigmer curve authorize` your NAME.key"
                )
            elif event in (
                zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL,
                zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL,
            ):
                self.up = False
                self.refused = (
                    f"no CurveZMQ handshake with {self.endpoint}: is that the server's "
                    "client_endpoint, and its curve/server.key the one given?"
                )
            elif event == zmq.EVENT_DISCONNECTED and self.up:
                self.up, self.down_since = False, time.monotonic()

    async def send(self, frames: list[bytes]) -> None:
        """Send once a link is up; raise (nothing sent) if none comes."""
        while True:
            try:
                await self.sock.send_multipart(frames, flags=zmq.NOBLOCK, copy=False)
                return
            except zmq.Again:
                self.check(sent=False)
                await asyncio.sleep(0.05)

    def check(self, sent: bool) -> None:
        if self.refused is not None:
            raise ServerNotRunning(self.refused)
        if not self.up and time.monotonic() - self.down_since > self.UNREACHABLE_AFTER:
            raise ServerNotRunning(
                f"no connection to the stigmer server at {self.endpoint} for "
                f"{self.UNREACHABLE_AFTER:g}s"
                + (
                    "; the request was sent before, so it may or may not have run — check "
                    "before retrying"
                    if sent
                    else "; the request was not sent"
                )
            )

    def close_now(self) -> None:
        self.task.cancel()
        with contextlib.suppress(zmq.ZMQError):
            self.sock.disable_monitor()
        self.monitor.close(linger=0)

    async def close(self) -> None:
        self.task.cancel()
        await asyncio.wait({self.task})
        self.close_now()


@dataclasses.dataclass(frozen=True)
class RemoteServer:
    """A server on another host, reached over TCP with CurveZMQ.

    ``key`` is the server's HMAC key (its RUNTIME_DIR/key file); ``server_public_key`` its
    ``curve/server.key``; ``client_cert`` this client's secret certificate (``stigmer curve
    keygen``), whose public half the server authorized.
    """

    endpoint: str
    key: bytes
    server_public_key: str
    client_cert: str

    def secure(self, sock: Any) -> None:
        """CurveZMQ on ``sock``; :class:`CurveKeyError` if a key file cannot be used."""
        make_client(sock, client_keys(self.server_public_key, self.client_cert))


class AsyncClient:
    """Asyncio client. ``async with AsyncClient() as c: r = await c.execute("ls")``.

    It finds the server of ``STIGMER_RUNTIME_DIR`` (or ``config.runtime_dir``) and, unless
    ``autostart`` is false, starts one in the background when none runs. With
    ``inherit_env=True``, the local kernels it creates start with this process's environment
    (as the ``stigmer`` CLI's do); by default they start with the server's. Sandbox and remote
    kernels never get a host environment.
    """

    def __init__(
        self,
        config: Config | None = None,
        *,
        runtime_dir: str | os.PathLike[str] | None = None,
        autostart: bool = True,
        on_event: EventCallback | None = None,
        remote: RemoteServer | None = None,
        inherit_env: bool = False,
    ) -> None:
        overrides = {"runtime_dir": str(runtime_dir)} if runtime_dir is not None else None
        if inherit_env and remote is not None:
            raise StigmerError(
                "inherit_env sends this host's environment, and a remote server's kernels run "
                "on its host — pass kernel_env={...} to the calls that create them instead"
            )
        self.remote = remote
        #: Kernels this client creates start with its environment (``os.environ`` when the
        #: request is sent, minus stigmer's internals); without it, with the server's.
        self.inherit_env = inherit_env
        self.config = config or load_config(overrides)
        self.autostart = autostart
        self.on_event = on_event
        self.events: collections.deque[dict[str, Any]] = collections.deque(maxlen=1000)
        self.address: ServerAddress | None = None
        self._ctx: zmq.asyncio.Context | None = None
        self._sock: zmq.asyncio.Socket | None = None
        self._session: Session | None = None
        self._old_session: Session | None = None  # the previous server's, after a restart
        self._calls: dict[str, _Call] = {}
        self._reader: asyncio.Task[None] | None = None
        self._reader_failure: BaseException | None = None  # why the reader ended, if it did
        self._closed = False
        # A remote server: the CurveZMQ link as the socket monitor reports it.
        self._link: _Link | None = None

    # -- life cycle ---------------------------------------------------------------------------
    async def connect(self) -> AsyncClient:
        if self._sock is not None:
            return self
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
            sock.setsockopt(zmq.IDENTITY, f"c:{os.getpid()}:{os.urandom(6).hex()}".encode())
            if self.remote is not None:
                self._link = _Link(self.remote.endpoint, sock)
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
        return self

    async def __aenter__(self) -> AsyncClient:
        return await self.connect()

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
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
                    data = msg.content.get("data", b"")
                    if isinstance(data, str):
                        data = data.encode()
                    call.stream(str(msg.content.get("name")), data)
            elif mtype == MsgType.STDIN_ACK.value:
                if call is not None and call.feed is not None:
                    call.feed.grant(msg.content)
            elif mtype == MsgType.KERNEL_EVENT.value:
                if call is not None:
                    call.events.append(msg.content)
                self.events.append(msg.content)
                if self.on_event is not None:
                    _run_callback("on_event", self.on_event, msg.content)
            elif call is not None and not call.future.done():
                call.future.set_result(msg)

    async def _request(
        self,
        msg_type: MsgType,
        content: dict[str, Any],
        on_stdout: OutputCallback | None = None,
        on_stderr: OutputCallback | None = None,
        timeout: float | None = None,
        on_output: RawOutputCallback | None = None,
        keep: int | None = None,
        feed: StdinFeed | None = None,
    ) -> tuple[Message, _Call]:
        if self._closed:
            raise StigmerError("this client is closed")
        await self.connect()
        if self._reader_failure is not None:
            raise self._reader_error()
        assert self._sock is not None and self._session is not None and self.address
        msg = self._session.msg(msg_type.value, content)
        call = _Call(on_stdout, on_stderr, on_output, keep)
        call.feed = feed
        self._calls[msg.msg_id] = call
        try:
            if self._link is not None:
                await self._link.send(self._session.serialize(msg))
            else:
                await self._sock.send_multipart(self._session.serialize(msg), copy=False)
            if feed is not None:
                feed.start(self._stdin_sender(msg, str(content.get("kernel") or "default")))
            sent_at, sent_to = time.time(), self.address
            loop = asyncio.get_running_loop()
            deadline = None if timeout is None else loop.time() + timeout
            runtime: RuntimeDir = self.address.runtime
            while True:
                wait = _LIVENESS_PERIOD
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
                if not runtime.server_running():
                    raise ServerNotRunning(
                        f"the stigmer server of {runtime.path} stopped before answering"
                    )
                info = runtime.read_info() or {}
                pid = info.get("pid")
                if not isinstance(pid, int) or pid == sent_to.pid:
                    continue
                if pid != self.address.pid and not self._follow_restart(runtime, pid):
                    continue  # its key is not there yet: look again at the next check
                if self.address.key != sent_to.key:
                    # A clean restart makes a new key: the new server dropped what was signed
                    # with the old one unread (the old one would have answered it, and an
                    # answer still queued here is read first), so it is sent again, once per
                    # restart.
                    done, _ = await asyncio.wait({call.future}, timeout=0.2)
                    if done:
                        continue  # answered after all: returned at the top of the loop
                    await self._sock.send_multipart(self._session.serialize(msg), copy=False)
                    sent_at, sent_to = time.time(), self.address
                    continue
                started = info.get("started")
                if isinstance(started, (int, float)) and started < sent_at:
                    sent_to = self.address  # it restarted before this was sent: the new one has it
                    continue
                raise ServerError(
                    f"the stigmer server restarted (pid {sent_to.pid} -> {pid}) while this "
                    f"{msg_type.value} was in flight; it may or may not have run — check "
                    "before retrying"
                )
        finally:
            self._calls.pop(msg.msg_id, None)
            if feed is not None:
                feed.stop()  # the command ended (or the wait did): no more of its stdin

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
        self.address = dataclasses.replace(self.address, pid=pid, key=key)
        return True

    @staticmethod
    def _raise_for(reply: Message) -> None:
        raise_for(reply.content)

    def _add_kernel_env(self, content: dict[str, Any], given: Mapping[str, str] | None) -> None:
        """``kernel_env`` of a request that may create a kernel: ``given``, else this process's
        environment with ``inherit_env``, else none (the server's)."""
        if given is not None:
            content["kernel_env"] = checked_env(given, "kernel_env", shell_names=False)
        elif self.inherit_env:
            content["kernel_env"] = checked_env(
                client_environment(), "kernel_env", shell_names=False
            )

    # -- API ----------------------------------------------------------------------------------
    def _default_mode(self) -> str | None:
        """The mode a request names when the caller gave none: this client's configured mode
        if it was set (config file, environment, override), else none, so the server applies its
        own default (``stigmer server start --execution-mode``) or an existing kernel's mode."""
        if "execution_mode" in self.config.explicit:
            return self.config.execution_mode.value
        return None

    def _add_kernel_options(self, content: dict[str, Any], **given: Any) -> None:
        """Say which kernel options the caller chose (``explicit``: an existing kernel must
        have them), and add this client's own settings as defaults for a kernel the request
        creates: its ``kernel_cwd``, ``sandbox_image``, ``kernel_ttl`` and ``sandbox_ttl``,
        when its config set them (a server started earlier has its own)."""
        content["explicit"] = sorted(name for name, value in given.items() if value is not None)
        config = self.config
        if given.get("cwd") is None and "kernel_cwd" in config.explicit and config.kernel_cwd:
            content["cwd"] = config.kernel_cwd
        if content.get("sandbox_image") is None and "sandbox_image" in config.explicit:
            content["sandbox_image"] = config.sandbox_image
        settings = {
            name: getattr(config, name)
            for name in ("kernel_ttl", "sandbox_ttl")
            if name in config.explicit
        }
        if settings:
            content["settings"] = settings

    async def execute(
        self,
        code: str,
        *,
        kernel: str = "default",
        mode: str | None = None,
        timeout: float | None = None,
        cwd: str | None = None,
        stdin: StdinSource | None = None,
        on_stdout: OutputCallback | None = None,
        on_stderr: OutputCallback | None = None,
        output_limit: int | None = None,
        ttl: float | None = None,
        on_output: RawOutputCallback | None = None,
        sandbox_image: str | None = None,
        requirements: str | None = None,
        workspace: str | None = None,
        env: Mapping[str, str] | None = None,
        kernel_env: Mapping[str, str] | None = None,
        sticky: bool | None = None,
    ) -> ExecResult:
        """Run shell ``code`` on ``kernel`` (created on first use) and return its result.

        ``timeout`` ends the command (and everything it started) after that many seconds;
        ``stdin`` becomes the command's standard input (otherwise it reads /dev/null): bytes
        or str, a binary file object or an (async) iterator of bytes, streamed while the
        command runs (any size, bounded memory; it sees EOF at the source's end, and the
        source is read no further once the command ends, so a pipe that never closes is fine);
        a file object with a pipe, socket or terminal descriptor is read from the descriptor,
        as :mod:`subprocess` does; small input known at once travels in the request;
        ``cwd`` is the working directory of a kernel this call creates (default: ours).
        Sandbox kernels (``mode="sandbox"``) this call creates use ``sandbox_image``, bake in
        ``requirements`` (the text of a pip requirements file) and mount ``workspace`` (default:
        ``cwd``) at /workspace.
        ``on_stdout``/``on_stderr`` get decoded text as it is written; ``on_output`` gets
        ``(stream_name, raw_bytes)``: all of it, never cut (a callback that is slow slows the
        command, which waits on its pipe). The result keeps the first ``output_limit`` bytes
        of each stream (default: the ``output_limit`` setting, 32 MiB; 0 keeps none); what it
        did not keep is counted in ``stdout_dropped``/``stderr_dropped`` and makes
        ``truncated`` true.
        ``env`` sets variables for this command only, in any mode (the next command does not
        see them); ``kernel_env`` is the whole environment of a local kernel this call creates
        (default: this process's with ``inherit_env``, else the server's).
        ``sticky`` (auto kernels): whether this command follows the kernel to the sandbox once
        an earlier one changed it there (default: the ``auto_sticky`` setting, ours if it was
        set, else the server's); ``False`` decides it by the rules alone.
        Request problems (bad kernel name, unavailable mode, a bad ``env``) raise
        :class:`RequestError`; everything about the command itself, including its kernel
        dying, is in the result.
        """
        content: dict[str, Any] = {
            "code": code,
            "kernel": kernel,
            "mode": mode or self._default_mode(),
            "cwd": cwd or (None if self.remote else _cwd()),  # ours means nothing there
            "silent": False,
            "store_history": True,
            "allow_stdin": False,
        }
        if timeout is not None:
            content["timeout"] = timeout
        keep = self.config.output_limit if output_limit is None else output_limit
        if keep < 0:
            raise RequestError(
                f"output_limit must be >= 0 bytes, not {keep}", ErrorName.BAD_REQUEST
            )
        if ttl is not None:
            content["ttl"] = ttl
        if sandbox_image is not None:
            content["sandbox_image"] = sandbox_image
        if requirements is not None:
            content["requirements"] = requirements
        if workspace is not None:
            content["workspace"] = workspace
        if env:
            content["env"] = checked_env(env, "env")
        own_timeout = "command_timeout" in self.config.explicit  # our setting, not the server's
        if timeout is None and own_timeout and self.config.command_timeout is not None:
            content["timeout"] = self.config.command_timeout
        if sticky is None and "auto_sticky" in self.config.explicit:
            sticky = self.config.auto_sticky  # our setting travels with the request
        if sticky is not None:
            content["sticky"] = sticky
        self._add_kernel_options(
            content,
            mode=mode,
            cwd=cwd,
            ttl=ttl,
            sandbox_image=sandbox_image,
            requirements=requirements,
            workspace=workspace,
        )
        self._add_kernel_env(content, kernel_env)
        feed = None
        if stdin is not None:  # last: reading it may start here
            inline, feed = prepare(stdin)
            if feed is not None:
                content["stdin_stream"] = True
            else:
                content["stdin"] = inline
        reply, call = await self._request(
            MsgType.EXECUTE_REQUEST,
            content,
            on_stdout,
            on_stderr,
            on_output=on_output,
            keep=keep,
            feed=feed,
        )
        c = reply.content
        if refused(c):
            self._raise_for(reply)
        exit_code = c.get("exit_code")
        auto = c.get("auto") if isinstance(c.get("auto"), dict) else None
        return ExecResult(
            kernel=kernel,
            mode=str(auto["mode"] if auto else c.get("mode") or content["mode"] or "unknown"),
            auto=auto,
            status=str(c.get("status", "error")),
            exit_code=exit_code if isinstance(exit_code, int) else None,
            stdout_bytes=b"".join(call.chunks["stdout"]),
            stderr_bytes=b"".join(call.chunks["stderr"]),
            duration=float(c.get("duration") or 0.0),
            execution_count=c.get("execution_count"),
            cwd=c.get("cwd"),
            truncated=bool(c.get("truncated") or any(call.dropped.values())),
            stdout_dropped=call.dropped["stdout"],
            stderr_dropped=call.dropped["stderr"],
            lost_messages=int(c.get("lost_messages") or 0),
            session_reset=bool(c.get("session_reset")),
            ename=c.get("ename"),
            evalue=c.get("evalue"),
            events=call.events,
        )

    async def interrupt(self, kernel: str = "default") -> dict[str, Any]:
        """Interrupt the command running on ``kernel`` (like Ctrl-C)."""
        reply, _ = await self._request(MsgType.INTERRUPT_REQUEST, {"kernel": kernel}, timeout=10)
        self._raise_for(reply)
        return reply.content

    async def list_kernels(self) -> list[dict[str, Any]]:
        reply, _ = await self._request(MsgType.KERNEL_LIST_REQUEST, {}, timeout=10)
        self._raise_for(reply)
        return list(reply.content.get("kernels", []))

    async def kernel_info(self, kernel: str = "default") -> dict[str, Any]:
        reply, _ = await self._request(MsgType.KERNEL_INFO_REQUEST, {"kernel": kernel}, timeout=10)
        self._raise_for(reply)
        return reply.content

    async def shutdown_kernel(self, kernel: str) -> None:
        reply, _ = await self._request(
            MsgType.KERNEL_SHUTDOWN_REQUEST, {"kernel": kernel}, timeout=10
        )
        self._raise_for(reply)

    async def restart_kernel(
        self,
        kernel: str,
        *,
        cwd: str | None = None,
        sandbox_image: str | None = None,
        requirements: str | None = None,
    ) -> dict[str, Any]:
        """Give ``kernel`` a fresh session (variables, functions and jobs are gone) with the
        options it has; ``cwd``, ``sandbox_image`` and ``requirements`` replace its own. Its
        mode never changes. Returns ``kernel``, the new ``kernel_id`` and the ``reason``."""
        content: dict[str, Any] = {"kernel": kernel}
        for name, value in (
            ("cwd", cwd),
            ("sandbox_image", sandbox_image),
            ("requirements", requirements),
        ):
            if value is not None:
                content[name] = value
        reply, _ = await self._request(MsgType.KERNEL_RESTART_REQUEST, content, timeout=30)
        self._raise_for(reply)
        return reply.content

    async def connect_jupyter(
        self,
        kernel: str = "default",
        *,
        mode: str | None = None,
        cwd: str | None = None,
        connection: dict[str, Any] | None = None,
        kernel_env: Mapping[str, str] | None = None,
    ) -> dict[str, Any]:
        """Give ``kernel`` (created if needed) Jupyter channels; returns ``connection_file``
        (a standard Jupyter connection file) and ``connection`` (its contents).
        ``kernel_env``: as for :meth:`execute`.

        ``connection`` asks for specific ports and key (what a kernelspec launcher was given),
        or just ``{"transport": "tcp"}`` for loopback TCP ports (which every local user can
        reach); without it the channels are ipc sockets only this user reaches.
        """
        content: dict[str, Any] = {
            "kernel": kernel,
            "mode": mode or self._default_mode(),
            "cwd": cwd or (None if self.remote else _cwd()),  # ours means nothing there
        }
        if connection is not None:
            content["connection"] = connection
        self._add_kernel_options(content, mode=mode, cwd=cwd)
        self._add_kernel_env(content, kernel_env)
        reply, _ = await self._request(MsgType.KERNEL_CONNECT_REQUEST, content, timeout=30)
        self._raise_for(reply)
        return reply.content

    async def server_info(self) -> dict[str, Any]:
        reply, _ = await self._request(MsgType.SERVER_INFO_REQUEST, {}, timeout=10)
        self._raise_for(reply)
        return reply.content

    async def shutdown_server(self) -> None:
        reply, _ = await self._request(MsgType.SERVER_SHUTDOWN_REQUEST, {}, timeout=10)
        self._raise_for(reply)


def _cwd() -> str | None:
    try:
        return os.getcwd()
    except FileNotFoundError:
        return None
