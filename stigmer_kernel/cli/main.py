"""The ``stigmer`` command. It parses arguments, builds a Config, and calls the client.

Exit codes: a command's own exit code for ``stigmer run``; 124 when it timed out; 130 when it
was interrupted; 141 when stdout was closed (the command is interrupted); 125 when stigmer itself
failed (one line on stderr says why); 2 for usage errors and options an existing kernel lacks.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import enum
import json
import os
import re
import shlex
import signal
import stat
import sys
import time
from pathlib import Path
from typing import Any, BinaryIO

from .._version import __version__
from ..config import (
    FIELDS,
    USER_KEYS,
    Config,
    default_config_path,
    load_config,
    parse_value,
    read_config_file,
    write_config_file,
)
from ..errors import CurveKeyError, KernelMismatch, RequestError, ServerNotRunning, StigmerError
from ..protocol.constants import (
    EXIT_INTERRUPTED,
    EXIT_STIGMER_ERROR,
    EXIT_TIMEOUT,
    ErrorName,
)
from ..runtime import RuntimeDir
from . import sandbox as sandbox_cli

EXIT_NOT_RUNNING = 3
EXIT_BROKEN_PIPE = 128 + 13  # what a shell reports for a program ended by SIGPIPE


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="stigmer",
        description="Run shell commands in warm kernels, locally or in sandboxes.",
    )
    parser.add_argument("--version", action="version", version=f"stigmer-kernel {__version__}")
    parser.add_argument("--runtime-dir", help="server runtime directory (STIGMER_RUNTIME_DIR)")
    far = parser.add_argument_group(
        "a server on another host (run, kernels and server status; TCP with CurveZMQ)"
    )
    far.add_argument(
        "--remote",
        metavar="tcp://HOST:PORT",
        help="the server's client_endpoint (STIGMER_REMOTE)",
    )
    far.add_argument(
        "--remote-key",
        metavar="FILE",
        help="a copy of that server's RUNTIME_DIR/key (STIGMER_REMOTE_KEY)",
    )
    far.add_argument(
        "--server-key",
        metavar="FILE",
        help="a copy of its RUNTIME_DIR/curve/server.key (STIGMER_REMOTE_SERVER_KEY)",
    )
    far.add_argument(
        "--curve-cert",
        metavar="FILE",
        help="your NAME.key_secret from `stigmer curve keygen`, whose NAME.key the server "
        "authorized (STIGMER_REMOTE_CURVE_CERT)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = sub.add_parser(
        "run",
        help="run a shell command and exit with its exit code",
        description="Run shell code on a warm kernel (created on first use) and stream its "
        "output; exit with the command's exit code.",
        epilog=_RUN_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run.add_argument(
        "--mode",
        choices=["local", "sandbox", "auto", "remote"],
        help="execution mode; an existing kernel must have it (default: an existing kernel's "
        "own mode; for a new one STIGMER_EXECUTION_MODE or the saved execution_mode if set, "
        "else the server's default, local unless started with --execution-mode); remote: a "
        "kernel whose agent joined from another host",
    )
    run.add_argument("--kernel", "-k", default="default", help="kernel name (default: default)")
    run.add_argument("--timeout", "-t", type=float, help="end the command after S seconds")
    run.add_argument(
        "--cwd",
        metavar="DIR",
        help="working directory of a kernel this creates (default: STIGMER_WORKDIR, else the "
        "current directory); an existing kernel must be there, else exit 2 (see `stigmer "
        "kernels restart`)",
    )
    run.add_argument(
        "--sandbox-image",
        metavar="IMAGE",
        help="image of a sandbox or auto kernel this creates; an existing kernel must have it",
    )
    run.add_argument(
        "--requirements",
        metavar="FILE",
        help="pip requirements baked into the sandbox of a sandbox or auto kernel this creates; "
        "an existing kernel must have been made with them",
    )
    run.add_argument(
        "--env",
        "-e",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="set a variable for this command only (repeatable); a kernel this creates also "
        "starts with this process's environment (local mode)",
    )
    given = run.add_mutually_exclusive_group()
    given.add_argument(
        "--stdin",
        action="store_true",
        default=None,
        help="pass this process's stdin to the command, even a terminal (default: passed when "
        "it is a file, a pipe or a socket, else the command reads /dev/null); it is streamed "
        "while the command runs, read only as fast as the command reads and no further once "
        "it ends",
    )
    given.add_argument(
        "--no-stdin",
        dest="stdin",
        action="store_false",
        help="the command reads /dev/null, whatever this process's stdin is",
    )
    run.add_argument(
        "--explain",
        action="store_true",
        help="print where auto mode would run the command, and why; do not run it",
    )
    run.add_argument(
        "--json", action="store_true", help="print one JSON result instead of streaming output"
    )
    run.add_argument(
        "argv",
        nargs=argparse.REMAINDER,
        metavar="-- COMMAND...",
        help="the command; one argument is shell code, several are quoted",
    )

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

    sandbox_cli.add_parser(sub)

    curve = sub.add_parser("curve", help="CurveZMQ keys for clients and agents on other hosts")
    cvsub = curve.add_subparsers(dest="action", metavar="ACTION", required=True)
    keygen = cvsub.add_parser("keygen", help="make a key pair NAME.key / NAME.key_secret")
    keygen.add_argument("name", help="base name of the two files")
    keygen.add_argument("--dir", default=".", help="where to write them (default: here)")
    authorize = cvsub.add_parser("authorize", help="let the holder of a public key connect")
    authorize.add_argument("public_key", help="a NAME.key file made by keygen")
    cvsub.add_parser("server-key", help="print the path of this server's public key")

    kspec = sub.add_parser(
        "kernelspec", help="install Jupyter kernelspecs (stigmer-local, -sandbox, -auto)"
    )
    kssub = kspec.add_subparsers(dest="action", metavar="ACTION", required=True)
    ksi = kssub.add_parser("install", help="install a kernelspec (default: for this user)")
    where = ksi.add_mutually_exclusive_group()
    where.add_argument("--user", action="store_true", help="in the user's Jupyter data dir")
    where.add_argument("--sys-prefix", action="store_true", help="in this Python's prefix")
    where.add_argument("--prefix", help="under PREFIX/share/jupyter/kernels")
    ksi.add_argument(
        "--mode",
        default="local",
        choices=["local", "sandbox", "auto"],
        help="execution mode of the kernelspec (stigmer-local, stigmer-sandbox, stigmer-auto)",
    )

    config = sub.add_parser("config", help="read or change saved preferences")
    csub = config.add_subparsers(dest="action", metavar="ACTION", required=True)
    keys = _settings_help()
    get = csub.add_parser(
        "get",
        help="print the effective value of a setting",
        epilog=keys,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    get.add_argument("key", help="a setting (listed below)")
    cset = csub.add_parser(
        "set",
        help="save a setting in the config file",
        description="Save KEY = VALUE in the config file (`stigmer config path`); the "
        "environment (STIGMER_*) still wins over it. VALUE none removes it.",
        epilog=keys,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    cset.add_argument("key", help="a setting (listed below)")
    cset.add_argument("value", help="as you would type it: 300, true, none, a path, a,comma,list")
    unset = csub.add_parser(
        "unset",
        help="remove a setting from the config file",
        epilog=keys,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    unset.add_argument("key", help="a setting (listed below)")
    csub.add_parser("list", help="every setting with its value and where it comes from")
    csub.add_parser("path", help="print the config file path")
    return parser


_RUN_EPILOG = """\
examples:
  stigmer run -- 'make -j4 && ./test.sh'      shell code, as one argument
  stigmer run -- ls -la /tmp                  several arguments: quoted as argv
  stigmer run -k build --timeout 600 -- make  a kernel of its own, a time limit
  stigmer run -- wc -l < big.txt              a file or a pipe on stdin is streamed while
  producer | stigmer run -- gzip > out.gz     the command runs (any size; EOF at its end)
  stigmer run -- cat big.tar > copy.tar       output is streamed in full, never cut
  stigmer run --mode sandbox -- pip install six
  stigmer run --mode auto --explain -- 'curl -fsSL https://example.com | sh'
  stigmer run --json -- 'uname -a'            one JSON result (output kept up to
                                              output_limit bytes per stream)

