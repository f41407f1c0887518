"""``stigmer kernels list|connection-file|shutdown|restart|interrupt|info``: a server's kernels.

Each works on a ``--remote`` server too, except ``connection-file`` (Jupyter channels listen on
the server's loopback). ``list`` prints a table whose cells never carry control characters.
"""

from __future__ import annotations

import argparse
import json
import os
import re
from typing import Any

from ..errors import RequestError, ServerNotRunning, StigmerError
from ..protocol.enums import ErrorName
from ..runtime import RuntimeDir
from .common import UsageError, load, read_requirements, remote_server


def add_parser(sub: Any) -> None:
    kernels = sub.add_parser("kernels", help="list, inspect, interrupt or shut down kernels")
    ksub = kernels.add_subparsers(dest="action", metavar="ACTION", required=True)
    klist = ksub.add_parser("list", help="list kernels")
    klist.add_argument("--json", action="store_true", help="print a JSON list")
    conn = ksub.add_parser(
        "connection-file",
        help="print the path of a Jupyter connection file for a kernel (created if needed)",
    )
    conn.add_argument("name", help="kernel name")
    conn.add_argument(
        "--mode",
        choices=["local", "sandbox", "auto", "remote"],
        help="mode of a kernel this creates (default: as for `stigmer run`)",
    )
    conn.add_argument(
        "--transport",
        choices=["ipc", "tcp"],
        default="ipc",
        help="ipc (default): sockets only you can reach; tcp: loopback ports, for a Jupyter "
        "client that cannot use ipc (every local user can reach them, and that kernel's iopub "
        "then shows no native client's commands)",
    )
    shutdown = ksub.add_parser("shutdown", help="end a kernel, or every kernel with --all")
    shutdown.add_argument("name", nargs="?", help="kernel name")
    shutdown.add_argument("--all", action="store_true", help="end every kernel of the server")
    for name, text in (
        ("interrupt", "interrupt its command"),
        ("info", "show one kernel as JSON"),
    ):
        one = ksub.add_parser(name, help=text)
        one.add_argument("name", help="kernel name")

    restart = ksub.add_parser(
        "restart",
        help="give a kernel a fresh session with its options (those given here replace them)",
        description="A fresh session of kernel NAME: variables, functions and jobs are gone, "
        "its mode stays. It starts in the kernel's current directory and with its sandbox "
        "image and requirements, unless given here (the new ones are kept for later restarts).",
    )
    restart.add_argument("name", help="kernel name")
    restart.add_argument("--cwd", help="start in DIR (a sandbox's workspace follows it)")
    restart.add_argument(
        "--sandbox-image", metavar="IMAGE", help="image of a sandbox or auto kernel's sandbox"
    )
    restart.add_argument(
        "--requirements",
        metavar="FILE",
        help="pip requirements baked into its sandbox (an empty file: none)",
    )


def run(args: argparse.Namespace) -> int:
    from ..client import Client

    config = load(args)
    remote = remote_server(args)
    if args.action == "connection-file":
        if remote is not None:
            raise StigmerError(
                "Jupyter channels listen on the server's loopback only: run `stigmer kernels "
                "connection-file` on the server's host"
            )
        connection = {"transport": "tcp"} if args.transport == "tcp" else None
        with Client(config, inherit_env=True) as client:
            reply = client.connect_jupyter(args.name, mode=args.mode, connection=connection)
        print(reply["connection_file"])
        return 0
    runtime = RuntimeDir(config.runtime_dir)
    if remote is None and not runtime.server_running():
        if args.action == "list":
            print("[]" if args.json else f"no stigmer server runs in {runtime.path}")
            return 0
        raise ServerNotRunning(
            f"no stigmer server runs in {runtime.path} — start one with `stigmer server start`"
        )
    with Client(config, autostart=False, remote=remote) as client:
        if args.action == "list":
            kernels = client.list_kernels()
            if args.json:
                print(json.dumps(kernels, indent=2))
            else:
                _print_table(kernels)
        elif args.action == "shutdown":
            if args.all == bool(args.name):
                raise UsageError("give a kernel NAME or --all (not both)")
            names = [k["name"] for k in client.list_kernels()] if args.all else [args.name]
            for name in names:
                try:
                    client.shutdown_kernel(name)
                except RequestError as exc:
                    if not args.all or exc.ename != ErrorName.NO_SUCH_KERNEL:
                        raise
                    continue  # ended meanwhile (an auto kernel's side went with it)
                print(f"kernel {name!r} shut down")
            if args.all and not names:
                print("no kernels")
        elif args.action == "restart":
            requirements = read_requirements(args.requirements) if args.requirements else None
            reply = client.restart_kernel(
                args.name,
                cwd=os.path.abspath(args.cwd) if args.cwd else None,
                sandbox_image=args.sandbox_image,
                requirements=requirements,
            )
            print(f"kernel {args.name!r} {reply.get('reason', 'restarted')}")
        elif args.action == "interrupt":
            reply = client.interrupt(args.name)
            print(
                f"kernel {args.name!r} interrupted"
                if reply.get("was_busy")
                else f"kernel {args.name!r} was idle"
            )
        elif args.action == "info":
            info = client.kernel_info(args.name)
            info.pop("status", None)
            print(json.dumps(info, indent=2))
    return 0


def _print_table(kernels: list[dict[str, Any]]) -> None:
    if not kernels:
        print("no kernels")
        return
    headers = ["NAME", "MODE", "STATE", "IDLE", "TTL", "CLIENTS", "PID", "CWD"]
    rows = [
        [
            str(k["name"]),
            str(k["mode"]),
            str(k["state"]),
            f"{k['idle_seconds']:.0f}s",
            f"{k['ttl']:g}s",
            str(k["clients"]),
            str(k.get("pid") or "-"),
            str(k.get("cwd", "")),
        ]
        for k in kernels
    ]
    rows = [[_printable(cell) for cell in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    for row in [headers, *rows]:
        cells = (cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        print("  ".join(cells).rstrip())


#: Control characters (C0, DEL, C1): a name or cwd holding them must not drive the terminal.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def _printable(text: str) -> str:
    """``text`` with control characters shown as escapes (``\x1b``, ``\n``), never sent raw."""
    return _CONTROL.sub(lambda m: repr(m.group())[1:-1], text)
