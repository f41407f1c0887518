"""The process a kernelspec starts: ``python -m stigmer_kernel.jupyter.launcher -f FILE``.

Jupyter picks the ports and key and writes them to a connection file; this process asks the
stigmer server (starting one in the background if none runs) to host a kernel on exactly that
connection, then stays alive as the kernel's stand-in for Jupyter's process bookkeeping:

* it exits when the kernel is shut down, restarted or expired, or when the server goes away;
* SIGINT interrupts the kernel's running command (for ``interrupt_mode: signal``);
* SIGTERM shuts the kernel down and exits.

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
from typing import Any

from ..client import AsyncClient
from ..config import load_config
from ..errors import StigmerError
from ..runtime import RuntimeDir

#: Events after which the kernel this process stands for is gone.
_ENDING_EVENTS = {"shutdown", "expired", "restarted"}


def kernel_name_for(connection: dict[str, Any]) -> str:
    digest = hashlib.sha256(str(connection.get("key", "")).encode()).hexdigest()[:12]
    return f"jupyter-{digest}"


async def run(connection_file: str, mode: str, name: str | None) -> int:
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
    async with AsyncClient(config, on_event=on_event) as client:
        reply = await client.connect_jupyter(kernel, mode=mode, connection=connection)
        attached = True
        print(
            f"stigmer kernel {kernel!r} ({reply['kernel_id']}) hosted by the server of "
            f"{config.runtime_dir}",
            file=sys.stderr,
            flush=True,
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
        runtime = RuntimeDir(config.runtime_dir)
        while not ended.is_set():
            try:
                await asyncio.wait_for(ended.wait(), timeout=1.0)
            except asyncio.TimeoutError:
                if not runtime.server_running():
                    print("stigmer server stopped; kernel gone", file=sys.stderr)
                    return 1
    if reason:
        print(f"stigmer kernel {kernel!r} {reason[0]}", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stigmer_kernel.jupyter.launcher")
    parser.add_argument("-f", "--connection-file", required=True)
    parser.add_argument("--mode", default="local", choices=["local", "sandbox", "auto"])
    parser.add_argument("--kernel", help="stigmer kernel name (default: from the key)")
    args = parser.parse_args(argv)
    try:
        return asyncio.run(run(args.connection_file, args.mode, args.kernel))
    except (StigmerError, OSError, ValueError) as exc:
        print(f"stigmer: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
