"""``stigmer start``, ``ps``, ``kill`` and ``wait``: background processes of a kernel.

``start`` prints the new process's id alone on stdout (``id=$(stigmer start -k web -- npm run
dev)``); for an auto kernel the id names the side it runs on (``p1@sandbox``), so later
commands reach it there. ``logs`` is in logs.py. Each command is an ``add_parser``/``run``
pair, as the other subcommand modules are (a class per command, registered in main.py).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import Any

from ..protocol.constants import EXIT_TIMEOUT
from .common import UsageError, load, remote_server
from .run import _command_text, _env_options


def split_ref(ref: str) -> tuple[str, str | None]:
    """``p1`` or ``p1@sandbox`` (auto kernels): the process id and its side."""
    pid, _, side = ref.partition("@")
    if not pid or side not in ("", "local", "sandbox"):
        raise UsageError(f"{ref!r} is not a process id (p1, or p1@local / p1@sandbox)")
    return pid, side or None


def client_for(args: argparse.Namespace, **kwargs: Any) -> Any:
    from ..client import AsyncClient

    remote = remote_server(args)
    return AsyncClient(load(args), remote=remote, **kwargs)


class Start:
    def add_parser(self, sub: Any) -> None:
        parser = sub.add_parser(
            "start",
            help="start a background process in a kernel; print its id",
            description="Start a command as a background process of a kernel (created on "
            "first use), in the kernel's cwd and environment, and print its id. It runs until "
            "it exits or its kernel ends; the kernel's command timeout never ends it.",
        )
        parser.add_argument("--kernel", "-k", default="default", help="kernel name")
        parser.add_argument(
            "--mode",
            choices=["local", "sandbox", "auto", "remote"],
            help="the kernel's mode (a new kernel is created in it)",
        )
        parser.add_argument(
            "--env",
            "-e",
            action="append",
            default=[],
            metavar="NAME=VALUE",
            help="a variable for this process only (repeatable)",
        )
        parser.add_argument("--workdir", "-w", metavar="DIR", help="its working directory")
        parser.add_argument(
            "argv",
            nargs=argparse.REMAINDER,
            metavar="-- COMMAND...",
            help="the command line, run by the kernel's shell",
        )

    def run(self, args: argparse.Namespace) -> int:
        code = _command_text(args.argv)
        env = _env_options(args.env)
        return asyncio.run(self._start(args, code, env))

    async def _start(self, args: argparse.Namespace, code: str, env: dict[str, str]) -> int:
        async with client_for(args, inherit_env=remote_server(args) is None) as client:
            proc = await client.start(
                code,
                kernel=args.kernel,
                mode=args.mode,
                env=env,
                workdir=args.workdir,
            )
        print(f"{proc.id}@{proc.side}" if proc.side else proc.id)
        return 0


class Ps:
    def add_parser(self, sub: Any) -> None:
        parser = sub.add_parser(
            "ps",
            help="list background processes",
            description="List the background processes of a kernel (-k), or of every kernel.",
        )
        parser.add_argument("--kernel", "-k", help="kernel name (default: every kernel)")
        parser.add_argument("--json", action="store_true", help="one JSON list")

    def run(self, args: argparse.Namespace) -> int:
        rows = asyncio.run(self._rows(args))
        if args.json:
            print(json.dumps(rows))
            return 0
        now = time.time()
        table = [("KERNEL", "ID", "PID", "STATE", "EXIT", "AGE", "STDOUT", "STDERR", "COMMAND")]
        for row in rows:
            exit_text = row["signal"] or ("" if row["exit_code"] is None else str(row["exit_code"]))
            table.append(
                (
                    row["kernel"],
                    row["ref"],
                    str(row["pid"]),
                    row["state"],
                    exit_text,
                    _age(now - row["started"]),
                    str(row["stdout"]["end"]),
                    str(row["stderr"]["end"]),
                    row["command"].replace("\n", " ")[:60],
                )
            )
        widths = [max(len(line[i]) for line in table) for i in range(len(table[0]) - 1)]
        for line in table:
            print("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=False)), end="")
            print("  " + line[-1])
        return 0

    async def _rows(self, args: argparse.Namespace) -> list[dict[str, Any]]:
        from ..protocol import MsgType

        rows: list[dict[str, Any]] = []
        async with client_for(args) as client:
            targets: list[tuple[str, str | None]] = []
            if args.kernel:
                info = next(
                    (k for k in await client.list_kernels() if k["name"] == args.kernel), None
                )
                sides = sorted((info or {}).get("sides", {})) if info else []
                targets = [(args.kernel, side) for side in sides] or [(args.kernel, None)]
            else:
                for k in await client.list_kernels():
                    if k["state"] in ("dead", "starting") or k["mode"] == "auto":
                        continue
                    parent = k.get("auto_parent")
                    targets.append((parent, k["mode"]) if parent else (k["name"], None))
            for kernel, side in targets:
                content: dict[str, Any] = {"op": "list"}
                if side:
                    content["side"] = side
                reply = await client._agent_request(MsgType.PROCESS_REQUEST, kernel, content)
                for entry in reply.get("processes", []):
                    ref = f"{entry['id']}@{side}" if side else entry["id"]
                    rows.append({"kernel": kernel, "ref": ref, "side": side, **entry})
        return rows


class Kill:
    def add_parser(self, sub: Any) -> None:
        parser = sub.add_parser(
            "kill",
            help="send a signal to a background process",
            description="Send a signal (default TERM) to a background process's process group.",
        )
        parser.add_argument("--kernel", "-k", default="default", help="kernel name")
        parser.add_argument("--signal", "-s", default="TERM", help="TERM, KILL, INT, 9...")
        parser.add_argument("id", help="the process id (from stigmer start or stigmer ps)")

    def run(self, args: argparse.Namespace) -> int:
        pid, side = split_ref(args.id)

        async def kill() -> None:
            async with client_for(args) as client:
                await client.process(args.kernel, pid, side).signal(args.signal)

        asyncio.run(kill())
        return 0


class Wait:
    def add_parser(self, sub: Any) -> None:
        parser = sub.add_parser(
            "wait",
            help="wait for a background process to exit; exit with its exit code",
            description="Wait for a background process to exit and exit with its exit code "
            "(128 + N if signal N ended it); 124 if it still runs after --timeout.",
        )
        parser.add_argument("--kernel", "-k", default="default", help="kernel name")
        parser.add_argument("--timeout", "-t", type=float, help="seconds to wait at most")
        parser.add_argument("id", help="the process id")

    def run(self, args: argparse.Namespace) -> int:
        pid, side = split_ref(args.id)

        async def wait() -> int:
            async with client_for(args) as client:
                code: int = await client.process(args.kernel, pid, side).wait(args.timeout)
                return code

        try:
            return asyncio.run(wait())
        except TimeoutError:
            print(f"stigmer: process {args.id} still runs after {args.timeout:g}s", file=sys.stderr)
            return EXIT_TIMEOUT


def _age(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    return f"{seconds // 3600}h"


START, PS, KILL, WAIT = Start(), Ps(), Kill(), Wait()

__all__ = ["KILL", "PS", "START", "WAIT", "client_for", "split_ref"]