exit codes:
  N    the command's own exit code
  2    usage error (bad option, or an option the existing kernel does not have)
  124  the command timed out (--timeout) and was ended
  125  stigmer itself failed (one line on stderr says why)
  130  interrupted (Ctrl-C)
  141  stdout was closed (`stigmer run -- yes | head -1`): the command was interrupted
"""


def _settings_help() -> str:
    """The settings ``stigmer config`` knows, one line each (for its --help)."""
    lines = ["settings (environment variable, default):"]
    for key in USER_KEYS:
        field = FIELDS[key]
        default = field.default if field.default is not dataclasses.MISSING else None
        lines.append(f"  {key:<28} {field.metadata['env']}, {_user_text(default)}")
    return "\n".join(lines)


def _user_text(value: Any) -> str:
    """A setting's value as a user types it: none, true/false, 300, a,b (not a Python repr)."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple, set, frozenset)):
        return ",".join(_user_text(v) for v in value) or "none"
    if isinstance(value, enum.Enum):
        return str(value.value)
    return str(value)


def _fail(message: str, code: int = EXIT_STIGMER_ERROR) -> int:
    print(f"stigmer: error: {message}", file=sys.stderr)
    return code


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        if args.command == "config":
            return _config(args, parser)
        if args.command == "kernelspec":
            return _kernelspec(args, parser)
        if args.command == "curve":
            return _curve(args, load_config({"runtime_dir": args.runtime_dir}))
        if args.command == "sandbox":
            return sandbox_cli.run(args, load_config({"runtime_dir": args.runtime_dir}))
        overrides: dict[str, Any] = {"runtime_dir": args.runtime_dir}
        if args.command == "server" and args.action == "start":
            overrides["execution_mode"] = args.execution_mode
            overrides["kernel_ttl"] = args.kernel_ttl
        config = load_config(overrides)
        if args.command == "run":
            return _run(args, config)
        if args.command == "server":
            return _server(args, config, parser)
        if args.command == "kernels":
            return _kernels(args, config, parser)
    except (_UsageError, KernelMismatch) as exc:  # an option the kernel does not have: usage
        return _fail(str(exc), 2)
    except StigmerError as exc:
        return _fail(str(exc))
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # `stigmer kernels info X | head -3`: quiet, as a Unix tool is
        _silence(sys.stdout)
        return EXIT_BROKEN_PIPE
    parser.print_help()
    return 2


