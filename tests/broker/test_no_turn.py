"""Requests that need no turn (file operations, process queries) reach the agent while a
command runs, and never make the kernel busy."""

from __future__ import annotations

import asyncio

import pytest

from stigmer_kernel import AsyncClient
from stigmer_kernel.errors import RequestError
from stigmer_kernel.protocol import MsgType
from tests.conftest import Server


async def test_a_request_without_a_turn_is_answered_while_a_command_runs(
    server: Server,
) -> None:
    async with AsyncClient(server.config, autostart=False) as c:
        await c.execute("true", kernel="k")
        running = asyncio.create_task(
            c.execute("read -t 30 line < /dev/zero || sleep 30", kernel="k")
        )
        await asyncio.sleep(0)
        info = await c.kernel_info("k")
        while info["state"] != "busy":  # the command runs
            info = await c.kernel_info("k")
        with pytest.raises(RequestError) as refused:  # this agent knows no such operation
            await c._agent_request(MsgType.PROCESS_REQUEST, "k", {"op": "no-such-op"})
        assert not running.done()  # it was answered while the command still ran
        assert refused.value.ename in ("BadRequest", "UnknownMessageType")
        await c.interrupt("k")
        await running
        assert (await c.kernel_info("k"))["state"] == "idle"


async def test_an_operation_is_needed(server: Server) -> None:
    async with AsyncClient(server.config, autostart=False) as c:
        with pytest.raises(RequestError, match="needs an 'op'"):
            await c._agent_request(MsgType.FILE_REQUEST, "k", {})


async def test_a_process_query_needs_the_kernel_that_started_it(server: Server) -> None:
    async with AsyncClient(server.config, autostart=False) as c:
        with pytest.raises(RequestError) as refused:
            await c.process("nowhere", "p1").info()
        assert refused.value.ename == "NoSuchKernel"
        assert all(k["name"] != "nowhere" for k in await c.list_kernels())  # none was made
