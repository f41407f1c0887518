"""The asyncio client for agent runners: :class:`AsyncClient`'s requests and their replies.

Each method builds the content of one request and interprets its reply; delivering it (the
socket, the reader task that routes each incoming message to the request it answers, the
server's liveness while it waits) is the :class:`~._transport.Transport`'s, so any number of
tasks can use one client at once. User callbacks run on the reader task: one that raises is
logged and the request carries on.
"""

from __future__ import annotations

import collections
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ..config import Config, load_config
from ..errors import StigmerError
from ..protocol import Message, MsgType
from ._errors import raise_for
from ._files import FileMethods
from ._processes import ProcessesMixin
from ._remote import RemoteServer
from ._requests import (
    add_kernel_env,
    add_kernel_options,
    current_dir,
    default_mode,
    exec_result,
    execute_content,
)
from ._stdin import StdinSource, prepare
from ._transport import Transport, run_callback
from .discovery import ServerAddress
from .result import ExecResult

if TYPE_CHECKING:
    from ._call import EventCallback, OutputCallback, RawOutputCallback


class AsyncClient(FileMethods, ProcessesMixin):
    """Asyncio client. ``async with AsyncClient() as c: r = await c.execute("ls")``.

    It finds the server of ``STIGMER_RUNTIME_DIR`` (or ``config.runtime_dir``) and, unless
    ``autostart`` is false, starts one in the background when none runs. With
    ``inherit_env=True``, the local kernels it creates start with this process's environment
    (as the ``stigmer`` CLI's do); by default they start with the server's. Sandbox and remote
    kernels never get a host environment. The file methods (``read_file``, ``upload``...)
    are those of :class:`~._files.FileMethods`.
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
        self._transport = Transport(
            self.config, autostart=autostart, remote=remote, on_event=self._kernel_event
        )

    @property
    def address(self) -> ServerAddress | None:
        """The server this client talks to (after :meth:`connect`; it follows a restart)."""
        return self._transport.address

    def _kernel_event(self, event: dict[str, Any]) -> None:
        self.events.append(event)
        if self.on_event is not None:
            run_callback("on_event", self.on_event, event)

    # -- life cycle ---------------------------------------------------------------------------
    async def connect(self) -> AsyncClient:
        await self._transport.connect()
        return self

    async def __aenter__(self) -> AsyncClient:
        return await self.connect()

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._transport.aclose()

    # -- requests -----------------------------------------------------------------------------
    @staticmethod
    def _raise_for(reply: Message) -> None:
        raise_for(reply.content)

    def _add_kernel_env(self, content: dict[str, Any], given: Mapping[str, str] | None) -> None:
        add_kernel_env(content, given, self.inherit_env)

    def _default_mode(self) -> str | None:
        return default_mode(self.config)

    def _add_kernel_options(self, content: dict[str, Any], **given: Any) -> None:
        add_kernel_options(content, self.config, **given)

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
        workdir: str | None = None,
        background: bool = False,
        pool: str | None = None,
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
        ``cwd``) at /workspace; with ``pool``, a sandbox kernel this call creates is served
        by an idle member of that agent pool instead (default: the server's ``sandbox_pool``);
        an existing kernel must come from that pool.
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
        ``workdir`` is this command's own working directory (absolute, or relative to the
        kernel's cwd), in any mode; the kernel's cwd stays as it was for the next command.
        ``background`` starts the code as a background process instead and returns at once
        (its handle in ``ExecResult.process``; :meth:`start` gives a :class:`AsyncProcess`).
        Request problems (bad kernel name, unavailable mode, a bad ``env``) raise
        :class:`RequestError`; everything about the command itself, including its kernel
        dying, is in the result. Cancelling the call interrupts its command, and only it: one
        still queued behind another client's on a shared kernel is withdrawn, and what runs
        goes on.
        """
        content, keep = execute_content(
            self.config,
            code,
            remote=self.remote is not None,
            inherit_env=self.inherit_env,
            kernel=kernel,
            mode=mode,
            timeout=timeout,
            cwd=cwd,
            output_limit=output_limit,
            ttl=ttl,
            sandbox_image=sandbox_image,
            requirements=requirements,
            workspace=workspace,
            env=env,
            kernel_env=kernel_env,
            sticky=sticky,
            workdir=workdir,
            background=background,
            pool=pool,
        )
        feed = None
        if stdin is not None:  # last: reading it may start here
            inline, feed = prepare(stdin)
            if feed is not None:
                content["stdin_stream"] = True
            else:
                content["stdin"] = inline
        reply, call = await self._transport.request(
            MsgType.EXECUTE_REQUEST,
            content,
            on_stdout,
            on_stderr,
            on_output=on_output,
            keep=keep,
            feed=feed,
            interrupt_on_cancel=str(content.get("kernel") or "default"),
        )
        return exec_result(content, reply, call)

    async def _agent_request(
        self,
        msg_type: MsgType,
        kernel: str,
        content: dict[str, Any],
        *,
        mode: str | None = None,
        timeout: float | None = 60.0,
        creates: bool = True,
    ) -> dict[str, Any]:
        """One ``file_request`` or ``process_request`` (``content`` has its ``op``), answered
        by ``kernel``'s agent even while a command runs; the kernel is created if it does not
        exist, as by :meth:`execute`. Returns the reply's content, or raises for an error."""
        content = {**content, "kernel": kernel}
        if creates:  # ``creates``: the request may create the kernel (a process query never)
            content["mode"] = mode or self._default_mode()
            if content["mode"] is None:
                del content["mode"]
            self._add_kernel_env(content, None)
            self._add_kernel_options(content, mode=mode)
        reply, _ = await self._transport.request(msg_type, content, timeout=timeout)
        self._raise_for(reply)
        return reply.content

    async def interrupt(self, kernel: str = "default") -> dict[str, Any]:
        """Interrupt the command running on ``kernel`` (like Ctrl-C)."""
        reply, _ = await self._transport.request(
            MsgType.INTERRUPT_REQUEST, {"kernel": kernel}, timeout=10
        )
        self._raise_for(reply)
        return reply.content

    async def list_kernels(self) -> list[dict[str, Any]]:
        reply, _ = await self._transport.request(MsgType.KERNEL_LIST_REQUEST, {}, timeout=10)
        self._raise_for(reply)
        return list(reply.content.get("kernels", []))

    async def kernel_info(self, kernel: str = "default") -> dict[str, Any]:
        reply, _ = await self._transport.request(
            MsgType.KERNEL_INFO_REQUEST, {"kernel": kernel}, timeout=10
        )
        self._raise_for(reply)
        return reply.content

    async def shutdown_kernel(self, kernel: str) -> None:
        reply, _ = await self._transport.request(
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
        reply, _ = await self._transport.request(
            MsgType.KERNEL_RESTART_REQUEST, content, timeout=30
        )
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
            "cwd": cwd or (None if self.remote else current_dir()),  # ours means nothing there
        }
        if connection is not None:
            content["connection"] = connection
        self._add_kernel_options(content, mode=mode, cwd=cwd)
        self._add_kernel_env(content, kernel_env)
        reply, _ = await self._transport.request(
            MsgType.KERNEL_CONNECT_REQUEST, content, timeout=30
        )
        self._raise_for(reply)
        return reply.content

    async def server_info(self) -> dict[str, Any]:
        reply, _ = await self._transport.request(MsgType.SERVER_INFO_REQUEST, {}, timeout=10)
        self._raise_for(reply)
        return reply.content

    async def shutdown_server(self) -> None:
        reply, _ = await self._transport.request(MsgType.SERVER_SHUTDOWN_REQUEST, {}, timeout=10)
        self._raise_for(reply)