def _silence(stream: Any) -> None:
    """Point ``stream``'s descriptor at /dev/null, so nothing written or flushed to it later
    (at exit too) raises again once its reader is gone."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, stream.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass


_REMOTE_ENV = {
    "remote": "STIGMER_REMOTE",
    "remote_key": "STIGMER_REMOTE_KEY",
    "server_key": "STIGMER_REMOTE_SERVER_KEY",
    "curve_cert": "STIGMER_REMOTE_CURVE_CERT",
}


def _remote(args: argparse.Namespace) -> Any:
    """The :class:`RemoteServer` the global ``--remote`` options (or their STIGMER_REMOTE*
    variables) name, or None."""
    for attr, var in _REMOTE_ENV.items():
        if not getattr(args, attr):
            setattr(args, attr, os.environ.get(var) or None)
    if not args.remote:
        return None
    from ..client import RemoteServer

    missing = [
        flag
        for flag, value in (
            ("--remote-key", args.remote_key),
            ("--server-key", args.server_key),
            ("--curve-cert", args.curve_cert),
        )
        if not value
    ]
    if missing:
        raise StigmerError(f"--remote needs {', '.join(missing)} too")
    if not re.fullmatch(r"tcp://[^\s:/]+:\d{1,5}|tcp://\[[0-9A-Fa-f:.]+\]:\d{1,5}", args.remote):
        raise StigmerError(f"--remote {args.remote!r}: give the server's tcp://HOST:PORT")
    for path in (args.server_key, args.curve_cert):
        if not os.path.isfile(path):
            raise StigmerError(f"cannot read {path}: no such file")
    try:
        with open(args.remote_key, "rb") as handle:
            key = handle.read().strip()
    except OSError as exc:
        raise StigmerError(f"cannot read {args.remote_key}: {exc.strerror}") from None
    if not key:
        raise StigmerError(f"{args.remote_key} is empty: copy the server's RUNTIME_DIR/key")
    return RemoteServer(args.remote, key, args.server_key, args.curve_cert)


# -- run ------------------------------------------------------------------------------------------
class _UsageError(StigmerError):
    """A mistake in the command line: exit 2, like argparse's own errors."""


