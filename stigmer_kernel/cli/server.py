"""``stigmer server start|stop|status|logs``: the broker of this host.

``start`` runs it in the background (``--foreground``: in this process, logging to the
terminal); ``stop`` asks it to end, and signals it if it does not answer; ``status`` works on a
``--remote`` server too and exits 3 when none runs; ``logs`` prints (``--follow``: tails)
RUNTIME_DIR/server.log.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from typing import Any

from ..errors import StigmerError
from ..runtime import RuntimeDir
from .common import EXIT_NOT_RUNNING, fail, load, remote_server, write_all


def add_parser(sub: Any) -> None:
    server = sub.add_parser("server", help="start, stop or inspect the broker")
    ssub = server.add_subparsers(dest="action", metavar="ACTION", required=True)
    start = ssub.add_parser("start", help="start the server (in the background by default)")
    start.add_argument("--foreground", action="store_true", help="run in this process")
    start.add_argument(
        "--execution-mode",
        choices=["local", "sandbox", "auto"],
        help="mode of requests that name none (STIGMER_EXECUTION_MODE; default local)",
    )
    start.add_argument("--kernel-ttl", type=float, help="idle seconds before a kernel expires")
    ssub.add_parser("stop", help="stop the server and every kernel it runs")
    status = ssub.add_parser("status", help="is a server running? (exit 3 if not)")
    status.add_argument("--json", action="store_true", help="print one JSON object")
    logs = ssub.add_parser("logs", help="print the log of a server started in the background")
    logs.add_argument(
        "--follow", "-f", action="store_true", help="keep printing what it logs (Ctrl-C ends)"
    )
    logs.add_argument(
        "--lines", "-n", type=int, metavar="N", help="only the last N lines (default: all)"
    )


def run(args: argparse.Namespace) -> int:
    from ..client import Client
    from ..client.discovery import find_server, start_background_server

    if args.action == "start":
        config = load(args, execution_mode=args.execution_mode, kernel_ttl=args.kernel_ttl)
    else:
        config = load(args)
    runtime = RuntimeDir(config.runtime_dir)
    if args.action != "status":
        if args.remote:  # the flag, not STIGMER_REMOTE: that one names where clients go
            raise StigmerError(
                f"`stigmer server {args.action}` works on this host only; run it on the "
                "server's host"
            )
        remote = None
    else:
        remote = remote_server(args)
    if args.action == "start":
        if args.foreground:
            from ..broker import run_foreground

            return run_foreground(config)
        if runtime.server_running():
            address = find_server(config, autostart=False)
            print(f"stigmer server already running (pid {address.pid}) in {runtime.path}")
            return 0
        address = start_background_server(config)
        print(f"stigmer server started (pid {address.pid}) in {runtime.path}")
        return 0
    if args.action == "stop":
        if not runtime.server_running():
            print(f"no stigmer server runs in {runtime.path}")
            return 0
        info = runtime.read_info() or {}
        try:
            with Client(config, autostart=False) as client:
                client.shutdown_server()
        except StigmerError:
            # Only the process that holds the directory's lock is signalled: the pid written in
            # server.json may have been reused by another program since.
            pid = runtime.lock_holder()
            if pid is not None and pid == info.get("pid"):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        while runtime.server_running():
            if time.monotonic() > deadline:
                return fail(f"the server (pid {info.get('pid')}) did not stop within 15s")
            time.sleep(0.05)
        print(f"stigmer server stopped (pid {info.get('pid')})")
        return 0
    if args.action == "status":
        if remote is None and not runtime.server_running():
            if args.json:
                print(json.dumps({"running": False, "runtime_dir": str(runtime.path)}))
            else:
                print(f"no stigmer server runs in {runtime.path}")
            return EXIT_NOT_RUNNING
        with Client(config, autostart=False, remote=remote) as client:
            info = client.server_info()
        info.pop("status", None)
        if args.json:
            print(json.dumps({"running": True, **info}))
        else:
            print(f"stigmer server {info['version']} running (pid {info['pid']})")
            print(f"  runtime dir:    {info['runtime_dir']}")
            print(f"  clients:        {info['client_endpoint']}")
            print(f"  mode:           {info['execution_mode']}")
            print(f"  kernels:        {info['kernels']}")
            print(f"  uptime:         {info['uptime']:.0f}s")
            if remote is None:
                print(f"  log:            {runtime.log_path}  (stigmer server logs)")
        return 0
    return _logs(runtime, args.follow, args.lines)  # logs


def _logs(runtime: RuntimeDir, follow: bool, lines: int | None) -> int:
    """Print server.log (the last ``lines``), then with ``follow`` what is appended to it."""
    path = runtime.log_path
    if not path.exists():
        raise StigmerError(
            f"no server log at {path}: a server started with `stigmer server start "
            "--foreground` logs to its terminal"
        )
    try:
        with open(path, "rb") as handle:
            _copy_log(handle, follow, lines)
    except BrokenPipeError:
        raise
    except OSError as exc:
        raise StigmerError(f"cannot read {path}: {exc.strerror}") from None
    return 0


def _copy_log(handle: Any, follow: bool, lines: int | None) -> None:
    out = sys.stdout.buffer
    data = handle.read()
    if lines is not None:
        data = b"".join(data.splitlines(keepends=True)[-lines:]) if lines > 0 else b""
    write_all(out, data)
    while follow:
        chunk = handle.read()
        if chunk:
            write_all(out, chunk)
        else:
            time.sleep(0.2)
