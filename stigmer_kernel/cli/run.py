"""``stigmer run``: one shell command on a warm kernel, its output streamed, its exit code ours.

The command's stdin is this process's when that is a file, a pipe or a socket (``--stdin`` /
``--no-stdin`` decide otherwise); Ctrl-C interrupts the command (a second one stops waiting); a
closed stdout (``stigmer run -- yes | head -1``) interrupts it and exits 141, as SIGPIPE would;
``--explain`` prints where auto mode would run it; ``--json`` prints one result instead of the
stream. A sandbox image's pull or build draws a progress bar until the command writes.
"""

from __future__ import annotations

import os
import sys

from ..errors import RequestError, StigmerError
from ..lean_config import LeanSettings, lean_settings
from ..protocol.constants import EXIT_INTERRUPTED, EXIT_TIMEOUT
from .common import (
    EXIT_BROKEN_PIPE,
    UsageError,
    fail,
    load,
    read_requirements,
    remote_server,
    silence,
    write_all,
)
from .run_stdin import stdin_now, stdin_source

TYPE_CHECKING = False  # not typing's: see stigmer_kernel/__init__.py
if TYPE_CHECKING:
    import signal as _signal
    import types
    from collections.abc import Callable
    from typing import Any, BinaryIO

    from ..client import ExecResult
    from ..config import Config
    from .common import Args
    from .progress import ProgressDisplay
else:
    import _signal  # signal's C core: signal.py makes enums of its constants at import


def add_parser(sub: Any) -> None:
    import argparse

    parser = sub.add_parser(
        "run",
        help="run a shell command and exit with its exit code",
        description="Run shell code on a warm kernel (created on first use) and stream its "
        "output; exit with the command's exit code.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--mode",
        choices=["local", "sandbox", "auto", "remote"],
        help="execution mode; an existing kernel must have it (default: an existing kernel's "
        "own mode; for a new one STIGMER_EXECUTION_MODE or the saved execution_mode if set, "
        "else the server's default, local unless started with --execution-mode); remote: a "
        "kernel whose agent joined from another host",
    )
    parser.add_argument("--kernel", "-k", default="default", help="kernel name (default: default)")
    parser.add_argument("--timeout", "-t", type=float, help="end the command after S seconds")
    parser.add_argument(
        "--cwd",
        metavar="DIR",
        help="working directory of a kernel this creates (default: STIGMER_WORKDIR, else the "
        "current directory); an existing kernel must be there, else exit 2 (see `stigmer "
        "kernels restart`)",
    )
    parser.add_argument(
        "--workdir",
        "-w",
        metavar="DIR",
        help="working directory of this command only (absolute, or relative to the kernel's "
        "cwd); the kernel's cwd stays as it was",
    )
    parser.add_argument(
        "--sandbox-image",
        metavar="IMAGE",
        help="image of a sandbox or auto kernel this creates; an existing kernel must have it",
    )
    parser.add_argument(
        "--pool",
        metavar="NAME",
        help="a sandbox kernel this creates is served by an idle member of agent pool NAME "
        "(default: the server's sandbox_pool); an existing kernel must come from it",
    )
    parser.add_argument(
        "--requirements",
        metavar="FILE",
        help="pip requirements baked into the sandbox of a sandbox or auto kernel this creates; "
        "an existing kernel must have been made with them",
    )
    parser.add_argument(
        "--env",
        "-e",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="set a variable for this command only (repeatable); a kernel this creates also "
        "starts with this process's environment (local mode)",
    )
    given = parser.add_mutually_exclusive_group()
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
    parser.add_argument(
        "--explain",
        action="store_true",
        help="print where auto mode would run the command, and why; do not run it",
    )
    parser.add_argument(
        "--json", action="store_true", help="print one JSON result instead of streaming output"
    )
    parser.add_argument(
        "argv",
        nargs=argparse.REMAINDER,
        metavar="-- COMMAND...",
        help="the command; one argument is shell code, several are quoted",
    )


