"""The MCP tools for files in a kernel's world (the host, or its sandbox container):
read, write and list. Relative paths are relative to the kernel's cwd."""

from __future__ import annotations

from typing import Annotated, Any

from mcp.server.mcpserver import MCPServer
from mcp_types import CallToolResult, ToolAnnotations
from pydantic import Field

from ..errors import RequestError
from ..protocol import ErrorName
from .bounded import DEFAULT_LIMIT, bound
from .common import KEPT_BYTES, Kernel, Kernels, MaxBytes, Mode, guarded, result

Path = Annotated[
    str,
    Field(description="A path in the kernel's world; relative to the kernel's cwd.", min_length=1),
]


def register(app: MCPServer[Any], kernels: Kernels) -> None:
    @app.tool(annotations=ToolAnnotations(read_only_hint=True))
    async def read_file(
        path: Path,
        kernel: Kernel = "default",
        mode: Mode = None,
        max_bytes: MaxBytes = DEFAULT_LIMIT * 4,
    ) -> CallToolResult:
        """Read a text file (UTF-8) from a kernel's world. A long file keeps its head and tail;
        run_command with sed -n or head/tail reads a part of it. Files over 4 MiB are refused."""

        async def body() -> CallToolResult:
            client = await kernels.client()
            size = (await client.stat(kernel, path, mode=mode)).size
            if size > KEPT_BYTES:
                raise RequestError(
                    f"{path} is {size} bytes, more than read_file takes ({KEPT_BYTES}): "
                    f"read part of it with run_command (sed -n '1,200p' {path}, tail, grep)",
                    ErrorName.BAD_REQUEST,
                )
            data = await client.read_file(kernel, path, mode=mode)
            cut = bound(data, max_bytes)
            info = {"path": path, "size": len(data), "elided_bytes": cut.elided_bytes}
            return result(cut.text, {**info, "text": cut.text})

        return await guarded(body())

    @app.tool()
    async def write_file(
        path: Path,
        content: Annotated[str, Field(description="The file's whole new content (UTF-8).")],
        kernel: Kernel = "default",
        mode: Mode = None,
    ) -> CallToolResult:
        """Create or replace a file in a kernel's world, atomically (readers see the old file
        or the new one). Missing parent directories are an error."""

        async def body() -> CallToolResult:
            where = await (await kernels.client()).write_file(kernel, path, content, mode=mode)
            size = len(content.encode())
            return result(f"wrote {size} bytes to {where}", {"path": where, "size": size})

        return await guarded(body())

    @app.tool(annotations=ToolAnnotations(read_only_hint=True))
    async def list_dir(
        path: Annotated[str, Field(description="A directory; relative to the kernel's cwd.")] = ".",
        kernel: Kernel = "default",
        mode: Mode = None,
    ) -> CallToolResult:
        """List a directory in a kernel's world: name, type (file, dir, symlink), size."""

        async def body() -> CallToolResult:
            entries = await (await kernels.client()).list_dir(kernel, path, mode=mode)
            rows = [{"name": e.name, "type": e.type, "size": e.size} for e in entries]
            lines = [f"{e.name}/" if e.is_dir else f"{e.name}  {e.size}" for e in entries[:2000]]
            text = bound("\n".join(lines).encode(), DEFAULT_LIMIT).text
            return result(text or "(empty)", {"entries": rows})

        return await guarded(body())