def _server_side_mode(config: Config, kernel: str, remote: Any = None) -> str:
    """The mode a request naming none would get: the existing kernel's, else the running
    server's default, else this configuration's (the server a request would start)."""
    from ..client import Client

    try:
        with Client(config, autostart=False, remote=remote) as client:
            for k in client.list_kernels():
                if k["name"] == kernel and k["mode"] != "remote":
                    return str(k["mode"])
            return str(client.server_info()["execution_mode"])
    except StigmerError:  # no server runs: one started for this request takes the saved mode
        return config.execution_mode.value


def _explain_auto(config: Config, kernel: str, remote: Any, code: str, requirements: bool) -> str:
    """Where auto mode would run ``code`` on ``kernel`` now: by the rules, or after the
    kernel's escalation (sticky) as the server holds it."""
    from ..auto import Escalation, explain
    from ..client import Client

    info: dict[str, Any] = {}
    sticky = config.auto_sticky
    try:
        with Client(config, autostart=False, remote=remote) as client:
            info = next((k for k in client.list_kernels() if k["name"] == kernel), {})
            if "auto_sticky" not in config.explicit:
                sticky = bool(client.server_info().get("auto_sticky", sticky))
    except StigmerError:
        pass  # no server runs: no kernel has escalated
    return explain(
        code,
        requirements,
        escalation=Escalation.from_dict(info.get("escalated")),
        sticky=sticky,
        workspace=info.get("workspace"),
    )


def _command_text(argv: list[str]) -> str:
    if argv and argv[0] == "--":
        argv = argv[1:]
    if not argv:
        raise _UsageError("no command given — usage: stigmer run [OPTIONS] -- COMMAND...")
    return argv[0] if len(argv) == 1 else shlex.join(argv)


def _env_options(items: list[str]) -> dict[str, str]:
    """``--env NAME=VALUE`` options as a map (a later one wins), checked as the client checks
    ``execute(env=...)``."""
    from ..environment import checked_env

    env: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise _UsageError(f"--env takes NAME=VALUE, not {item[:80]!r}")
        env[name] = value
    try:
        return checked_env(env, "--env")
    except RequestError as exc:
        raise _UsageError(str(exc)) from None


def _run(args: argparse.Namespace, config: Config) -> int:
    code = _command_text(args.argv)
    args.env_vars = _env_options(args.env)
    if args.timeout is not None and not args.timeout > 0:
        raise _UsageError(f"--timeout must be a positive number of seconds, not {args.timeout:g}")
    if not args.kernel:
        raise _UsageError("--kernel needs a name")
    named = args.mode or (
        config.execution_mode.value if "execution_mode" in config.explicit else None
    )
    for flag, value in (
        ("--requirements", args.requirements),
        ("--sandbox-image", args.sandbox_image),
    ):
        if value and named in ("local", "remote"):
            raise _UsageError(f"{flag} applies to sandbox and auto kernels, not to {named} mode")
    if args.explain:
        mode = named or _server_side_mode(config, args.kernel, _remote(args))
        if mode != "auto":
            print(f"{mode}: mode {mode} runs every command there (no auto decision)")
            return 0
        print(_explain_auto(config, args.kernel, _remote(args), code, bool(args.requirements)))
        return 0
    stdin = _stdin_source(args.stdin)
    if args.requirements:
        try:
            with open(args.requirements, encoding="utf-8") as handle:
                args.requirements_text = handle.read()
        except OSError as exc:
            raise StigmerError(f"cannot read {args.requirements}: {exc.strerror}") from None
    else:
        args.requirements_text = None
    return asyncio.run(_run_async(args, config, code, stdin))


def _stdin_source(wanted: bool | None) -> BinaryIO | None:
    """This process's stdin if the command gets it, else None (it reads /dev/null).

    ``--stdin`` (True) passes any stdin, ``--no-stdin`` (False) none; by default a regular file
    or a pipe (``cmd < file``, ``producer | stigmer run ...``) or a socket is passed, and a
    terminal or a device (/dev/null) is not. It is streamed while the command runs (see
    ``AsyncClient.execute``): read only as fast as the command reads, and no further once the
    command ends.
    """
    try:
        mode = os.fstat(sys.stdin.fileno()).st_mode
    except (AttributeError, ValueError, OSError):
        return None  # no stdin at all (closed descriptor)
    if wanted is None:
        wanted = stat.S_ISREG(mode) or stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)
    return sys.stdin.buffer if wanted else None


