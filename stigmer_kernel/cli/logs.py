"""``stigmer logs``: a background process's output, as bytes, from any offset; ``-f`` follows
it until the process exits (long-polls: nothing replayed, nothing skipped but what the
process's journal dropped before it was read, which a line on stderr reports). A closed
stdout (``stigmer logs -f p1 | head``) ends it quietly, as SIGPIPE ends a Unix tool.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from .common import EXIT_BROKEN_PIPE, UsageError, silence, write_all
from .processes import client_for, split_ref


def add_parser(sub: Any) -> None:
    parser = sub.add_parser(
        "logs",
        help="print a background process's output",
        description="Print the stdout (or, with --stderr, the stderr) of a background process "
        "as bytes, from offset --since; with -f, follow it until the process exits.",
    )
    parser.add_argument("--kernel", "-k", default="default", help="kernel name")
    parser.add_argument("--follow", "-f", action="store_true", help="follow until it exits")
    parser.add_argument("--since", type=int, default=0, metavar="N", help="from byte offset N")
    parser.add_argument("--stderr", action="store_true", help="its stderr instead of stdout")
    parser.add_argument("id", help="the process id (from stigmer start or stigmer ps)")


def run(args: argparse.Namespace) -> int:
    if args.since < 0:
        raise UsageError("--since takes a byte offset >= 0")
    pid, side = split_ref(args.id)
    stream = "stderr" if args.stderr else "stdout"
    out = sys.stdout.buffer
    try:
        asyncio.run(_logs(args, pid, side, stream, out))
    except BrokenPipeError:
        silence(out)
        return EXIT_BROKEN_PIPE
    return 0


async def _logs(
    args: argparse.Namespace, pid: str, side: str | None, stream: str, out: Any
) -> None:
    async with client_for(args) as client:
        proc = client.process(args.kernel, pid, side)
        since = args.since
        while True:
            chunk = await proc.output(since, stream, wait=30.0 if args.follow else 0.0)
            if chunk.offset > since:
                print(
                    f"stigmer: {chunk.offset - since} bytes of {stream} before offset "
                    f"{chunk.offset} were dropped (its journal keeps the last ones only)",
                    file=sys.stderr,
                )
            if chunk.data:
                write_all(out, chunk.data)
            since = chunk.next
            if chunk.data and since < chunk.end:
                continue  # more is there already
            if not args.follow or (not chunk.data and not chunk.running):
                return
