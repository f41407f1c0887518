"""Fixtures of the MCP tests: ``stigmer mcp`` as a subprocess, driven by the MCP SDK's client."""

from __future__ import annotations

import contextlib
import sys
import tempfile
from collections.abc import AsyncIterator
from typing import Any

from mcp.client.session import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client

MCP = [sys.executable, "-m", "stigmer_kernel", "mcp"]


@contextlib.asynccontextmanager
async def stdio_session(env: dict[str, str]) -> AsyncIterator[ClientSession]:
    """An initialized MCP session with a ``stigmer mcp`` of its own, over stdio."""
    params = StdioServerParameters(command=MCP[0], args=MCP[1:], env=env)
    with tempfile.TemporaryFile("w+") as errlog:
        async with stdio_client(params, errlog=errlog) as (read, write):  # noqa: SIM117
            async with ClientSession(read, write) as session:
                await session.initialize()
                yield session


def text_of(result: Any) -> str:
    return "".join(getattr(block, "text", "") for block in result.content)
