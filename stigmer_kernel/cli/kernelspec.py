"""``stigmer kernelspec install``: a Jupyter kernelspec (stigmer-local, -sandbox or -auto) whose
kernel is a stigmer kernel (stigmer_kernel/jupyter/kernelspec.py writes it)."""

from __future__ import annotations

import argparse
from typing import Any


def add_parser(sub: Any) -> None:
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


def run(args: argparse.Namespace) -> int:
    from ..jupyter.kernelspec import SPECS, install

    path = install(args.mode, user=args.user, sys_prefix=args.sys_prefix, prefix=args.prefix)
    print(f"installed kernelspec {SPECS[args.mode][0]!r} ({SPECS[args.mode][1]}) in {path}")
    return 0
