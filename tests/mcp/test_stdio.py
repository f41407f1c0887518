"""``stigmer mcp`` over stdio, as an agent host runs it, against a real stigmer server."""

from __future__ import annotations

import json
import subprocess
import time
from typing import Any

import anyio

from tests.conftest import Server, short_tempdir
from tests.mcp.conftest import MCP, stdio_session, text_of

TOOLS = {
    "run_command",
    "read_output",
    "start_process",
    "list_processes",
    "read_process_output",
    "write_process_stdin",
    "signal_process",
    "read_file",
    "write_file",
    "list_dir",
    "list_kernels",
    "interrupt_kernel",
    "shutdown_kernel",
    "explain_routing",
}


async def test_tools_are_listed_with_schemas_and_descriptions(server: Server) -> None:
    async with stdio_session(server.env) as session:
        tools = {tool.name: tool for tool in (await session.list_tools()).tools}
    assert set(tools) == TOOLS
    for tool in tools.values():
        assert len(tool.description or "") > 40, tool.name
        assert tool.input_schema["type"] == "object"
        for name, prop in tool.input_schema.get("properties", {}).items():
            assert prop.get("description"), f"{tool.name}.{name} has no description"
    run = tools["run_command"].input_schema
    assert run["required"] == ["command"]
    assert {"kernel", "mode", "timeout", "workdir", "cwd", "env"} <= set(run["properties"])


async def test_commands_run_fail_time_out_and_keep_their_state(server: Server) -> None:
    async with stdio_session(server.env) as session:
        ok = await session.call_tool(
            "run_command", {"command": "cd /tmp && echo out && echo err >&2", "kernel": "k1"}
        )
        assert not ok.is_error
        data: Any = ok.structured_content
        assert (data["stdout"], data["stderr"], data["exit_code"]) == ("out\n", "err\n", 0)
        assert data["status"] == "ok" and data["truncated"] is False
        assert "out" in text_of(ok) and "exit code 0" in text_of(ok)
        again = await session.call_tool("run_command", {"command": "pwd", "kernel": "k1"})
        assert again.structured_content["stdout"] == "/tmp\n"  # type: ignore[index]

        failed = await session.call_tool(
            "run_command", {"command": "echo bad >&2; exit 3", "kernel": "k1"}
        )
        assert failed.is_error
        assert failed.structured_content["exit_code"] == 3  # type: ignore[index]
        assert "bad" in text_of(failed) and "exit code 3" in text_of(failed)

        slow = await session.call_tool(
            "run_command", {"command": "echo started; sleep 30", "kernel": "k1", "timeout": 0.5}
        )
        assert slow.is_error
        assert slow.structured_content["status"] == "timeout"  # type: ignore[index]
        assert slow.structured_content["stdout"] == "started\n"  # type: ignore[index]

        env = await session.call_tool(
            "run_command",
            {"command": 'echo "$GREETING"', "kernel": "k1", "env": {"GREETING": "hi"}},
        )
        assert env.structured_content["stdout"] == "hi\n"  # type: ignore[index]


async def test_long_output_is_bounded_and_the_rest_is_retrievable(server: Server) -> None:
    async with stdio_session(server.env) as session:
        res = await session.call_tool(
            "run_command", {"command": "seq 1 100000", "max_output_bytes": 2000}
        )
        data: Any = res.structured_content
        assert data["truncated"] and data["stdout_bytes"] == 588895
        assert data["stdout"].startswith("1\n2\n") and data["stdout"].endswith("99999\n100000\n")
        assert "lines elided" in data["stdout"] and len(data["stdout"]) < 2100
        part = await session.call_tool(
            "read_output", {"output_id": data["output_id"], "offset": 588895 - 7, "length": 100}
        )
        assert part.structured_content["text"] == "100000\n"  # type: ignore[index]
        assert part.structured_content["eof"] is True  # type: ignore[index]
        gone = await session.call_tool("read_output", {"output_id": "o999"})
        assert gone.is_error and "no kept output" in text_of(gone)


async def test_long_commands_report_progress_with_output_so_far(server: Server) -> None:
    seen: list[str] = []

    async def progress(done: float, total: float | None, message: str | None) -> None:
        seen.append(message or "")

    async with stdio_session(server.env) as session:
        res = await session.call_tool(
            "run_command",
            {"command": "echo first; sleep 1.5; echo second; sleep 1"},
            progress_callback=progress,
        )
    assert res.structured_content["stdout"] == "first\nsecond\n"  # type: ignore[index]
    assert seen and "first" in seen[0]
    assert any("second" in message for message in seen)


async def test_background_processes_start_read_write_and_stop(server: Server) -> None:
    async with stdio_session(server.env) as session:
        started = await session.call_tool(
            "start_process", {"command": "echo ready; cat", "kernel": "bg"}
        )
        assert not started.is_error, text_of(started)
        pid = started.structured_content["process_id"]  # type: ignore[index]
        await session.call_tool(
            "write_process_stdin", {"process_id": pid, "kernel": "bg", "data": "echoed\n"}
        )
        out: Any = None
        for _ in range(20):
            out = (
                await session.call_tool(
                    "read_process_output", {"process_id": pid, "kernel": "bg", "wait": 1}
                )
            ).structured_content
            if "echoed" in out["text"]:
                break
        assert out["text"] == "ready\nechoed\n" and out["running"]
        first = await session.call_tool(
            "read_process_output", {"process_id": pid, "kernel": "bg", "max_bytes": 3}
        )
        assert first.structured_content["text"] == "rea"  # type: ignore[index]
        rest = await session.call_tool(
            "read_process_output",
            {"process_id": pid, "kernel": "bg", "offset": first.structured_content["next"]},  # type: ignore[index]
        )
        assert rest.structured_content["text"] == "dy\nechoed\n"  # type: ignore[index]
        listed = await session.call_tool("list_processes", {"kernel": "bg"})
        assert pid in text_of(listed) and "running" in text_of(listed)
        await session.call_tool("signal_process", {"process_id": pid, "kernel": "bg"})
        for _ in range(20):
            end = await session.call_tool(
                "read_process_output",
                {"process_id": pid, "kernel": "bg", "offset": out["next"], "wait": 1},
            )
            if not end.structured_content["running"]:  # type: ignore[index]
                break
        assert end.structured_content["exit_code"] == 143  # type: ignore[index]