async def _run_async(
    args: argparse.Namespace, config: Config, code: str, stdin: BinaryIO | None
) -> int:
    from ..client import AsyncClient
    from .progress import ProgressDisplay

    out = {"stdout": sys.stdout.buffer, "stderr": sys.stderr.buffer}
    closed: set[str] = set()  # streams whose reader went away (`stigmer run -- yes | head -1`)
    stop_command: list[Any] = []  # set below: interrupts the command
    display = ProgressDisplay()  # a sandbox image's pull or build, until the command writes

    def write(name: str, data: bytes) -> None:
        if name in closed:
            return
        display.close()
        stream = out[name]
        try:
            stream.write(data)
            stream.flush()
        except BrokenPipeError:
            # Like a program killed by SIGPIPE: the command is interrupted (it would write on
            # forever otherwise), the CLI says nothing and exits 141.
            closed.add(name)
            _silence(stream)
            if stop_command:
                stop_command[0]()

    def on_event(event: dict[str, Any]) -> None:
        if event.get("event") == "progress" and event.get("kernel") == args.kernel:
            display.report(str(event.get("reason")))

    remote = _remote(args)
    # A kernel this creates starts with our environment (a remote server's, with its own).
    async with AsyncClient(
        config, on_event=on_event, remote=remote, inherit_env=remote is None
    ) as client:
        loop = asyncio.get_running_loop()
        interrupted = asyncio.Event()
        tasks: set[asyncio.Task[Any]] = set()

        def on_sigint() -> None:
            if interrupted.is_set():  # second Ctrl-C: stop waiting
                raise KeyboardInterrupt
            interrupted.set()
            task = loop.create_task(client.interrupt(args.kernel))
            tasks.add(task)
            task.add_done_callback(tasks.discard)

        def on_closed_pipe() -> None:
            if not interrupted.is_set():
                interrupted.set()
                task = loop.create_task(client.interrupt(args.kernel))
                tasks.add(task)
                task.add_done_callback(tasks.discard)

        stop_command.append(on_closed_pipe)
        loop.add_signal_handler(signal.SIGINT, on_sigint)
        try:
            result = await client.execute(
                code,
                kernel=args.kernel,
                mode=args.mode,
                timeout=args.timeout,
                cwd=os.path.abspath(args.cwd) if args.cwd else None,
                stdin=stdin,
                on_output=None if args.json else write,
                output_limit=None if args.json else 0,  # streamed in full, nothing kept here
                sandbox_image=args.sandbox_image,
                requirements=args.requirements_text,
                env=args.env_vars,
            )
        finally:
            display.close()
        loop.remove_signal_handler(signal.SIGINT)
    for event in result.events:
        print(
            f"stigmer: kernel {event.get('kernel')!r} {event.get('event')}: {event.get('reason')}",
            file=sys.stderr,
        )
    if args.json:
        payload = {
            "kernel": result.kernel,
            "mode": result.mode,
            "status": result.status,
            "exit_code": result.exit_code,
            "duration": result.duration,
            "cwd": result.cwd,
            "stdout": result.stdout,
            "stderr": result.stderr,
            "truncated": result.truncated,
            "stdout_dropped": result.stdout_dropped,
            "stderr_dropped": result.stderr_dropped,
            "ename": result.ename,
            "evalue": result.evalue,
            "events": result.events,
            "auto": result.auto,
        }
        print(json.dumps(payload))
    if "stdout" in closed:
        return EXIT_BROKEN_PIPE
    if result.status == "timeout":
        print(f"stigmer: {result.evalue}", file=sys.stderr)
        return EXIT_TIMEOUT
    if result.status == "interrupted":
        return EXIT_INTERRUPTED
    if result.exit_code is None:
        return _fail(f"{result.ename}: {result.evalue}")
    if result.session_reset and not args.json:
        print(f"stigmer: {result.evalue}", file=sys.stderr)
    return result.exit_code


