"""The MCP server: its tools for commands, kept output, kernels and auto routing (here), and
for background processes and files (processes.py, files.py).

A command's output is handed to the model bounded (bounded.py); when it was cut, the full
output is kept under an id for ``read_output``. A call that sent a progress token gets a
progress notification with the output's tail about every second while the command runs; a
call the host cancels interrupts its command.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Annotated, Any

from mcp.server.mcpserver import Context, MCPServer
from mcp_types import CallToolResult, ToolAnnotations
from pydantic import Field

from .._version import __version__
from ..client import AsyncClient
from ..client.result import ExecResult
from . import files, processes
from .bounded import DEFAULT_LIMIT, bound
from .common import (
    KEPT_BYTES,
    Env,
    Kernel,
    Kernels,
    MaxBytes,
    Mode,
    Stream,
    as_json,
    guarded,
    result,
)

#: Seconds between two progress notifications of a running command.
PROGRESS_EVERY = 1.0
#: Bytes of the output's tail a progress notification carries.
PROGRESS_TAIL = 2000

INSTRUCTIONS = """\
Shell commands in warm stigmer kernels: long-lived bash sessions that keep cd, variables,
functions and background processes between calls (kernel "default" unless named). Use
run_command for a command that ends; start_process for servers and watchers, then
read_process_output. Output is cut to its head and tail when long; read_output gets the rest.
A person can watch the same kernels with `stigmer kernels list`."""

Command = Annotated[
    str,
    Field(
        description="Shell code for bash, as typed at a prompt (pipes, &&, cd persist).",
        min_length=1,
    ),
]
Timeout = Annotated[
    float | None,
    Field(
        description="Seconds before the command and everything it started are ended "
        "(status timeout, output so far kept). Omit for the server's default.",
        gt=0,
    ),
]


def build(kernels: Kernels) -> MCPServer[Any]:
    """The server with every tool registered, using ``kernels``'s client."""
    app: MCPServer[Any] = MCPServer(
        "stigmer", instructions=INSTRUCTIONS, version=__version__, log_level="WARNING"
    )

    @app.tool(annotations=ToolAnnotations(open_world_hint=True))
    async def run_command(
        ctx: Context,
        command: Command,
        kernel: Kernel = "default",
        mode: Mode = None,
        timeout: Timeout = None,
        workdir: Annotated[
            str | None,
            Field(description="This command's working directory (the kernel's cwd stays)."),
        ] = None,
        cwd: Annotated[
            str | None,
            Field(description="Working directory of a NEW kernel this call creates."),
        ] = None,
        env: Env = None,
        max_output_bytes: MaxBytes = DEFAULT_LIMIT,
    ) -> CallToolResult:
        """Run a shell command in a kernel and return its stdout, stderr and exit code.

        State persists in the kernel: `cd`, exported variables and functions are there for
        the next call. A non-zero exit code or a timeout is an error result that still
        carries the output. Long output keeps its head and tail; the result's output_id
        and read_output give the whole (up to 4 MiB a stream)."""
        return await guarded(
            _run(kernels, ctx, command, kernel, mode, timeout, workdir, cwd, env, max_output_bytes)
        )

    @app.tool(annotations=ToolAnnotations(read_only_hint=True))
    async def read_output(
        output_id: Annotated[str, Field(description="The output_id of a run_command result.")],
        stream: Stream = "stdout",
        offset: Annotated[int, Field(description="Byte offset to start at.", ge=0)] = 0,
        length: Annotated[int, Field(description="Bytes to return.", ge=1, le=1_000_000)] = (
            DEFAULT_LIMIT
        ),
    ) -> CallToolResult:
        """Read part of a recent run_command's full output (stdout or stderr) by byte offset,
        for output that was cut in the result. The last 16 results' output is kept."""

        async def body() -> CallToolResult:
            data = kernels.output(output_id, stream)
            part = data[offset : offset + length]
            end = offset + len(part)
            text = part.decode("utf-8", "replace")
            info = {
                "offset": offset,
                "next": end,
                "total_bytes": len(data),
                "eof": end >= len(data),
            }
            return result(f"{text}\n[bytes {offset}-{end} of {len(data)}]", {**info, "text": text})

        return await guarded(body())

    @app.tool(annotations=ToolAnnotations(read_only_hint=True))
    async def list_kernels() -> CallToolResult:
        """List the kernels of the stigmer server: name, mode, state, idle seconds, clients, cwd."""

        async def body() -> CallToolResult:
            client = await kernels.client()
            rows = [
                {key: k.get(key) for key in ("name", "mode", "state", "idle", "clients", "cwd")}
                for k in await client.list_kernels()
            ]
            return result(as_json(rows), {"kernels": rows})

        return await guarded(body())

    @app.tool()
    async def interrupt_kernel(kernel: Kernel = "default") -> CallToolResult:
        """Interrupt the command running in a kernel, like Ctrl-C (the kernel and its state
        stay)."""

        async def body() -> CallToolResult:
            await (await kernels.client()).interrupt(kernel)
            return result(f"interrupted kernel {kernel!r}", {"kernel": kernel})

        return await guarded(body())

    @app.tool(annotations=ToolAnnotations(destructive_hint=True))
    async def shutdown_kernel(kernel: Kernel) -> CallToolResult:
        """Shut a kernel down: its shell, variables and background processes end. The next
        command naming it gets a fresh kernel."""

        async def body() -> CallToolResult:
            await (await kernels.client()).shutdown_kernel(kernel)
            return result(f"kernel {kernel!r} shut down", {"kernel": kernel})

        return await guarded(body())

    @app.tool(annotations=ToolAnnotations(read_only_hint=True))
    async def explain_routing(command: Command, kernel: Kernel = "default") -> CallToolResult:
        """Say where auto mode would run a command (local or sandbox) and why, without running
        it: package installs and system changes go to the sandbox."""
        return await guarded(_explain(kernels, command, kernel))

    processes.register(app, kernels)
    files.register(app, kernels)
    return app


