"""The process a kernelspec starts: ``python -m stigmer_kernel.jupyter.launcher -f FILE``.

Jupyter picks the ports and key and writes them to a connection file; this process asks the
stigmer server (starting one in the background if none runs) to host a kernel on exactly that
connection, then stays alive as the kernel's stand-in for Jupyter's process bookkeeping:

* it exits when the kernel is shut down, restarted or expired, or when the server goes away;
* SIGINT interrupts the kernel's running command (for ``interrupt_mode: signal``);
* SIGTERM shuts the kernel down and exits;
* when the program that started it (``JPY_PARENT_PID``, as ipykernel watches it) is gone,
  killed included, it shuts the kernel down within a second or two, unless another client
  (``jupyter console --existing``, a native client) is attached: then only it goes.

A kernel it creates starts with its environment (what Jupyter gave it: the program's, the
``env`` of ``start_kernel`` and of the kernelspec, ``JPY_PARENT_PID``), minus stigmer's own
variables (stigmer_kernel/environment.py); a sandbox kernel gets none of it.

The kernel's name is derived from the connection key, so a kernel restarted by Jupyter (same
connection file) is the same stigmer kernel.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import signal
import sys
import time
from typing import Any

from ..client import AsyncClient
from ..config import load_config
from ..environment import client_environment
from ..errors import StigmerError
from ..runtime import RuntimeDir

#: Events after which the kernel this process stands for is gone.
_ENDING_EVENTS = {"shutdown", "expired", "restarted"}
#: Set by jupyter_client for the kernels it starts: the pid of the program to outlive not.
PARENT_PID_VAR = "JPY_PARENT_PID"
#: Seconds a launcher whose parent died waits for the server to see that program's own
#: connections close before it counts the other clients of the kernel.
_RELEASE_WAIT = 2.0


def kernel_name_for(connection: dict[str, Any]) -> str:
    digest = hashlib.sha256(str(connection.get("key", "")).encode()).hexdigest()[:12]
    return f"jupyter-{digest}"


class ParentWatch:
    """Says when the program that started this launcher is gone: a pidfd on
    ``JPY_PARENT_PID`` (readable once it exits), else a change of our parent pid."""

    def __init__(self, environ: dict[str, str]) -> None:
        self.gone = asyncio.Event()
        self.pid: int | None = None
        self._ppid = os.getppid()
        self._pidfd = -1
        text = environ.get(PARENT_PID_VAR, "")
        if text.isdigit() and int(text) > 1:  # pid 1 never goes, it is only given to orphans
            self.pid = int(text)
            try:
                self._pidfd = os.pidfd_open(self.pid)
            except ProcessLookupError:
                self.gone.set()  # gone before we could look
            except (OSError, AttributeError):
                pass  # no pidfds here (Linux < 5.3): our parent pid is watched instead

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._pidfd >= 0:
            loop.add_reader(self._pidfd, self.gone.set)

    def check(self) -> None:
        """The fallback without a pidfd, called every second."""
        if self.pid is not None and self._pidfd < 0 and os.getppid() != self._ppid:
            self.gone.set()

    def close(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._pidfd >= 0:
            loop.remove_reader(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = -1


async def release(client: AsyncClient, kernel: str) -> str:
    """This launcher's parent is gone: shut ``kernel`` down unless another client is attached
    (the dead program's own connections count until the server has seen them close)."""
    deadline = time.monotonic() + _RELEASE_WAIT
    while True:
        info = await client.kernel_info(kernel)
        others = int(info.get("clients") or 0) - 1  # this launcher is one of them
        if others <= 0:
            await client.shutdown_kernel(kernel)
            return "shut down: the program that started it is gone"
        if time.monotonic() >= deadline:
            return (
                f"left running: the program that started it is gone, but {others} other "
                f"client{'s' if others > 1 else ''} attached"
            )
        await asyncio.sleep(0.1)


def _say(text: str) -> None:
    """A line on stderr, which may be a pipe nobody reads any more (the parent is gone)."""
    with contextlib.suppress(OSError, ValueError):
        print(text, file=sys.stderr, flush=True)


async def run(
    connection_file: str,
    mode: str,
    name: str | None,
    environ: dict[str, str] | None = None,
) -> int:
    environ = dict(os.environ) if environ is None else environ
    with open(connection_file, encoding="utf-8") as handle:
        connection = json.load(handle)
    if connection.get("transport") == "ipc":
        # Jupyter's ipc paths are relative to the kernel's cwd (ours), not the server's.
        connection["ip"] = os.path.abspath(str(connection.get("ip") or "kernel-ipc"))
    kernel = name or kernel_name_for(connection)
    ended = asyncio.Event()
    attached = False  # notices about the kernel's past arrive with the connect reply: not ours
    reason: list[str] = []

    def on_event(event: dict[str, Any]) -> None:
        if not attached:
            return
        if event.get("kernel") != kernel or event.get("event") not in _ENDING_EVENTS:
            return
        # A dead agent replaced on the next request is the same kernel carrying on; a restart a
        # client asked for (Jupyter's restart) ends this stand-in, as Jupyter expects.
        if event.get("event") != "restarted" or event.get("requested"):
            reason.append(f"{event.get('event')}: {event.get('reason')}")
            ended.set()

    config = load_config({"execution_mode": mode})
    parent = ParentWatch(environ)
    async with AsyncClient(config, on_event=on_event) as client:
        reply = await client.connect_jupyter(
            kernel,
            mode=mode,
            connection=connection,
            kernel_env=client_environment(environ),
        )
        attached = True
        _say(
            f"stigmer kernel {kernel!r} ({reply['kernel_id']}) hosted by the server of "
            f"{config.runtime_dir}"
        )
        loop = asyncio.get_running_loop()
        tasks: set[asyncio.Task[Any]] = set()

        def spawn(coro: Any) -> None:
            task = loop.create_task(coro)
            tasks.add(task)
            task.add_done_callback(tasks.discard)

        async def shutdown() -> None:
            with contextlib.suppress(StigmerError):
                await client.shutdown_kernel(kernel)
            ended.set()

        loop.add_signal_handler(signal.SIGINT, lambda: spawn(client.interrupt(kernel)))
        loop.add_signal_handler(signal.SIGTERM, lambda: spawn(shutdown()))
        parent.start(loop)
        runtime = RuntimeDir(config.runtime_dir)
        try:
            while not ended.is_set():
                ending = {loop.create_task(ended.wait()), loop.create_task(parent.gone.wait())}
                done, waiting = await asyncio.wait(
                    ending, timeout=1.0, return_when=asyncio.FIRST_COMPLETED
                )
                for task in waiting:
                    task.cancel()
                parent.check()
                if parent.gone.is_set() and not ended.is_set():
                    with contextlib.suppress(StigmerError):
                        reason.append(await release(client, kernel))
                    break
                if not done and not runtime.server_running():
                    _say("stigmer server stopped; kernel gone")
                    return 1
        finally:
            parent.close(loop)
    if reason:
        _say(f"stigmer kernel {kernel!r} {reason[0]}")
    return 0


def main(argv: list[str] | None = None, environ: dict[str, str] | None = None) -> int:
    """``environ``: the environment Jupyter started this process with (default: ours now)."""
    parser = argparse.ArgumentParser(prog="python -m stigmer_kernel.jupyter.launcher")
    parser.add_argument("-f", "--connection-file", required=True)
    parser.add_argument("--mode", default="local", choices=["local", "sandbox", "auto"])
    parser.add_argument("--kernel", help="stigmer kernel name (default: from the key)")
    args = parser.parse_args(argv)
    try:
        return asyncio.run(run(args.connection_file, args.mode, args.kernel, environ))
    except (StigmerError, OSError, ValueError) as exc:
        _say(f"stigmer: error: {exc}")
        return 1


if __name__ == "__main__":
    started_with = dict(os.environ)  # the kernel's, before we add ours
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main(environ=started_with))
