"""The blocking client: an :class:`AsyncClient` driven by its own event-loop thread, and a
lean socket for the common case.

Any number of threads may call one ``Client`` at once. An ``execute`` on a local server with no
streamed stdin (none, or bytes/str small enough to travel in the request) runs in the calling
thread on the client's :class:`~._blocking.BlockingTransport` when that is free (no thread hop,
no event loop); any other call, or one that finds it busy, goes through the loop thread.
Callbacks (``on_stdout``...) run on whichever thread serves the call, and one that raises is
logged (logger ``stigmer.client``), not propagated.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Coroutine, Mapping
from typing import TYPE_CHECKING, Any, BinaryIO, TypeVar

from ..config import Config
from ..errors import StigmerError
from ..protocol import MsgType
from ..protocol.constants import CLIENT_SOCKET_SEP, STDIN_INLINE_MAX
from ._async import AsyncClient
from ._blocking import BlockingTransport
from ._files import FileInfo, Progress, Transfer
from ._processes import Process, ProcessInfo
from ._remote import RemoteServer
from ._requests import exec_result, execute_content
from ._stdin import StdinSource
from .result import ExecResult

if TYPE_CHECKING:
    from ._call import EventCallback, OutputCallback, RawOutputCallback

T = TypeVar("T")


class Client:
    """Blocking client. ``with Client() as c: r = c.execute("ls", kernel="build")``."""

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
        """See :class:`AsyncClient` (``inherit_env``: the local kernels it creates start
        with this process's environment; default: the server's)."""
        self._async = AsyncClient(
            config,
            runtime_dir=runtime_dir,
            autostart=autostart,
            on_event=on_event,
            remote=remote,
            inherit_env=inherit_env,
        )
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="stigmer-client-loop", daemon=True
        )
        self._thread.start()
        self._closed = False
        self._lean: BlockingTransport | None = None  # made by the first call it serves
        self._lean_lock = threading.Lock()  # held by the one call it serves at a time
        self._lean_owner: int | None = None  # the thread of that call
        try:
            self._call(self._async.connect())
        except BaseException:
            self.close()
            raise

    @property
    def config(self) -> Config:
        return self._async.config

    @property
    def events(self) -> list[dict[str, Any]]:
        return list(self._async.events)

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        return future.result()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            lean = self._lean
            if lean is not None:
                lean.abort()  # a call it serves now fails, as a pending asyncio one does
                if self._lean_owner == threading.get_ident():
                    pass  # called by that call's callback: it closes the socket as it ends
                elif self._lean_lock.acquire(timeout=10):
                    try:
                        lean.close()  # its detach_request; the asyncio socket says its own
                    finally:
                        self._lean_lock.release()
            self._call(self._async.aclose())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=5)
            self._loop.close()

    def execute(
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
        sandbox_image: str | None = None,
        requirements: str | None = None,
        workspace: str | None = None,
        on_output: RawOutputCallback | None = None,
        env: Mapping[str, str] | None = None,
        kernel_env: Mapping[str, str] | None = None,
        sticky: bool | None = None,
        workdir: str | None = None,
        background: bool = False,
        pool: str | None = None,
    ) -> ExecResult:
        """See :meth:`AsyncClient.execute`."""
        inline = _inline(stdin)
        servable = self._async.remote is None and (stdin is None or inline is not None)
        if servable and self._lean_lock.acquire(blocking=False):  # else: the asyncio way
            self._lean_owner = threading.get_ident()
            try:
                content, keep = execute_content(
                    self._async.config,
                    code,
                    remote=False,
                    inherit_env=self._async.inherit_env,
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
                if inline is not None:
                    content["stdin"] = inline
                reply, call = self._lean_transport().request(
                    MsgType.EXECUTE_REQUEST.value,
                    content,
                    on_stdout,
                    on_stderr,
                    on_output=on_output,
                    keep=keep,
                )
                return exec_result(content, reply, call)
            finally:
                self._lean_owner = None
                if self._closed and self._lean is not None:
                    self._lean.close()  # close() came from this thread (a callback)
                self._lean_lock.release()
        return self._call(
            self._async.execute(
                code,
                pool=pool,
                workdir=workdir,
                background=background,
                env=env,
                kernel_env=kernel_env,
                sticky=sticky,
                sandbox_image=sandbox_image,
                requirements=requirements,
                workspace=workspace,
                kernel=kernel,
                mode=mode,
                timeout=timeout,
                cwd=cwd,
                stdin=stdin,
                on_stdout=on_stdout,
                on_stderr=on_stderr,
                output_limit=output_limit,
                ttl=ttl,
                on_output=on_output,
            )
        )

    def _lean_transport(self) -> BlockingTransport:
        """The lean socket (with the lock held): the asyncio socket's identity, tagged."""
        if self._closed:
            raise StigmerError("this client is closed")
        if self._lean is None:
            transport = self._async._transport
            assert transport.address is not None  # connected in __init__
            self._lean = BlockingTransport(
                transport.address,
                transport.identity + CLIENT_SOCKET_SEP + b"b",
                self._async._kernel_event,
            )
        return self._lean

    def start(
        self,
        code: str,
        *,
        kernel: str = "default",
        mode: str | None = None,
        env: Mapping[str, str] | None = None,
        workdir: str | None = None,
        **options: Any,
    ) -> Process:
        """See :meth:`AsyncClient.start`."""
        handle = self._call(
            self._async.start(code, kernel=kernel, mode=mode, env=env, workdir=workdir, **options)
        )
        return Process(handle, self._call)

    def process(self, kernel: str, process_id: str, side: str | None = None) -> Process:
        """A handle on a process started earlier, by any client (see :meth:`start`)."""
        return Process(self._async.process(kernel, process_id, side), self._call)

    def processes(self, kernel: str = "default", side: str | None = None) -> list[ProcessInfo]:
        """See :meth:`AsyncClient.processes`."""
        return self._call(self._async.processes(kernel, side))

    def interrupt(self, kernel: str = "default") -> dict[str, Any]:
        return self._call(self._async.interrupt(kernel))

    def list_kernels(self) -> list[dict[str, Any]]:
        return self._call(self._async.list_kernels())

    def kernel_info(self, kernel: str = "default") -> dict[str, Any]:
        return self._call(self._async.kernel_info(kernel))

    def shutdown_kernel(self, kernel: str) -> None:
        self._call(self._async.shutdown_kernel(kernel))

    def restart_kernel(
        self,
        kernel: str,
        *,
        cwd: str | None = None,
        sandbox_image: str | None = None,
        requirements: str | None = None,
    ) -> dict[str, Any]:
        """See :meth:`AsyncClient.restart_kernel`."""
        result: dict[str, Any] = self._call(
            self._async.restart_kernel(
                kernel, cwd=cwd, sandbox_image=sandbox_image, requirements=requirements
            )
        )
        return result

    def connect_jupyter(
        self,
        kernel: str = "default",
        *,
        mode: str | None = None,
        cwd: str | None = None,
        connection: dict[str, Any] | None = None,
        kernel_env: Mapping[str, str] | None = None,
    ) -> dict[str, Any]:
        """See :meth:`AsyncClient.connect_jupyter`."""
        return self._call(
            self._async.connect_jupyter(
                kernel, mode=mode, cwd=cwd, connection=connection, kernel_env=kernel_env
            )
        )

    def server_info(self) -> dict[str, Any]:
        return self._call(self._async.server_info())

    def shutdown_server(self) -> None:
        self._call(self._async.shutdown_server())

    # -- files (see :class:`~._files.FileMethods`) ------------------------------------------------
    def stat(self, kernel: str, path: str, *, mode: str | None = None) -> FileInfo:
        return self._call(self._async.stat(kernel, path, mode=mode))

    def list_dir(self, kernel: str, path: str = ".", *, mode: str | None = None) -> list[FileInfo]:
        return self._call(self._async.list_dir(kernel, path, mode=mode))

    def make_dir(
        self,
        kernel: str,
        path: str,
        parents: bool = False,
        *,
        permissions: int | None = None,
        mode: str | None = None,
    ) -> str:
        return self._call(
            self._async.make_dir(kernel, path, parents, permissions=permissions, mode=mode)
        )

    def remove(
        self, kernel: str, path: str, recursive: bool = False, *, mode: str | None = None
    ) -> None:
        self._call(self._async.remove(kernel, path, recursive, mode=mode))

    def sha256(self, kernel: str, path: str, *, mode: str | None = None) -> str:
        return self._call(self._async.sha256(kernel, path, mode=mode))

    def read_file(self, kernel: str, path: str, *, mode: str | None = None) -> bytes:
        return self._call(self._async.read_file(kernel, path, mode=mode))

    def write_file(
        self,
        kernel: str,
        path: str,
        data: bytes | str,
        *,
        permissions: int | None = None,
        mode: str | None = None,
    ) -> str:
        return self._call(
            self._async.write_file(kernel, path, data, permissions=permissions, mode=mode)
        )

    def upload(
        self,
        kernel: str,
        local_path: str | os.PathLike[str],
        remote_path: str,
        *,
        mode: str | None = None,
        progress: Progress | None = None,
    ) -> Transfer:
        """See :meth:`AsyncClient.upload` (``progress`` runs on the client's loop thread)."""
        return self._call(
            self._async.upload(kernel, local_path, remote_path, mode=mode, progress=progress)
        )

    def download(
        self,
        kernel: str,
        remote_path: str,
        local_path: str | os.PathLike[str],
        *,
        mode: str | None = None,
        progress: Progress | None = None,
    ) -> Transfer:
        """See :meth:`AsyncClient.download`."""
        return self._call(
            self._async.download(kernel, remote_path, local_path, mode=mode, progress=progress)
        )

    def upload_stream(
        self,
        kernel: str,
        stream: BinaryIO,
        remote_path: str,
        *,
        permissions: int | None = None,
        mode: str | None = None,
        progress: Progress | None = None,
    ) -> Transfer:
        return self._call(
            self._async.upload_stream(
                kernel, stream, remote_path, permissions=permissions, mode=mode, progress=progress
            )
        )

    def download_stream(
        self,
        kernel: str,
        remote_path: str,
        stream: BinaryIO,
        *,
        mode: str | None = None,
        progress: Progress | None = None,
    ) -> Transfer:
        return self._call(
            self._async.download_stream(kernel, remote_path, stream, mode=mode, progress=progress)
        )


def _inline(stdin: StdinSource | None) -> bytes | None:
    """``stdin`` as the bytes an execute_request carries, if it is small bytes or str."""
    if isinstance(stdin, str):
        stdin = stdin.encode("utf-8", "surrogateescape")
    if isinstance(stdin, (bytes, bytearray, memoryview)) and (
        memoryview(stdin).nbytes <= STDIN_INLINE_MAX
    ):
        return bytes(stdin)
    return None
