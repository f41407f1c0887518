"""What the subcommands share: failing with one line on stderr, exit codes of the CLI's own,
the global ``--remote`` options, reading a requirements file, writing all of a chunk to stdout
and quieting it once closed."""

from __future__ import annotations

import os
import sys

from ..errors import StigmerError
from ..protocol.constants import EXIT_STIGMER_ERROR

TYPE_CHECKING = False  # not typing's: see stigmer_kernel/__init__.py
if TYPE_CHECKING:
    import argparse
    import types
    from typing import Any

    from ..config import Config

    #: What a subcommand's ``run`` gets: argparse's, or ``stigmer run``'s plain parse of it.
    Args = argparse.Namespace | types.SimpleNamespace

EXIT_NOT_RUNNING = 3
EXIT_BROKEN_PIPE = 128 + 13  # what a shell reports for a program ended by SIGPIPE


class UsageError(StigmerError):
    """A mistake in the command line: exit 2, like argparse's own errors."""


def fail(message: str, code: int = EXIT_STIGMER_ERROR) -> int:
    print(f"stigmer: error: {message}", file=sys.stderr)
    return code


def write_all(stream: Any, data: bytes | memoryview) -> None:
    """Write all of ``data`` to ``stream`` and flush it.

    ``sys.stdout.buffer`` is a raw ``FileIO`` under ``python -u`` or ``PYTHONUNBUFFERED`` (as
    in many container images), and a raw write to a pipe returns short when a signal comes
    while it waits for the reader (SIGSTOP/SIGCONT of a pipeline, SIGWINCH, Ctrl-Z): the rest
    is written here, never dropped. A non-blocking descriptor is waited for.
    """
    view = memoryview(data).cast("B")
    while view:
        try:
            written = stream.write(view)
        except BlockingIOError as exc:  # a buffered stream on a non-blocking descriptor
            written = exc.characters_written
        if written is None or written == 0:  # a raw one that took nothing now
            import select

            select.select([], [stream], [])
            continue
        view = view[written:]
    stream.flush()


def silence(stream: Any) -> None:
    """Point ``stream``'s descriptor at /dev/null, so nothing written or flushed to it later
    (at exit too) raises again once its reader is gone."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, stream.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass


def read_requirements(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    except OSError as exc:
        raise StigmerError(f"cannot read {path}: {exc.strerror}") from None


_REMOTE_ENV = {
    "remote": "STIGMER_REMOTE",
    "remote_key": "STIGMER_REMOTE_KEY",
    "server_key": "STIGMER_REMOTE_SERVER_KEY",
    "curve_cert": "STIGMER_REMOTE_CURVE_CERT",
}


def add_remote_options(parser: argparse.ArgumentParser) -> None:
    """The global options that name a server on another host (read by :func:`remote`)."""
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


def remote_server(args: Args) -> Any:
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
    import re

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


def load(args: Args, **overrides: Any) -> Config:
    """The configuration with the global ``--runtime-dir`` and ``overrides`` (CLI flags) on top."""
    from ..config import load_config  # here: a plain run reads its few settings without it

    return load_config({"runtime_dir": args.runtime_dir, **overrides})