_EPILOG = """\
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
        raise UsageError("no command given — usage: stigmer run [OPTIONS] -- COMMAND...")
    if len(argv) == 1:
        return argv[0]
    import shlex

    return shlex.join(argv)


def _env_options(items: list[str]) -> dict[str, str]:
    """``--env NAME=VALUE`` options as a map (a later one wins), checked as the client checks
    ``execute(env=...)``."""
    from ..environment import checked_env

    env: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise UsageError(f"--env takes NAME=VALUE, not {item[:80]!r}")
        env[name] = value
    try:
        return checked_env(env, "--env")
    except RequestError as exc:
        raise UsageError(str(exc)) from None


def _full(args: Args, config: Config | LeanSettings) -> Config:
    """The whole configuration, for what needs more than a plain run's few settings."""
    return load(args) if isinstance(config, LeanSettings) else config


def run(args: Args) -> int:
    config = lean_settings(args.runtime_dir) or load(args)  # the same values either way
    code = _command_text(args.argv)
    args.env_vars = _env_options(args.env)
    if args.timeout is not None and not args.timeout > 0:
        raise UsageError(f"--timeout must be a positive number of seconds, not {args.timeout:g}")
    if not args.kernel:
        raise UsageError("--kernel needs a name")
    named = args.mode or (
        config.execution_mode.value if "execution_mode" in config.explicit else None
    )
    for flag, value in (
        ("--requirements", args.requirements),
        ("--sandbox-image", args.sandbox_image),
        ("--pool", args.pool),
    ):
        if value and named in ("local", "remote"):
            raise UsageError(f"{flag} applies to sandbox and auto kernels, not to {named} mode")
    if args.explain:
        config = _full(args, config)
        mode = named or _server_side_mode(config, args.kernel, remote_server(args))
        if mode != "auto":
            print(f"{mode}: mode {mode} runs every command there (no auto decision)")
            return 0
        print(
            _explain_auto(config, args.kernel, remote_server(args), code, bool(args.requirements))
        )
        return 0
    stdin = stdin_source(args.stdin)
    args.requirements_text = read_requirements(args.requirements) if args.requirements else None
    remote = remote_server(args)
    inline = stdin_now(stdin) if stdin is not None and remote is None else None
    if remote is None and (stdin is None or inline is not None):
        return _run_lean(args, config, code, inline)  # in this thread: no event loop to start
    import asyncio

    return asyncio.run(_run_async(args, _full(args, config), code, stdin, remote))


class _Output:
    """Where a command's output goes: our stdout and stderr, each until its reader leaves
    (`stigmer run -- yes | head -1`: the command is then interrupted, as SIGPIPE would end
    it), and a sandbox image's progress until the command writes."""

    def __init__(self, kernel: str) -> None:
        self.kernel = kernel
        self.out = {"stdout": sys.stdout.buffer, "stderr": sys.stderr.buffer}
        self.closed: set[str] = set()  # streams whose reader went away
        self.stop_command: Callable[[], None] | None = None  # interrupts the command
        self._display: ProgressDisplay | None = None  # made by the first progress event

    def write(self, name: str, data: bytes) -> None:
        if name in self.closed:
            return
        self.close_display()
        stream = self.out[name]
        try:
            write_all(stream, data)
        except BrokenPipeError:
            # Like a program killed by SIGPIPE: the command is interrupted (it would write on
            # forever otherwise), the CLI says nothing and exits 141.
            self.closed.add(name)
            silence(stream)
            if self.stop_command is not None:
                self.stop_command()

    def on_event(self, event: dict[str, Any]) -> None:
        if event.get("event") == "progress" and event.get("kernel") == self.kernel:
            if self._display is None:
                from .progress import ProgressDisplay

                self._display = ProgressDisplay()
            self._display.report(str(event.get("reason")))

    def close_display(self) -> None:
        if self._display is not None:
            self._display.close()