async def test_files_are_written_read_and_listed(server: Server) -> None:
    folder = short_tempdir("stg-mcp-")
    async with stdio_session(server.env) as session:
        wrote = await session.call_tool(
            "write_file", {"path": f"{folder}/note.txt", "content": "héllo\n"}
        )
        assert not wrote.is_error, text_of(wrote)
        read = await session.call_tool("read_file", {"path": f"{folder}/note.txt"})
        assert read.structured_content["text"] == "héllo\n"  # type: ignore[index]
        listed = await session.call_tool("list_dir", {"path": folder})
        assert listed.structured_content["entries"] == [  # type: ignore[index]
            {"name": "note.txt", "type": "file", "size": 7}
        ]
        await session.call_tool(
            "run_command", {"command": f"head -c 5000000 /dev/zero > {folder}/big"}
        )
        big = await session.call_tool("read_file", {"path": f"{folder}/big"})
        assert big.is_error and "5000000 bytes" in text_of(big) and "sed -n" in text_of(big)
        missing = await session.call_tool("read_file", {"path": f"{folder}/nope"})
        assert missing.is_error and "nope" in text_of(missing)


async def test_bad_arguments_are_refused_and_the_server_carries_on(server: Server) -> None:
    async with stdio_session(server.env) as session:
        bad = await session.call_tool("run_command", {"command": "true", "timeout": "soon"})
        assert bad.is_error and "timeout" in text_of(bad)
        missing = await session.call_tool("run_command", {})
        assert missing.is_error and "command" in text_of(missing)
        mode = await session.call_tool("run_command", {"command": "true", "mode": "mars"})
        assert mode.is_error and "mode" in text_of(mode)
        fine = await session.call_tool("run_command", {"command": "echo still here"})
        assert fine.structured_content["stdout"] == "still here\n"  # type: ignore[index]


async def test_kernels_are_listed_explained_and_shut_down(server: Server) -> None:
    async with stdio_session(server.env) as session:
        await session.call_tool("run_command", {"command": "true", "kernel": "seen"})
        listed = await session.call_tool("list_kernels", {})
        names = [k["name"] for k in listed.structured_content["kernels"]]  # type: ignore[index]
        assert "seen" in names
        why = await session.call_tool("explain_routing", {"command": "apt-get install -y jq"})
        assert why.structured_content["mode"] == "sandbox"  # type: ignore[index]
        why = await session.call_tool("explain_routing", {"command": "ls -la"})
        assert why.structured_content["mode"] == "local"  # type: ignore[index]
        gone = await session.call_tool("shutdown_kernel", {"kernel": "seen"})
        assert not gone.is_error
        listed = await session.call_tool("list_kernels", {})
        names = [k["name"] for k in listed.structured_content["kernels"]]  # type: ignore[index]
        assert "seen" not in names


async def test_a_cancelled_call_interrupts_its_command(server: Server) -> None:
    async with stdio_session(server.env) as session:
        with anyio.move_on_after(1):
            await session.call_tool("run_command", {"command": "sleep 30", "kernel": "cx"})
        started = time.monotonic()
        res = await session.call_tool("run_command", {"command": "echo next", "kernel": "cx"})
        assert res.structured_content["stdout"] == "next\n"  # type: ignore[index]
        assert time.monotonic() - started < 10  # not queued behind the 30 s sleep


async def test_a_stigmer_error_is_an_error_result(server: Server) -> None:
    async with stdio_session(server.env) as session:
        await session.call_tool("run_command", {"command": "true", "kernel": "loc"})
        res = await session.call_tool(
            "run_command", {"command": "true", "kernel": "loc", "cwd": "/"}
        )
        assert res.is_error and "loc" in text_of(res), text_of(res)


def test_a_malformed_call_is_a_protocol_error(server: Server) -> None:
    """Raw JSON-RPC: arguments that are not an object, and an unknown method, are JSON-RPC
    errors; a tool the server lacks is an isError result (as the SDK does)."""
    proc = subprocess.Popen(
        MCP, env=server.env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdin is not None and proc.stdout is not None

    def ask(message: dict[str, Any]) -> dict[str, Any]:
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(json.dumps(message) + "\n")
        proc.stdin.flush()
        if "id" not in message:
            return {}
        reply: dict[str, Any] = json.loads(proc.stdout.readline())
        return reply

    try:
        hello = {"name": "test", "version": "1"}
        params = {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": hello}
        assert "result" in ask(
            {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": params}
        )
        ask({"jsonrpc": "2.0", "method": "notifications/initialized"})
        call = {"name": "run_command", "arguments": "echo hi"}
        bad = ask({"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": call})
        assert bad["error"]["code"] == -32602
        call = {"name": "no_such_tool", "arguments": {}}
        unknown = ask({"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": call})
        assert unknown["result"]["isError"] is True
        nope = ask({"jsonrpc": "2.0", "id": 4, "method": "nope/method", "params": {}})
        assert nope["error"]["code"] == -32601
    finally:
        proc.stdin.close()
        proc.wait(timeout=10)
        proc.stdout.close()