# -- server ---------------------------------------------------------------------------------------
def _server(args: argparse.Namespace, config: Config, parser: argparse.ArgumentParser) -> int:
    from ..client import Client
    from ..client.discovery import find_server, start_background_server

    runtime = RuntimeDir(config.runtime_dir)
    if args.action != "status":
        if args.remote:  # the flag, not STIGMER_REMOTE: that one names where clients go
            raise StigmerError(
                f"`stigmer server {args.action}` works on this host only; run it on the "
                "server's host"
            )
        remote = None
    else:
        remote = _remote(args)
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
                return _fail(f"the server (pid {info.get('pid')}) did not stop within 15s")
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
    if args.action == "logs":
        return _logs(runtime, args.follow, args.lines)
    parser.parse_args(["server", "--help"])
    return 2


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
    out.write(data)
    out.flush()
    while follow:
        chunk = handle.read()
        if chunk:
            out.write(chunk)
            out.flush()
        else:
            time.sleep(0.2)


# -- kernels --------------------------------------------------------------------------------------
def _kernels(args: argparse.Namespace, config: Config, parser: argparse.ArgumentParser) -> int:
    from ..client import Client

    if args.action is None:
        parser.parse_args(["kernels", "--help"])
        return 2
    remote = _remote(args)
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
                raise _UsageError("give a kernel NAME or --all (not both)")
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
            requirements = _read_requirements(args.requirements) if args.requirements else None
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


def _read_requirements(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    except OSError as exc:
        raise StigmerError(f"cannot read {path}: {exc.strerror}") from None


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


# -- curve ---------------------------------------------------------------------------------------
def _curve(args: argparse.Namespace, config: Config) -> int:
    from .. import curve

    runtime = RuntimeDir(config.runtime_dir)
    if args.action == "keygen":
        os.makedirs(args.dir, exist_ok=True)
        public, secret = curve.keygen(args.dir, args.name)
        print(f"public key: {public}\nsecret key: {secret} (keep it on the host that connects)")
        return 0
    if args.action == "authorize":
        runtime.ensure()
        try:
            target = curve.authorize(runtime.path, Path(args.public_key))
        except (OSError, CurveKeyError) as exc:
            raise StigmerError(f"cannot authorize {args.public_key}: {exc}") from None
        print(f"authorized {target.name}: its holder may connect to {runtime.path}'s TCP endpoints")
        return 0
    if args.action == "server-key":
        runtime.ensure()
        print(curve.ensure_server_keys(runtime.path))
        return 0
    raise StigmerError("usage: stigmer curve {keygen,authorize,server-key} ...")


# -- kernelspec ------------------------------------------------------------------------------------
def _kernelspec(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    if args.action != "install":
        parser.parse_args(["kernelspec", "--help"])
        return 2
    from ..jupyter.kernelspec import SPECS, install

    path = install(args.mode, user=args.user, sys_prefix=args.sys_prefix, prefix=args.prefix)
    print(f"installed kernelspec {SPECS[args.mode][0]!r} ({SPECS[args.mode][1]}) in {path}")
    return 0


# -- config ---------------------------------------------------------------------------------------
def _config(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    path = default_config_path()
    if args.action == "path":
        print(path)
        return 0
    if args.action in ("get", "set", "unset") and args.key not in USER_KEYS:
        return _fail(f"unknown setting {args.key!r}; known settings: {', '.join(USER_KEYS)}")
    stored = read_config_file(path)
    if args.action == "set":
        value = parse_value(args.key, args.value)
        if value is None:  # "none": the default of every setting that can be empty
            stored.pop(args.key, None)
            write_config_file(path, stored)
            print(f"{args.key} = none  (unset in {path})")
            return 0
        stored[args.key] = str(value) if not isinstance(value, (bool, int, float)) else value
        if hasattr(value, "value"):
            stored[args.key] = value.value
        write_config_file(path, stored)
        print(f"{args.key} = {stored[args.key]}  (saved in {path})")
        return 0
    if args.action == "unset":
        stored.pop(args.key, None)
        write_config_file(path, stored)
        return 0
    config = load_config({"runtime_dir": args.runtime_dir}).to_dict()
    if args.action == "get":
        value = config[args.key]
        print("" if value is None else _user_text(value))
        return 0
    if args.action == "list":
        for key in USER_KEYS:
            var = FIELDS[key].metadata["env"]
            source = "env" if os.environ.get(var) else "file" if key in stored else "default"
            if key == "runtime_dir" and args.runtime_dir:
                source = "--runtime-dir"
            print(f"{key} = {_user_text(config[key])}  ({source}; {var})")
        return 0
    parser.parse_args(["config", "--help"])
    return 2
