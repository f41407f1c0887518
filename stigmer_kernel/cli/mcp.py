"""``stigmer mcp``: serve stigmer's kernels to an agent host over the Model Context Protocol.

stdio by default (``claude mcp add stigmer -- stigmer mcp``); ``--http HOST:PORT`` serves
streamable HTTP at /mcp behind a bearer token. The ``mcp`` SDK is an optional extra,
imported only here when the command runs.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from typing import Any

from ..errors import StigmerError
from .common import UsageError, load, remote_server

INSTALL_HINT = "stigmer mcp needs the MCP SDK: pip install 'stigmer-kernel[mcp]'"


def add_parser(sub: Any) -> None:
    parser = sub.add_parser(
        "mcp",
        help="serve kernels to agent hosts over the Model Context Protocol",
        description="Serve stigmer's kernels as MCP tools (run_command, start_process, "
        "read_file...). stdio by default, for hosts that start the server: "
        "`claude mcp add stigmer -- stigmer mcp`. The kernels are the server's, shared with "
        "`stigmer run` and `stigmer kernels list`. See docs/mcp.md.",
    )
    parser.add_argument(
        "--http",
        metavar="HOST:PORT",
        help="serve streamable HTTP at http://HOST:PORT/mcp instead of stdio (loopback only "
        "unless --allow-remote); a bearer token is required",
    )
    parser.add_argument(
        "--token-file",
        metavar="FILE",
        help="with --http: the bearer token, read from FILE (default: one made at start and "
        "printed on stderr)",
    )
    parser.add_argument(
        "--allow-remote",
        action="store_true",
        help="with --http: allow a host that is not loopback (whoever has the token runs "
        "commands as you)",
    )


def run(args: argparse.Namespace) -> int:
    if (args.token_file or args.allow_remote) and not args.http:
        raise UsageError("--token-file and --allow-remote go with --http HOST:PORT")
    try:
        import mcp.server.mcpserver  # noqa: F401
    except ImportError:
        print(f"stigmer: error: {INSTALL_HINT}", file=sys.stderr)
        return 2
    import anyio

    from ..client import AsyncClient
    from ..mcp import http
    from ..mcp.server import build, make_kernels

    if args.http:
        try:
            host, port = http.parse_bind(args.http, args.allow_remote)
        except StigmerError as exc:
            raise UsageError(str(exc)) from None
        token = http.read_token(args.token_file) if args.token_file else http.make_token()
    remote = remote_server(args)  # the global --remote options: a server on another host
    config = load(args)
    kernels = make_kernels(lambda: AsyncClient(config, remote=remote, inherit_env=remote is None))
    app = build(kernels)

    async def main() -> None:
        try:
            if args.http:
                where = f"http://{host if ':' not in host else f'[{host}]'}:{port}/mcp"
                print(f"stigmer mcp: serving {where}", file=sys.stderr)
                if not args.token_file:
                    print(f"stigmer mcp: token {token}", file=sys.stderr)
                sys.stderr.flush()
                await http.serve(app, host, port, token)
            else:
                await app.run_stdio_async()
        finally:
            await kernels.aclose()

    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C or the host closing: done
        anyio.run(main)
    return 0
