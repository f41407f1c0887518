"""``stigmer pools list``: each agent pool's members (idle, busy), the kernels waiting for one,
and how many members joined and left (the broker also writes them to ``RUNTIME_DIR/pools.json``
and ``pools.prom`` for an autoscaler); ``stigmer agent join --pool NAME``: this host's agent
joins a pool (stigmer_kernel/agent/member.py)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from .common import load, remote_server

_COLUMNS = ("members", "idle", "busy", "waiting", "joined", "left")


def add_parser(sub: Any) -> None:
    pools = sub.add_parser("pools", help="agent pools: members, idle, busy, waiting")
    psub = pools.add_subparsers(dest="action", metavar="ACTION", required=True)
    listing = psub.add_parser("list", help="each pool's figures")
    listing.add_argument("--json", action="store_true", help="as JSON")


def run(args: argparse.Namespace) -> int:
    from ..client import Client

    with Client(load(args), autostart=False, remote=remote_server(args)) as client:
        pools = client.server_info().get("pools", {})
    if args.json:
        print(json.dumps(pools))
        return 0
    if not pools:
        print("no agent pool has members or waiting kernels")
        return 0
    print(f"{'POOL':<20}" + "".join(f"{name.upper():>9}" for name in _COLUMNS))
    for name, row in pools.items():
        print(f"{name:<20}" + "".join(f"{row.get(c, 0):>9}" for c in _COLUMNS))
    return 0


class Agent:
    """``stigmer agent join``: the execution agent, run here (a pool member or a remote
    agent): the same options as ``python -m stigmer_kernel.agent``."""

    def add_parser(self, sub: Any) -> None:
        agent = sub.add_parser("agent", help="run an execution agent that dials a server")
        asub = agent.add_subparsers(dest="action", metavar="ACTION", required=True)
        join = asub.add_parser(
            "join",
            help="join a pool (--pool NAME) or serve a kernel (--join NAME) of a server",
            description="Options as for python -m stigmer_kernel.agent (see its --help).",
        )
        join.add_argument(
            "agent_args",
            nargs=argparse.REMAINDER,
            help="--pool NAME --server tcp://HOST:PORT --server-key FILE --curve-cert FILE "
            "(or the keys in STIGMER_POOL_SERVER_KEY, STIGMER_POOL_CURVE_SECRET), ...",
        )

    def run(self, args: argparse.Namespace) -> int:
        return self.join(list(args.agent_args))

    def join(self, argv: list[str]) -> int:
        """``stigmer agent join ARGS``: cli/main.py hands ARGS here unparsed (they are the
        agent's, and some share a name with stigmer's own options)."""
        from ..agent.__main__ import main

        return main(argv)


AGENT = Agent()
