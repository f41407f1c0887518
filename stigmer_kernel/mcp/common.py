"""What the tools share: the one stigmer client, kept full outputs, and tool results.

Every tool's body runs in :func:`guarded`: a stigmer error (``ModeUnavailable``,
``KernelDied``, a missing file...) becomes a tool result with ``isError`` and the error's
message, so the model reads it and the server carries on.
"""

from __future__ import annotations

import asyncio
import collections
import json
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, Literal

from mcp_types import CallToolResult, TextContent
from pydantic import Field

from ..client import AsyncClient
from ..errors import RequestError, StigmerError
from ..protocol import ErrorName

#: How many results' full output stay retrievable with ``read_output``.
KEPT_RESULTS = 16
#: Bytes of each stream a result keeps (more is counted, not kept: run it as a process).
KEPT_BYTES = 4 * 1024 * 1024

# Argument types the tools share (their descriptions are what the model reads).
Kernel = Annotated[
    str,
    Field(
        description="Kernel name: a warm bash session that keeps cd, variables and functions "
        "between calls; created on first use. Several agents may share one by name.",
        min_length=1,
    ),
]
Mode = Annotated[
    Literal["local", "sandbox", "auto"] | None,
    Field(
        description="Where a NEW kernel runs: local (this host), sandbox (a Docker container) "
        "or auto (per command: installs and system changes go to the sandbox). Omit to use "
        "the existing kernel's mode or the server's default."
    ),
]
Env = Annotated[
    dict[str, str] | None,
    Field(description="Variables exported for this command only (the next one does not see them)."),
]
Stream = Annotated[Literal["stdout", "stderr"], Field(description="Which output stream.")]
ProcessId = Annotated[
    str,
    Field(
        description="The id start_process returned (p1, or p1@sandbox for an auto kernel).",
        min_length=1,
    ),
]
MaxBytes = Annotated[
    int,
    Field(
        description="At most this many bytes of output per stream in the answer; longer output "
        "keeps its head and tail, and says how much of the middle was left out.",
        ge=0,
        le=1_000_000,
    ),
]


class Kernels:
    """The stigmer client all sessions of this MCP server share, made on first use, and the
    full output of its last :data:`KEPT_RESULTS` commands."""

    def __init__(self, make_client: Callable[[], AsyncClient]) -> None:
        self._make_client = make_client
        self._client: AsyncClient | None = None
        self._lock = asyncio.Lock()
        self._outputs: collections.OrderedDict[str, dict[str, bytes]] = collections.OrderedDict()
        self._next_output = 0

    async def client(self) -> AsyncClient:
        async with self._lock:
            if self._client is None:
                client = self._make_client()
                await client.connect()
                self._client = client
            return self._client

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def keep(self, stdout: bytes, stderr: bytes) -> str:
        """Keep one result's output; return its id (the oldest kept is forgotten)."""
        self._next_output += 1
        output_id = f"o{self._next_output}"
        self._outputs[output_id] = {"stdout": stdout, "stderr": stderr}
        while len(self._outputs) > KEPT_RESULTS:
            self._outputs.popitem(last=False)
        return output_id

    def output(self, output_id: str, stream: str) -> bytes:
        try:
            return self._outputs[output_id][stream]
        except KeyError:
            known = ", ".join(self._outputs) or "none"
            raise RequestError(
                f"no kept output {output_id!r} (this server keeps the last {KEPT_RESULTS} "
                f"results' output; kept now: {known})",
                ErrorName.BAD_REQUEST,
            ) from None


def result(text: str, data: dict[str, Any] | None = None, error: bool = False) -> CallToolResult:
    """A tool result: ``text`` for the model, ``data`` as structured content."""
    return CallToolResult(
        content=[TextContent(type="text", text=text)],
        structured_content=data,
        is_error=error,
    )


def as_json(data: Any) -> str:
    return json.dumps(data, indent=1, default=str)


async def guarded(body: Awaitable[CallToolResult]) -> CallToolResult:
    """``body``'s result, or an ``isError`` result naming the stigmer error it raised."""
    try:
        return await body
    except StigmerError as exc:
        name = getattr(exc, "ename", None) or type(exc).__name__
        return result(f"{name}: {exc}", {"error": str(name), "message": str(exc)}, error=True)
    except TimeoutError as exc:
        name = ErrorName.TIMEOUT.value
        return result(f"{name}: {exc}", {"error": name, "message": str(exc)}, error=True)
