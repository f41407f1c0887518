"""Entry point of an execution agent: ``python -m stigmer_kernel.agent``.

The broker's provisioners start it; the signing key comes as the first line of stdin (or in
``STIGMER_AGENT_KEY``, which is removed from the environment before any user command runs).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import types
from pathlib import Path

from ..curve import ClientKeys, client_keys, keys_from_text, take_agent_keys
from ..errors import CurveKeyError, StigmerError
from ..names import EnvVar
from . import log, member, nosuid, procs
from .agent import Agent, AgentOptions
from .processes import JOURNAL_BYTES

TYPE_CHECKING = False  # not typing's: see stigmer_kernel/__init__.py
if TYPE_CHECKING:
    import argparse
    from collections.abc import Callable
    from typing import Any


#: The options :func:`_parse` reads without argparse: option -> (attribute, conversion).
_VALUED: dict[str, tuple[str, Callable[[str], object]]] = {
    "--endpoint": ("endpoint", str),
    "--server": ("endpoint", str),
    "--kernel-id": ("kernel_id", str),
    "--cwd": ("cwd", str),
    "--workdir": ("workdir", str),
    "--shell": ("shell", str),
    "--heartbeat-interval": ("heartbeat_interval", float),
    "--orphan-timeout": ("orphan_timeout", float),
    "--timeout": ("timeout", float),
    "--output-limit": ("output_limit", int),
    "--journal-bytes": ("journal_bytes", int),
    "--key-file": ("key_file", str),
    "--env-file": ("env_file", str),
    "--kernel-id-file": ("kernel_id_file", str),
    "--join": ("join", str),
    "--pool": ("pool", str),
    "--server-key": ("server_key", str),
    "--curve-cert": ("curve_cert", str),
    "--curve-file": ("curve_file", str),
}
#: The defaults of :func:`_parser`'s options (``--cwd``'s is the current directory).
_DEFAULTS: dict[str, object] = {
    **{dest: None for dest, _ in _VALUED.values()},
    "shell": "bash",
    "heartbeat_interval": 1.0,
    "orphan_timeout": 60.0,
    "timeout": 0.0,
    "output_limit": 0,
    "journal_bytes": 0,
    "sandbox": False,
}


def _parse(argv: list[str]) -> Any:
    """The agent's options as :func:`_parser` parses them, without argparse for a command line
    of the options as the broker writes them (argparse, with gettext, costs milliseconds of
    every start): ``--option value``, ``--option=value`` and ``--sandbox``. Anything else
    (``--help``, an abbreviation, a value that starts with ``-``, an error) goes to argparse."""
    values = dict(_DEFAULTS, cwd=os.getcwd())
    i = 0
    while i < len(argv):
        name, eq, value = argv[i].partition("=")
        i += 1
        if name == "--sandbox" and not eq:
            values["sandbox"] = True
            continue
        spec = _VALUED.get(name)
        if spec is None:
            return _parser().parse_args(argv)
        if not eq:
            if i == len(argv) or argv[i].startswith("-"):
                return _parser().parse_args(argv)
            value = argv[i]
            i += 1
        try:
            values[spec[0]] = spec[1](value)
        except ValueError:
            return _parser().parse_args(argv)
    if values["endpoint"] is None:
        return _parser().parse_args(argv)
    return types.SimpleNamespace(**values)


def _parser() -> argparse.ArgumentParser:
    """The agent's command line (its ``--help`` and its errors); see :func:`_parse`."""
    import argparse  # see _parse

    parser = argparse.ArgumentParser(prog="python -m stigmer_kernel.agent")
    parser.add_argument(
        "--endpoint", "--server", dest="endpoint", required=True, help="broker agent endpoint"
    )
    parser.add_argument(
        "--kernel-id", help="the kernel incarnation it serves (given by the broker)"
    )
    parser.add_argument("--cwd", default=os.getcwd(), help="initial working directory")
    parser.add_argument("--workdir", help="private directory for session files (default: temp)")
    parser.add_argument("--shell", default="bash")
    parser.add_argument("--heartbeat-interval", type=float, default=1.0)
    parser.add_argument("--orphan-timeout", type=float, default=60.0)
    parser.add_argument("--timeout", type=float, default=0.0, help="default command timeout")
    parser.add_argument(
        "--output-limit", type=int, default=0, help="bytes of output per command (0: no limit)"
    )
    parser.add_argument(
        "--journal-bytes",
        type=int,
        default=0,
        help="bytes kept per stream of a background process (0: the default, 4 MiB)",
    )
    parser.add_argument("--key-file", help="read the key from this file, then delete it")
    parser.add_argument(
        "--env-file",
        help="the shell's environment, a JSON object (read, then deleted); default: the agent's",
    )
    parser.add_argument(
        "--kernel-id-file",
        help="read the kernel id from this file (a sandbox container started again for a new "
        "incarnation keeps its command line)",
    )
    parser.add_argument(
        "--sandbox",
        action="store_true",
        help="inside a sandbox container: before anything runs, install the seccomp filter "
        "that refuses set-uid/set-gid file modes (agent/nosuid.py), or fail to start",
    )
    remote = parser.add_argument_group("remote agents (another host, CurveZMQ over TCP)")
    remote.add_argument("--join", metavar="NAME", help="offer to serve kernel NAME")
    remote.add_argument(
        "--pool",
        metavar="NAME",
        help="join agent pool NAME as an idle member; serve the one kernel it is claimed for, "
        "then exit (keys: --server-key and --curve-cert, or "
        f"{EnvVar.POOL_SERVER_KEY.value} and {EnvVar.POOL_CURVE_SECRET.value}, z85)",
    )
    remote.add_argument("--server-key", help="the broker's public key file (server.key)")
    remote.add_argument("--curve-cert", help="this agent's secret certificate (NAME.key_secret)")
    remote.add_argument(
        "--curve-file",
        help="CurveZMQ keys given by the broker (sandbox over tcp): the server's public key, "
        "this agent's public and secret key, z85, one per line; read, then deleted",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    # First of all, before any key is read: no other process of this uid (a command of this
    # very kernel included) may read this one's memory or environment. Exec'd programs are
    # dumpable again, as they hold no key.
    procs.set_non_dumpable()
    args = _parse(sys.argv[1:] if argv is None else argv)
    if args.sandbox:
        # Before any thread (ZeroMQ's included) and any command: all of them inherit it.
        try:
            nosuid.install(args.workdir or _tempdir())
        except (StigmerError, OSError) as exc:
            print(f"agent: {exc}", file=sys.stderr)
            return 2
    # The key comes as the first line of stdin (or, for containers, STIGMER_AGENT_KEY).
    curve = None
    if args.pool:
        if args.join or args.kernel_id:
            _parser().error("--pool takes neither --join nor --kernel-id: the broker assigns one")
        curve = _pool_keys(args)
        log.to_stderr()
        # An idle member is often PID 1 of its container, where SIGTERM has no default
        # action: without a handler `docker stack rm` or a scale-down waits for SIGKILL.
        signal.signal(signal.SIGTERM, _terminate)
        try:
            claimed = member.wait_for_claim(
                args.endpoint, args.pool, curve, args.heartbeat_interval
            )
        except member.Refused as exc:
            print(f"agent: {exc}", file=sys.stderr)
            return 3
        if claimed is None:
            return 0
        claim, curve = claimed
        try:
            args.kernel_id = str(claim["kernel_id"])
            os.environ[EnvVar.AGENT_KEY.value] = str(claim["key"])
            args.cwd = str(claim.get("cwd") or args.cwd)
            args.heartbeat_interval = float(claim["heartbeat_interval"])
            args.orphan_timeout = float(claim["orphan_timeout"])
            args.timeout = float(claim.get("timeout") or 0)
            args.output_limit = int(claim.get("output_limit") or 0)
            args.journal_bytes = int(claim.get("journal_bytes") or 0)
        except (KeyError, TypeError, ValueError) as exc:
            print(f"agent: a claim it cannot serve ({exc})", file=sys.stderr)
            return 2
    elif args.join:
        if not (args.server_key and args.curve_cert):
            _parser().error("--join needs --server-key and --curve-cert (CurveZMQ)")
        try:
            curve = client_keys(args.server_key, args.curve_cert)
        except CurveKeyError as exc:
            _parser().error(str(exc))
        os.environ[EnvVar.AGENT_KEY.value] = os.urandom(32).hex()  # a key of its own choosing
        args.kernel_id = args.kernel_id or f"{args.join}-r{os.urandom(4).hex()}"
    elif args.curve_file:
        try:
            curve = take_agent_keys(args.curve_file)
        except OSError as exc:
            _parser().error(f"cannot read --curve-file: {exc}")
        except CurveKeyError:
            _parser().error("--curve-file must hold three z85 keys")
    if args.kernel_id_file and not args.kernel_id:
        try:
            with open(args.kernel_id_file, encoding="ascii") as handle:
                args.kernel_id = handle.read().strip()
        except (OSError, UnicodeDecodeError) as exc:
            _parser().error(f"cannot read --kernel-id-file: {exc}")
    if not args.kernel_id:
        _parser().error("--kernel-id is required (or --join NAME for a remote agent)")
    key = os.environ.pop(EnvVar.AGENT_KEY.value, "").encode()
    if not key and args.key_file:
        with contextlib.suppress(OSError):
            with open(args.key_file, "rb") as handle:
                key = handle.read().strip()
            os.unlink(args.key_file)
    if not key:
        key = sys.stdin.buffer.readline().strip()
        with contextlib.suppress(OSError):
            devnull = os.open(os.devnull, os.O_RDONLY)
            os.dup2(devnull, 0)
            os.close(devnull)
    if not key:
        print(f"agent: no key on stdin nor in {EnvVar.AGENT_KEY.value}", file=sys.stderr)
        return 2
    shell_env = None
    if args.env_file:
        try:
            with open(args.env_file, encoding="utf-8") as handle:
                shell_env = json.load(handle)
            os.unlink(args.env_file)
        except (OSError, ValueError) as exc:
            _parser().error(f"cannot read --env-file: {exc}")
        if not isinstance(shell_env, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in shell_env.items()
        ):
            _parser().error("--env-file must hold a JSON object of strings")
    home = os.environ.get("HOME")
    if home and not os.path.isdir(home):
        with contextlib.suppress(OSError):
            os.makedirs(home, mode=0o700)  # sandboxes run as a uid with no home of its own
    log.to_stderr()
    # The broker interrupts commands by message; a stray Ctrl-C must not kill the agent. A
    # handler (not SIG_IGN) so that bash, after exec, starts with SIGINT at its default.
    signal.signal(signal.SIGINT, lambda *_: None)
    signal.signal(signal.SIGTERM, _terminate)  # ends like a shutdown: its processes go with it
    own_workdir = None
    if not args.workdir:  # a remote agent's, say: ours to remove when the agent ends
        import tempfile  # an agent the broker starts is given its --workdir

        args.workdir = own_workdir = tempfile.mkdtemp(prefix="stigmer-agent-")
    opts = AgentOptions(
        endpoint=args.endpoint,
        kernel_id=args.kernel_id,
        key=key,
        cwd=args.cwd,
        workdir=Path(args.workdir),
        shell=args.shell,
        heartbeat_interval=args.heartbeat_interval,
        orphan_timeout=args.orphan_timeout,
        command_timeout=args.timeout or None,
        output_limit=args.output_limit,
        journal_bytes=args.journal_bytes or JOURNAL_BYTES,
        join=args.join,
        curve=curve,
        env=shell_env,
    )
    try:
        return Agent(opts).run()
    finally:
        if own_workdir is not None:
            import shutil  # see tempfile above

            shutil.rmtree(own_workdir, ignore_errors=True)


def _pool_keys(args: Any) -> ClientKeys:
    """A pool member's CurveZMQ keys: from files, else from the environment (z85 text)."""
    try:
        if args.server_key and args.curve_cert:
            return client_keys(args.server_key, args.curve_cert)
        server = os.environ.pop(EnvVar.POOL_SERVER_KEY.value, "")
        secret = os.environ.pop(EnvVar.POOL_CURVE_SECRET.value, "")
        if not (server and secret):
            _parser().error(
                "--pool needs --server-key and --curve-cert, or "
                f"{EnvVar.POOL_SERVER_KEY.value} and {EnvVar.POOL_CURVE_SECRET.value} (CurveZMQ)"
            )
        return keys_from_text(server, secret)
    except CurveKeyError as exc:
        _parser().error(str(exc))


def _tempdir() -> str:
    import tempfile  # an agent the broker starts is given its --workdir

    return tempfile.gettempdir()


def _terminate(*_: object) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # one is enough: let the clean-up finish
    raise SystemExit(128 + signal.SIGTERM)


if __name__ == "__main__":
    sys.exit(main())
