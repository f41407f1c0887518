"""The ``stigmer`` command: the top-level parser, its global options, and dispatch to the
subcommand modules (each an ``add_parser``/``run`` pair), whose errors become exit codes here.

Exit codes: a command's own exit code for ``stigmer run``; 124 when it timed out; 130 when it
was interrupted; 141 when stdout was closed (the command is interrupted); 125 when stigmer itself
failed (one line on stderr says why); 2 for usage errors and options an existing kernel lacks.
"""

from __future__ import annotations

import sys

from ..errors import KernelMismatch, StigmerError
from ..protocol.constants import EXIT_INTERRUPTED
from .common import EXIT_BROKEN_PIPE, UsageError, fail, silence

TYPE_CHECKING = False  # not typing's: see stigmer_kernel/__init__.py
if TYPE_CHECKING:
    import argparse
    from typing import Any, Protocol

    from .common import Args

    class _Command(Protocol):
        """A subcommand's module."""

        def add_parser(self, sub: Any) -> None:
            """Register the subcommand (and its actions) on ``sub``, the top-level
            subparsers."""

        def run(self, args: Args) -> int:
            """Do what ``args`` asks; return the exit code (errors: :func:`main` maps them)."""


#: Each subcommand: (module in this package, attribute of it or "" for the module itself), in
#: the order ``stigmer --help`` lists them. A module is imported only when its command runs
#: (or for the top-level help), so ``stigmer run`` pays for no other command's imports.
COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("run", ""),
    "cp": ("cp", ""),
    "start": ("processes", "START"),
    "ps": ("processes", "PS"),
    "logs": ("logs", ""),
    "kill": ("processes", "KILL"),
    "wait": ("processes", "WAIT"),
    "server": ("server", ""),
    "kernels": ("kernels", ""),
    "mcp": ("mcp", ""),
    "sandbox": ("sandbox", ""),
    "pools": ("pools", ""),
    "agent": ("pools", "AGENT"),
    "curve": ("curve_keys", ""),
    "kernelspec": ("kernelspec", ""),
    "config": ("config", ""),
}


def command(name: str) -> _Command:
    """The subcommand ``name``'s module (or object), imported now."""
    module_name, attr = COMMANDS[name]
    full = f"{__package__}.{module_name}"
    __import__(full)  # not importlib's import_module: importlib is one more import to pay for
    module = sys.modules[full]
    found: _Command = getattr(module, attr) if attr else module
    return found


def _global_options(parser: argparse.ArgumentParser) -> None:
    from .common import add_remote_options

    parser.add_argument("--runtime-dir", help="server runtime directory (STIGMER_RUNTIME_DIR)")
    add_remote_options(parser)


def _chosen(argv: list[str]) -> str | None:
    """The subcommand ``argv`` names, if it is one (the global options may come first)."""
    import argparse

    peek = argparse.ArgumentParser(add_help=False)
    _global_options(peek)
    peek.add_argument("command", nargs="?")
    peek.add_argument("rest", nargs=argparse.REMAINDER)
    try:
        known, _ = peek.parse_known_args(argv)
    except SystemExit:  # a bad global option: the full parser says so
        return None
    name = known.command
    return name if isinstance(name, str) and name in COMMANDS else None


def _parser(only: str | None = None) -> argparse.ArgumentParser:
    """The parser; with ``only``, that subcommand's in full and the others' names alone."""
    import argparse

    from .._version import __version__

    parser = argparse.ArgumentParser(
        prog="stigmer",
        description="Run shell commands in warm kernels, locally or in sandboxes.",
    )
    parser.add_argument("--version", action="version", version=f"stigmer-kernel {__version__}")
    _global_options(parser)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        if only is None or name == only:
            command(name).add_parser(sub)
        else:
            sub.add_parser(name, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the ``stigmer`` command line ``argv`` and return its exit code. Without ``argv`` it
    is this process's (the console script, ``python -m stigmer_kernel``), which then ends at
    once when nothing is left to do (:func:`_end_now`)."""
    code = _main(sys.argv[1:] if argv is None else argv)
    if argv is None:
        _end_now(code)
    return code


def _end_now(code: int) -> None:
    """End this process with ``code`` now, skipping the interpreter's teardown (freeing what a
    ``stigmer run`` loaded costs it about as much as its request), if teardown has nothing to
    do: no thread may run (``threading`` was never imported), no ``atexit`` callback is
    registered, and stdout and stderr flush. Otherwise return: the process ends the usual way
    (a closed stdout, say, is reported as it always was)."""
    import atexit

    if "threading" in sys.modules or atexit._ncallbacks():
        return
    try:
        for stream in (sys.stdout, sys.stderr):
            if stream is not None:
                stream.flush()
    except (OSError, ValueError):
        return
    import os

    os._exit(code)


def _main(argv: list[str]) -> int:
    if argv[:2] == ["agent", "join"]:  # the agent's own options, which overlap ours
        from . import pools

        return pools.AGENT.join(argv[2:])
    args: Args | None = None
    if argv[:1] == ["run"]:  # the common case, without argparse (it falls back on the rest)
        from .run_args import parse_plain

        args = parse_plain(argv)
    if args is None:
        parser = _parser(_chosen(argv))
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help()
            return 2
    try:
        return command(args.command).run(args)
    except (UsageError, KernelMismatch) as exc:  # an option the kernel does not have: usage
        return fail(str(exc), 2)
    except StigmerError as exc:
        return fail(str(exc))
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # `stigmer kernels info X | head -3`: quiet, as a Unix tool is
        silence(sys.stdout)
        return EXIT_BROKEN_PIPE
