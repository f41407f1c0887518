"""Streamable HTTP for ``stigmer mcp --http``: the SDK's app behind a bearer token.

Every HTTP request must carry ``Authorization: Bearer TOKEN``; one without it (or with
another token) gets 401 before the MCP app sees it. The token is compared in constant time.
"""

from __future__ import annotations

import hmac
import ipaddress
import os
import secrets
from typing import Any

from ..errors import StigmerError

#: Bytes of randomness in a token made at start.
TOKEN_BYTES = 32


def make_token() -> str:
    return secrets.token_urlsafe(TOKEN_BYTES)


def read_token(path: str) -> str:
    try:
        mode = os.stat(path).st_mode
        with open(path, encoding="utf-8") as handle:
            token = handle.read().strip()
    except OSError as exc:
        raise StigmerError(f"cannot read {path}: {exc.strerror}") from None
    if mode & 0o077:
        raise StigmerError(
            f"{path} may be read by others (mode {mode & 0o777:o}): chmod 600 {path}"
        )
    if len(token) < 16:
        raise StigmerError(f"{path} holds no token of at least 16 characters")
    return token


def parse_bind(text: str, allow_remote: bool) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:PORT`` for IPv6) to listen on; a host that is not loopback
    is refused unless ``allow_remote``."""
    host, sep, port_text = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise StigmerError(f"--http {text!r}: give HOST:PORT, e.g. 127.0.0.1:8765")
    if not allow_remote and not _loopback(host):
        raise StigmerError(
            f"--http {text!r} is not a loopback address: anyone who can reach it and has the "
            "token runs commands as you — bind 127.0.0.1, or pass --allow-remote to mean it"
        )
    return host, int(port_text)


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class BearerAuth:
    """An ASGI app that passes HTTP requests with the right bearer token to ``app``, and
    answers the others 401 (lifespan events pass through)."""

    def __init__(self, app: Any, token: str) -> None:
        self.app = app
        self._expected = f"Bearer {token}".encode()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            given = dict(scope.get("headers") or []).get(b"authorization", b"")
            if not hmac.compare_digest(given, self._expected):
                await _refuse(send)
                return
        await self.app(scope, receive, send)


async def _refuse(send: Any) -> None:
    body = b'{"error": "unauthorized: send Authorization: Bearer TOKEN (stigmer mcp printed it)"}'
    await send(
        {
            "type": "http.response.start",
            "status": 401,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"www-authenticate", b'Bearer realm="stigmer"'),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def serve(mcp_app: Any, host: str, port: int, token: str) -> None:
    """Serve ``mcp_app`` (an MCPServer) on ``host:port`` at /mcp until cancelled."""
    import uvicorn

    app = BearerAuth(mcp_app.streamable_http_app(host=host), token)
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="on")
    await uvicorn.Server(config).serve()