async def _run(
    kernels: Kernels,
    ctx: Context,
    command: str,
    kernel: str,
    mode: str | None,
    timeout: float | None,
    workdir: str | None,
    cwd: str | None,
    env: dict[str, str] | None,
    limit: int,
) -> CallToolResult:
    client = await kernels.client()
    seen = {"stdout": bytearray(), "stderr": bytearray()}
    started = time.monotonic()

    def on_output(stream: str, data: bytes) -> None:
        tail = seen[stream]
        tail += data
        del tail[: max(0, len(tail) - PROGRESS_TAIL)]

    async def report() -> None:
        sent = 0
        while True:
            await asyncio.sleep(PROGRESS_EVERY)
            text = bytes(seen["stdout"] + seen["stderr"]).decode("utf-8", "replace")
            sent += 1
            elapsed = time.monotonic() - started
            await ctx.report_progress(sent, None, f"{elapsed:.0f}s; output so far: {text}")

    meta = ctx.request_context.meta
    wants_progress = meta is not None and meta.get("progress_token") is not None
    reporter = asyncio.create_task(report()) if wants_progress else None
    try:
        res = await client.execute(
            command,
            kernel=kernel,
            mode=mode,
            timeout=timeout,
            workdir=workdir,
            cwd=cwd,
            env=env,
            output_limit=KEPT_BYTES,
            on_output=on_output if wants_progress else None,
        )
    finally:  # (a call the host cancels interrupts its command: execute does, and only it)
        if reporter is not None:
            reporter.cancel()
    return _result(kernels, res, limit)


def _result(kernels: Kernels, res: ExecResult, limit: int) -> CallToolResult:
    out, err = bound(res.stdout_bytes, limit), bound(res.stderr_bytes, limit)
    data: dict[str, Any] = {
        "exit_code": res.exit_code,
        "status": res.status,
        "kernel": res.kernel,
        "mode": res.mode,
        "duration": round(res.duration, 4),
        "cwd": res.cwd,
        "stdout": out.text,
        "stderr": err.text,
        "truncated": out.truncated or err.truncated or res.truncated,
        "stdout_bytes": len(res.stdout_bytes) + res.stdout_dropped,
        "stderr_bytes": len(res.stderr_bytes) + res.stderr_dropped,
    }
    if res.auto:
        data["auto"] = res.auto
    if res.evalue:
        data["error"] = f"{res.ename}: {res.evalue}"
    if out.truncated or err.truncated:
        data["output_id"] = kernels.keep(res.stdout_bytes, res.stderr_bytes)
    if res.truncated:
        data["not_kept_bytes"] = res.stdout_dropped + res.stderr_dropped
    head = f"exit code {res.exit_code}, status {res.status}, {res.duration:.2f}s"
    head += f", kernel {res.kernel} ({res.mode})"
    if "output_id" in data:
        head += f"; output cut: read_output(output_id={data['output_id']!r}) has it all"
    if "error" in data:
        head += f"\n{data['error']}"
    text = head
    if out.text:
        text += f"\n--- stdout ---\n{out.text}"
    if err.text:
        text += f"\n--- stderr ---\n{err.text}"
    failed = res.status != "ok" or (res.exit_code or 0) != 0
    return result(text, data, error=failed)


async def _explain(kernels: Kernels, command: str, kernel: str) -> CallToolResult:
    from ..auto import Escalation, explain

    client = await kernels.client()
    info = next((k for k in await client.list_kernels() if k["name"] == kernel), {})
    sticky = client.config.auto_sticky
    if "auto_sticky" not in client.config.explicit:
        sticky = bool((await client.server_info()).get("auto_sticky", sticky))
    text = explain(
        command,
        False,
        escalation=Escalation.from_dict(info.get("escalated")),
        sticky=sticky,
        workspace=info.get("workspace"),
    )
    where, _, why = text.partition(": ")
    return result(text, {"mode": where, "reason": why})


def make_kernels(make_client: Callable[[], AsyncClient] | None = None) -> Kernels:
    """The :class:`Kernels` of ``stigmer mcp``: by default an ``AsyncClient(inherit_env=True)``,
    as the CLI's, so local kernels it creates start with this process's environment."""
    return Kernels(make_client or (lambda: AsyncClient(inherit_env=True)))
