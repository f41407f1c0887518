"""The MCP tools for background processes: start, list, read output, write stdin, signal.

A process runs in its kernel until it exits or the kernel ends; its output is journaled by
the kernel's agent, so any session (or ``stigmer logs``) can read it by offset.
"""

from __future__ import annotations

import time
from typing import Annotated, Any

from mcp.server.mcpserver import MCPServer
from mcp_types import CallToolResult, ToolAnnotations
from pydantic import Field

from ..client import AsyncProcess
from ..errors import RequestError
from ..protocol import ErrorName
from .bounded import DEFAULT_LIMIT
from .common import Env, Kernel, Kernels, Mode, ProcessId, Stream, guarded, result

Wait = Annotated[
    float,
    Field(
        description="Seconds to wait for new output (or the exit) before answering.", ge=0, le=30
    ),
]


def _handle(client: Any, kernel: str, ref: str) -> AsyncProcess:
    pid, _, side = ref.partition("@")
    if not pid or side not in ("", "local", "sandbox"):
        raise RequestError(
            f"{ref!r} is not a process id (p1, or p1@local / p1@sandbox)", ErrorName.BAD_REQUEST
        )
    handle: AsyncProcess = client.process(kernel, pid, side or None)
    return handle


def register(app: MCPServer[Any], kernels: Kernels) -> None:
    @app.tool(annotations=ToolAnnotations(open_world_hint=True))
    async def start_process(
        command: Annotated[
            str, Field(description="Shell code to run in the background.", min_length=1)
        ],
        kernel: Kernel = "default",
        mode: Mode = None,
        workdir: Annotated[str | None, Field(description="Its working directory.")] = None,
        env: Env = None,
    ) -> CallToolResult:
        """Start a long-running command (a dev server, a watcher, a build) as a background
        process of a kernel and return its id at once. It runs in the kernel's cwd and
        environment until it exits or the kernel is shut down; read its output with
        read_process_output, stop it with signal_process."""

        async def body() -> CallToolResult:
            client = await kernels.client()
            proc = await client.start(command, kernel=kernel, mode=mode, env=env, workdir=workdir)
            ref = f"{proc.id}@{proc.side}" if proc.side else proc.id
            data = {"process_id": ref, "kernel": kernel, "pid": proc.pid}
            return result(f"started {ref} (pid {proc.pid}) in kernel {kernel!r}", data)

        return await guarded(body())

    @app.tool(annotations=ToolAnnotations(read_only_hint=True))
    async def list_processes(kernel: Kernel = "default") -> CallToolResult:
        """List a kernel's background processes: id, pid, state, exit code, output sizes."""

        async def body() -> CallToolResult:
            client = await kernels.client()
            now = time.time()
            rows = [
                {
                    "process_id": p.id,
                    "command": p.command,
                    "pid": p.pid,
                    "state": p.state,
                    "exit_code": p.exit_code,
                    "signal": p.signal,
                    "age": round(now - p.started, 1),
                    "stdout_bytes": p.stdout_bytes,
                    "stderr_bytes": p.stderr_bytes,
                }
                for p in await client.processes(kernel)
            ]
            lines = [
                f"{r['process_id']} pid {r['pid']} {r['state']}"
                + ("" if r["exit_code"] is None else f" exit {r['exit_code']}")
                + f" out {r['stdout_bytes']}B err {r['stderr_bytes']}B: {r['command']}"
                for r in rows
            ]
            return result("\n".join(lines) or "no background processes", {"processes": rows})

        return await guarded(body())

    @app.tool(annotations=ToolAnnotations(read_only_hint=True))
    async def read_process_output(
        process_id: ProcessId,
        kernel: Kernel = "default",
        stream: Stream = "stdout",
        offset: Annotated[
            int, Field(description="Byte offset to read from; pass the last answer's next.", ge=0)
        ] = 0,
        max_bytes: Annotated[
            int,
            Field(description="At most this many bytes; read on from next.", ge=1, le=1_000_000),
        ] = DEFAULT_LIMIT,
        wait: Wait = 0,
    ) -> CallToolResult:
        """Read a background process's output from a byte offset, and its state (running or
        its exit code). Call again with offset=next for what follows (end is the stream's
        size so far); wait makes the call wait up to that many seconds for new output."""

        async def body() -> CallToolResult:
            client = await kernels.client()
            handle = _handle(client, kernel, process_id)
            chunk = await handle.output(offset, stream, max_bytes=max_bytes, wait=wait)
            text = chunk.data.decode("utf-8", "replace")
            data = {
                "text": text,
                "offset": chunk.offset,
                "next": chunk.next,
                "end": chunk.end,
                "dropped": chunk.dropped,
                "running": chunk.running,
                "exit_code": chunk.exit_code,
            }
            state = "running" if chunk.running else f"exited with {chunk.exit_code}"
            head = (
                f"[{process_id} {state}; {stream} bytes {chunk.offset}-{chunk.next} of {chunk.end}]"
            )
            return result(f"{head}\n{text}", data)

        return await guarded(body())

    @app.tool()
    async def write_process_stdin(
        process_id: ProcessId,
        data: Annotated[str, Field(description="Text to write to its stdin (add \\n for a line).")],
        kernel: Kernel = "default",
        close: Annotated[bool, Field(description="Close its stdin afterwards (it reads EOF).")] = (
            False
        ),
    ) -> CallToolResult:
        """Write text to a background process's standard input."""

        async def body() -> CallToolResult:
            handle = _handle(await kernels.client(), kernel, process_id)
            if data:
                await handle.write_stdin(data)
            if close:
                await handle.close_stdin()
            text = f"wrote {len(data.encode())} bytes" + (", closed stdin" if close else "")
            return result(text, {"written": len(data.encode()), "closed": close})

        return await guarded(body())

    @app.tool(annotations=ToolAnnotations(destructive_hint=True))
    async def signal_process(
        process_id: ProcessId,
        kernel: Kernel = "default",
        signal: Annotated[
            str, Field(description="Signal name or number: TERM (stop), INT, KILL, HUP...")
        ] = "TERM",
    ) -> CallToolResult:
        """Send a signal to a background process's process group (TERM stops it)."""

        async def body() -> CallToolResult:
            handle = _handle(await kernels.client(), kernel, process_id)
            await handle.signal(int(signal) if signal.isdigit() else signal)
            return result(f"sent {signal} to {process_id}", {"signal": signal})

        return await guarded(body())