def _run_lean(
    args: Args, config: Config | LeanSettings, code: str, stdin: bytes | None = None
) -> int:
    """An ordinary run (stdin none or ``stdin``'s bytes, a local server) on the blocking
    transport; with ``config`` lean, it builds no dataclass unless a server must be started (or
    ``--json``)."""
    import types

    from ..client._blocking import EXECUTE_REQUEST, INTERRUPT_REQUEST, BlockingTransport
    from ..client._call import client_identity
    from ..client._requests import exec_result, execute_content, result_fields
    from ..client.discovery import find_server, running_server

    output = _Output(args.kernel)
    # A kernel this creates starts with our environment.
    content, keep = execute_content(config, code, **_execute_options(args), inherit_env=True)
    if stdin is not None:
        content["stdin"] = stdin
    address = running_server(config.runtime_dir) or find_server(_full(args, config))
    transport = BlockingTransport(address, client_identity(), output.on_event, zmtp=True)
    interrupted = False

    def interrupt() -> None:
        nonlocal interrupted
        if not interrupted:
            interrupted = True
            transport.send_soon(INTERRUPT_REQUEST, {"kernel": args.kernel})

    def on_sigint(signum: int, frame: Any) -> None:
        if interrupted:  # second Ctrl-C: stop waiting
            raise KeyboardInterrupt
        interrupt()

    output.stop_command = interrupt
    previous = _signal.signal(_signal.SIGINT, on_sigint)
    try:
        reply, call = transport.request(
            EXECUTE_REQUEST,
            content,
            on_output=None if args.json else output.write,
            keep=keep,
        )
        result: ExecResult | types.SimpleNamespace = (
            exec_result(content, reply, call)
            if args.json  # it prints all of it
            else types.SimpleNamespace(**result_fields(content, reply, call))
        )
    finally:
        output.close_display()
        _signal.signal(_signal.SIGINT, previous)
        transport.close()
    return _finish(args, result, output)


def _execute_options(args: Args) -> dict[str, Any]:
    """``execute``'s options from ours (stdin apart)."""
    return {
        "remote": False,
        "kernel": args.kernel,
        "mode": args.mode,
        "timeout": args.timeout,
        "cwd": os.path.abspath(args.cwd) if args.cwd else None,
        "output_limit": None if args.json else 0,  # streamed in full, nothing kept here
        "ttl": None,
        "sandbox_image": args.sandbox_image,
        "requirements": args.requirements_text,
        "workspace": None,
        "env": args.env_vars,
        "kernel_env": None,
        "sticky": None,
        "workdir": args.workdir,
        "background": False,
        "pool": args.pool,
    }


async def _run_async(
    args: Args, config: Config, code: str, stdin: BinaryIO | None, remote: Any
) -> int:
    import asyncio

    from ..client import AsyncClient

    output = _Output(args.kernel)
    # A kernel this creates starts with our environment (a remote server's, with its own).
    async with AsyncClient(
        config, on_event=output.on_event, remote=remote, inherit_env=remote is None
    ) as client:
        loop = asyncio.get_running_loop()
        interrupted = asyncio.Event()
        tasks: set[asyncio.Task[Any]] = set()

        def on_sigint() -> None:
            if interrupted.is_set():  # second Ctrl-C: stop waiting
                raise KeyboardInterrupt
            on_closed_pipe()

        def on_closed_pipe() -> None:
            if not interrupted.is_set():
                interrupted.set()
                task = loop.create_task(client.interrupt(args.kernel))
                tasks.add(task)
                task.add_done_callback(tasks.discard)

        output.stop_command = on_closed_pipe
        loop.add_signal_handler(_signal.SIGINT, on_sigint)
        options = _execute_options(args)
        del options["remote"]
        try:
            result = await client.execute(
                code, stdin=stdin, on_output=None if args.json else output.write, **options
            )
        finally:
            output.close_display()
        loop.remove_signal_handler(_signal.SIGINT)
    return _finish(args, result, output)


def _finish(args: Args, result: ExecResult | types.SimpleNamespace, output: _Output) -> int:
    """Report ``result`` (events, ``--json``) and return our exit code."""
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
        import json

        print(json.dumps(payload))
    if "stdout" in output.closed:
        return EXIT_BROKEN_PIPE
    if result.status == "timeout":
        print(f"stigmer: {result.evalue}", file=sys.stderr)
        return EXIT_TIMEOUT
    if result.status == "interrupted":
        return EXIT_INTERRUPTED
    if result.exit_code is None:
        return fail(f"{result.ename}: {result.evalue}")
    if result.session_reset and not args.json:
        print(f"stigmer: {result.evalue}", file=sys.stderr)
    return result.exit_code
