"""``stigmer curve keygen|authorize|server-key``: CurveZMQ keys for clients and agents that
reach a server from another host (the keys themselves: stigmer_kernel/curve.py)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from ..errors import CurveKeyError, StigmerError
from ..runtime import RuntimeDir
from .common import load


def add_parser(sub: Any) -> None:
    curve = sub.add_parser("curve", help="CurveZMQ keys for clients and agents on other hosts")
    cvsub = curve.add_subparsers(dest="action", metavar="ACTION", required=True)
    keygen = cvsub.add_parser("keygen", help="make a key pair NAME.key / NAME.key_secret")
    keygen.add_argument("name", help="base name of the two files")
    keygen.add_argument("--dir", default=".", help="where to write them (default: here)")
    authorize = cvsub.add_parser("authorize", help="let the holder of a public key connect")
    authorize.add_argument("public_key", help="a NAME.key file made by keygen")
    authorize.add_argument(
        "--pool", metavar="NAME", help="authorize it for agent pool NAME only (its members)"
    )
    cvsub.add_parser("server-key", help="print the path of this server's public key")


def run(args: argparse.Namespace) -> int:
    from .. import curve

    config = load(args)
    runtime = RuntimeDir(config.runtime_dir)
    if args.action == "keygen":
        os.makedirs(args.dir, exist_ok=True)
        public, secret = curve.keygen(args.dir, args.name)
        print(f"public key: {public}\nsecret key: {secret} (keep it on the host that connects)")
        return 0
    if args.action == "authorize":
        runtime.ensure()
        try:
            target = curve.authorize(runtime.path, Path(args.public_key), args.pool)
        except (OSError, CurveKeyError) as exc:
            raise StigmerError(f"cannot authorize {args.public_key}: {exc}") from None
        if args.pool:
            print(f"authorized {target.name}: its holder may join pool {args.pool} here")
        else:
            print(
                f"authorized {target.name}: its holder may connect to {runtime.path}'s TCP "
                "endpoints"
            )
        return 0
    runtime.ensure()  # server-key
    print(curve.ensure_server_keys(runtime.path))
    return 0
