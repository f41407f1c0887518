"""The ``stigmer`` command: the top-level parser, its global options, and dispatch to the
subcommand modules (each an ``add_parser``/``run`` pair), whose errors become exit codes here.

Exit codes: a command's own exit code for ``stigmer run``; 124 when it timed out; 130 when it
was interrupted; 141 when stdout was closed (the command is interrupted); 125 when stigmer itself
failed (one line on stderr says why); 2 for usage errors and options an existing kernel lacks.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, Protocol

from .._version import __version__
from ..errors import KernelMismatch, StigmerError
from ..protocol.constants import EXIT_INTERRUPTED
from . import (
    config,
    cp,
    curve_keys,
    kernels,
    kernelspec,
    logs,
    mcp,
    pools,
    processes,
    run,
    sandbox,
    server,
)
from .common import EXIT_BROKEN_PIPE, UsageError, add_remote_options, fail, silence


class _Command(Protocol):
    """A subcommand's module."""

    def add_parser(self, sub: Any) -> None:
        """Register the subcommand (and its actions) on ``sub``, the top-level subparsers."""

    def run(self, args: argparse.Namespace) -> int:
        """Do what ``args`` asks; return the exit code (errors: :func:`main` maps them)."""


#: Each subcommand's module, in the order ``stigmer --help`` lists them.
COMMANDS: dict[str, _Command] = {
    "run": run,
    "cp": cp,
    "start": processes.START,
    "ps": processes.PS,
    "logs": logs,
    "kill": processes.KILL,
    "wait": processes.WAIT,
    "server": server,
    "kernels": kernels,
    "mcp": mcp,
    "sandbox": sandbox,
    "pools": pools,
    "agent": pools.AGENT,
    "curve": curve_keys,
    "kernelspec": kernelspec,
    "config": config,
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="stigmer",
        description="Run shell commands in warm kernels, locally or in sandboxes.",
    )
    parser.add_argument("--version", action="version", version=f"stigmer-kernel {__version__}")
    parser.add_argument("--runtime-dir", help="server runtime directory (STIGMER_RUNTIME_DIR)")
    add_remote_options(parser)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in COMMANDS.values():
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:2] == ["agent", "join"]:  # the agent's own options, which overlap ours
        return pools.AGENT.join(argv[2:])
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return COMMANDS[args.command].run(args)
    except (UsageError, KernelMismatch) as exc:  # an option the kernel does not have: usage
        return fail(str(exc), 2)
    except StigmerError as exc:
        return fail(str(exc))
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # `stigmer kernels info X | head -3`: quiet, as a Unix tool is
        silence(sys.stdout)
        return EXIT_BROKEN_PIPE
