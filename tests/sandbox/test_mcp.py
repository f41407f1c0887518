"""``stigmer mcp`` with sandbox kernels: a command, a file and a background process in a
container, through the MCP SDK's client."""

from __future__ import annotations

from tests.conftest import Server
from tests.mcp.conftest import stdio_session, text_of
from tests.sandbox.conftest import sandbox_workspace


async def test_a_sandbox_kernel_runs_commands_files_and_processes(sandbox: Server) -> None:
    workspace = sandbox_workspace()
    async with stdio_session(sandbox.env) as session:
        ran = await session.call_tool(
            "run_command",
            {
                "command": 'echo "$STIGMER_SANDBOX"; pwd',
                "kernel": "sb",
                "mode": "sandbox",
                "cwd": workspace,
            },
        )
        assert not ran.is_error, text_of(ran)
        data = ran.structured_content
        assert data is not None and data["mode"] == "sandbox"
        assert data["stdout"] == "1\n/workspace\n"
        wrote = await session.call_tool(
            "write_file", {"path": "note.txt", "content": "in the box\n", "kernel": "sb"}
        )
        assert not wrote.is_error, text_of(wrote)
        read = await session.call_tool("read_file", {"path": "/workspace/note.txt", "kernel": "sb"})
        assert read.structured_content["text"] == "in the box\n"  # type: ignore[index]
        with open(f"{workspace}/note.txt") as handle:
            assert handle.read() == "in the box\n"  # the workspace is the host's folder
        started = await session.call_tool(
            "start_process", {"command": "echo from-box; sleep 60", "kernel": "sb"}
        )
        pid = started.structured_content["process_id"]  # type: ignore[index]
        for _ in range(20):
            out = await session.call_tool(
                "read_process_output", {"process_id": pid, "kernel": "sb", "wait": 1}
            )
            if out.structured_content["text"]:  # type: ignore[index]
                break
        assert out.structured_content["text"] == "from-box\n"  # type: ignore[index]
        await session.call_tool("shutdown_kernel", {"kernel": "sb"})
