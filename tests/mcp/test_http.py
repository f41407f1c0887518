"""``stigmer mcp --http``: streamable HTTP on loopback behind a bearer token; sessions that
share a kernel; the refusals of the command line."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import httpx2
import pytest
from mcp.client.session import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client

from tests.conftest import Server, short_tempdir
from tests.mcp.conftest import MCP, stdio_session


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def http_server(server: Server) -> Iterator[tuple[str, str]]:
    """A ``stigmer mcp --http`` on a free loopback port: its URL and the token it printed."""
    port = _free_port()
    proc = subprocess.Popen(
        [*MCP, "--http", f"127.0.0.1:{port}"], env=server.env, stderr=subprocess.PIPE, text=True
    )
    assert proc.stderr is not None
    lines = [proc.stderr.readline(), proc.stderr.readline()]
    token = lines[1].split("token ")[1].strip()
    url = f"http://127.0.0.1:{port}/mcp"
    deadline = time.monotonic() + 10
    while True:  # the token is printed before uvicorn listens
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                break
        assert time.monotonic() < deadline and proc.poll() is None, lines
        time.sleep(0.05)
    yield url, token
    proc.terminate()
    proc.wait(timeout=10)
    proc.stderr.close()


async def _call(url: str, token: str, tool: str, args: dict[str, Any]) -> Any:
    headers = {"Authorization": f"Bearer {token}"}
    async with create_mcp_http_client(headers=headers) as http:  # noqa: SIM117
        async with streamable_http_client(url, http_client=http) as (read, write):
            async with ClientSession(read, write) as session:
                await session.initialize()
                return await session.call_tool(tool, args)


async def test_http_needs_the_token_and_serves_with_it(http_server: tuple[str, str]) -> None:
    url, token = http_server
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
    async with httpx2.AsyncClient() as http:
        bare = await http.post(url, json=body)
        wrong = await http.post(url, json=body, headers={"Authorization": "Bearer nope"})
    assert bare.status_code == 401 and wrong.status_code == 401
    assert "Bearer" in bare.text
    res = await _call(url, token, "run_command", {"command": "echo over http"})
    assert res.structured_content["stdout"] == "over http\n"


async def test_two_sessions_share_one_kernel(server: Server, http_server: tuple[str, str]) -> None:
    url, token = http_server
    async with stdio_session(server.env) as one, stdio_session(server.env) as two:
        await one.call_tool("run_command", {"command": "SHARED=from-one", "kernel": "team"})
        seen = await two.call_tool("run_command", {"command": 'echo "$SHARED"', "kernel": "team"})
        assert seen.structured_content["stdout"] == "from-one\n"  # type: ignore[index]
    over_http = await _call(
        url, token, "run_command", {"command": 'echo "$SHARED"', "kernel": "team"}
    )
    assert over_http.structured_content["stdout"] == "from-one\n"
    # A person sees the same kernel from the CLI.
    listed = subprocess.run(
        [sys.executable, "-m", "stigmer_kernel", "kernels", "list"],
        env=server.env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert "team" in listed.stdout


def _refused(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*MCP, *args], env=env, capture_output=True, text=True, timeout=30)


def test_a_remote_bind_is_refused_without_allow_remote(server: Server) -> None:
    got = _refused(server.env, "--http", "0.0.0.0:8765")
    assert got.returncode == 2
    assert "not a loopback address" in got.stderr and "--allow-remote" in got.stderr
    got = _refused(server.env, "--token-file", "/nonexistent")
    assert got.returncode == 2 and "--http" in got.stderr


def test_without_the_sdk_it_says_how_to_install_it(server: Server) -> None:
    shadow = short_tempdir("stg-nomcp-")
    os.makedirs(os.path.join(shadow, "mcp"))
    with open(os.path.join(shadow, "mcp", "__init__.py"), "w") as handle:
        handle.write("raise ImportError('no mcp here')\n")
    env = {**server.env, "PYTHONPATH": os.pathsep.join([shadow, server.env["PYTHONPATH"]])}
    got = _refused(env)
    assert got.returncode == 2
    assert got.stderr.strip().splitlines() == [
        "stigmer: error: stigmer mcp needs the MCP SDK: pip install 'stigmer-kernel[mcp]'"
    ]


async def test_a_token_file_is_used(server: Server) -> None:
    folder = short_tempdir("stg-tok-")
    path = os.path.join(folder, "token")
    with open(path, "w") as handle:
        handle.write("a-token-of-the-right-length\n")
    os.chmod(path, 0o644)
    got = _refused(server.env, "--http", f"127.0.0.1:{_free_port()}", "--token-file", path)
    assert got.returncode == 125 and "chmod 600" in got.stderr
    os.chmod(path, 0o600)
    port = _free_port()
    proc = subprocess.Popen(
        [*MCP, "--http", f"127.0.0.1:{port}", "--token-file", path],
        env=server.env,
        stderr=subprocess.DEVNULL,
    )
    try:
        url = f"http://127.0.0.1:{port}/mcp"
        for _ in range(200):
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", port)) == 0:
                    break
            await asyncio.sleep(0.05)
        res = await _call(url, "a-token-of-the-right-length", "run_command", {"command": "true"})
        assert res.structured_content["exit_code"] == 0
    finally:
        proc.terminate()
        proc.wait(timeout=10)
