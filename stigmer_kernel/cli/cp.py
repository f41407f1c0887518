"""``stigmer cp``: copy files and directory trees between here and a kernel, like ``docker cp``.

``stigmer cp LOCAL KERNEL:PATH`` uploads, ``stigmer cp KERNEL:PATH LOCAL`` downloads; ``-`` as
LOCAL is stdin (one file) or stdout. A relative PATH starts from the kernel shell's current
directory. Progress is drawn on stderr when it is a terminal and the copy is big; otherwise
nothing is printed unless something fails.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from typing import Any

from ..errors import FileError
from .common import UsageError, fail, load, remote_server

#: ``KERNEL:PATH``: a kernel name (as kernels.NAME_RE) before the first colon. A local path
#: with a colon in it is written ``./a:b`` or absolute.
_REMOTE = re.compile(r"^([A-Za-z0-9][A-Za-z0-9_.-]{0,63}):(.*)$", re.DOTALL)
#: Below this many bytes no bar is drawn: it would only flash.
_BAR_FROM = 8 * 1024 * 1024
#: Exit code of a copy that failed on a file (missing, permission, no space, checksum), as cp.
EXIT_FILE_ERROR = 1

_EPILOG = """\
examples:
  stigmer cp report.csv build:/tmp/           into a directory of kernel build
  stigmer cp build:out/result.json .          relative to the kernel's cwd
  stigmer cp ./src build:/workspace/src       a directory tree (made if missing)
  stigmer cp --mode sandbox data.bin box:     a kernel this creates runs in a sandbox
  tar c . | stigmer cp - build:/tmp/src.tar   stdin to a file; `-` as target: stdout

A directory is copied into an existing directory under its own name, or becomes the target if
that does not exist; SRC/. copies its contents only. Files are written atomically and checked
with sha256; a failed copy leaves the old file as it was.

exit codes:
  0    copied
  1    a file operation failed (no such file, permission denied, no space, checksum)
  2    usage error
  125  stigmer itself failed (one line on stderr says why)
"""


def add_parser(sub: Any) -> None:
    parser = sub.add_parser(
        "cp",
        help="copy files or directories between here and a kernel",
        description="Copy a file or a directory tree to or from a kernel's world (in a "
        "sandbox, the container's filesystem), as the kernel's user.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("source", metavar="SRC", help="LOCAL, KERNEL:PATH or - (stdin)")
    parser.add_argument("target", metavar="DEST", help="KERNEL:PATH, LOCAL or - (stdout)")
    parser.add_argument(
        "--mode",
        choices=["local", "sandbox", "auto", "remote"],
        help="execution mode of a kernel this creates; an existing kernel must have it "
        "(default: as for `stigmer run`)",
    )


def split(arg: str) -> tuple[str | None, str]:
    """``(kernel, path)`` of ``KERNEL:PATH``, else ``(None, arg)`` for a local path."""
    if arg.startswith(("/", ".")):
        return None, arg
    found = _REMOTE.match(arg)
    if found is None:
        return None, arg
    return found[1], found[2] or "."


def run(args: argparse.Namespace) -> int:
    source_kernel, source = split(args.source)
    target_kernel, target = split(args.target)
    if (source_kernel is None) == (target_kernel is None):
        raise UsageError(
            "give one KERNEL:PATH and one local path (or -), e.g. "
            "`stigmer cp file.txt build:/tmp/` or `stigmer cp build:/tmp/file.txt .`"
        )
    from ..client import Client

    remote = remote_server(args)
    bar = _Bar()
    try:
        with Client(load(args), remote=remote, inherit_env=remote is None) as c:
            if target_kernel is not None:
                if args.source == "-":
                    c.upload_stream(target_kernel, sys.stdin.buffer, target, mode=args.mode)
                else:
                    c.upload(target_kernel, source, target, mode=args.mode, progress=bar.update)
            else:
                assert source_kernel is not None
                if args.target == "-":
                    # Buffered, so that a write a signal cuts short is finished (a raw
                    # sys.stdout.buffer under PYTHONUNBUFFERED would drop the rest).
                    with os.fdopen(sys.stdout.fileno(), "wb", closefd=False) as out:
                        c.download_stream(source_kernel, source, out, mode=args.mode)
                else:
                    c.download(source_kernel, source, target, mode=args.mode, progress=bar.update)
    except FileError as exc:
        return fail(str(exc), EXIT_FILE_ERROR)
    except OSError as exc:  # a local file
        where = f"{exc.filename}: " if exc.filename else ""
        return fail(f"{where}{exc.strerror or exc}", EXIT_FILE_ERROR)
    finally:
        bar.close()
    return 0


class _Bar:
    """A transfer's bar on stderr, drawn only on a terminal and only for a big copy."""

    def __init__(self) -> None:
        from .progress import draws_bars

        self.on = draws_bars(sys.stderr)
        self.display: Any = None

    def update(self, done: int, total: int) -> None:
        if not self.on or total < _BAR_FROM:
            return
        if self.display is None:
            from .progress import ProgressDisplay

            self.display = ProgressDisplay(sys.stderr)
        self.display.transfer("copying", done, total)

    def close(self) -> None:
        if self.display is not None:
            self.display.close()


__all__ = ["add_parser", "run", "split"]
