"""Kernel lifecycle edge cases: removal and restart with requests queued, agents that cannot
start, and signed requests whose fields have the wrong types."""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from pathlib import Path
from typing import Any

import pytest
import zmq
from jupyter_client import BlockingKernelClient

from stigmer_kernel import AsyncClient
from stigmer_kernel.protocol import Session
from tests.conftest import Server, processes_matching, short_tempdir, wait_for


def _marks(work: str) -> str:
    runs = Path(work, "runs")
    return runs.read_text() if runs.exists() else ""


async def _wait_until_busy(c: AsyncClient, kernel: str, pending: int, side: str | None) -> None:
    """Until ``kernel`` holds ``pending`` requests and the one running has reached an agent: its
    own, or its ``side``'s (an auto kernel's) is busy, started and running it."""
    deadline = time.monotonic() + 15
    while True:
        states = {k["name"]: k for k in await c.list_kernels()}
        runner = states.get(side or kernel)
        if (
            kernel in states
            and states[kernel]["pending"] == pending
            and runner is not None
            and runner["state"] == "busy"
        ):
            return
        assert time.monotonic() < deadline, f"{kernel} not busy in time: {states}"
        await asyncio.sleep(0.05)


def _wait_gone(pid: int, timeout: float = 15.0) -> None:
    """Until process ``pid`` (an agent) has exited: after that it cannot run anything."""
    wait_for(lambda: not Path(f"/proc/{pid}").exists(), timeout=timeout)


async def _agent_pid(c: AsyncClient, name: str) -> int:
    (pid,) = [k["pid"] for k in await c.list_kernels() if k["name"] == name]
    return int(pid)


async def _queue_behind_a_sleeper(
    c: AsyncClient, kernel: str, mode: str, cwd: str
) -> list[asyncio.Task[Any]]:
    """One running command and three queued behind it, each of which would leave a mark."""
    side = f"{kernel}~local" if mode == "auto" else None
    first = asyncio.create_task(  # long: it is aborted, however slow the machine
        c.execute("sleep 30; echo first >> runs", kernel=kernel, mode=mode, cwd=cwd)
    )
    await _wait_until_busy(c, kernel, 1, side)  # the sleeper runs
    queued = [
        asyncio.create_task(
            c.execute(f"echo queued-{i} >> runs", kernel=kernel, mode=mode, cwd=cwd)
        )
        for i in range(3)
    ]
    await _wait_until_busy(c, kernel, 4, side)  # they wait in the kernel's queue
    return [first, *queued]


def test_removing_an_auto_kernel_aborts_its_queue_and_starts_nothing(server: Server) -> None:
    work = short_tempdir("stg-auto-rm-")

    async def main() -> list[Any]:
        async with AsyncClient(server.config, autostart=False) as c:
            tasks = await _queue_behind_a_sleeper(c, "a1", "auto", work)
            agents.append(await _agent_pid(c, "a1~local"))
            await c.shutdown_kernel("a1")
            results = await asyncio.wait_for(asyncio.gather(*tasks), timeout=10)
            names = [k["name"] for k in await c.list_kernels()]
            assert not any(n.startswith("a1") for n in names), names
            return results

    agents: list[int] = []
    results = asyncio.run(main())
    _wait_gone(agents[0])  # the only agent that could have run them
    assert [r.ename for r in results] == ["KernelShutdown"] * 4
    assert "queued" not in _marks(work)
    assert processes_matching("--kernel-id a1~local") == []


def _restart_behind_a_queue(server: Server, kernel: str, mode: str, work: str) -> list[Any]:
    """A Jupyter client restarts ``kernel`` while a command runs and three wait behind it;
    the four results."""
    conn = server.client().connect_jupyter(kernel, mode=mode, cwd=work)
    jc = BlockingKernelClient()
    jc.load_connection_info(conn["connection"])
    jc.start_channels()

    async def main() -> list[Any]:
        async with AsyncClient(server.config, autostart=False) as ac:
            tasks = await _queue_behind_a_sleeper(ac, kernel, mode, work)
            old = await _agent_pid(ac, f"{kernel}~local" if mode == "auto" else kernel)
            jc.shutdown(restart=True)
            results = await asyncio.wait_for(asyncio.gather(*tasks), timeout=10)
            # The old agent (grace period included) is gone; a barrier through the new one
            # runs after anything wrongly handed to it.
            _wait_gone(old)
            await ac.execute("echo barrier >> runs", kernel=kernel, mode=mode, cwd=work)
            return results

    try:
        return asyncio.run(main())
    finally:
        jc.stop_channels()


def test_restarting_an_auto_kernel_aborts_its_queue_then_serves_again(server: Server) -> None:
    work = short_tempdir("stg-auto-rs-")
    results = _restart_behind_a_queue(server, "a2", "auto", work)
    assert [r.ename for r in results] == ["KernelRestarted"] * 4
    assert _marks(work) == "barrier\n"
    r = server.client().execute("echo again; pwd", kernel="a2", mode="auto")
    assert r.ok and r.stdout == f"again\n{os.path.realpath(work)}\n"


def test_restarting_a_kernel_never_hands_aborted_requests_to_the_old_agent(
    server: Server,
) -> None:
    work = short_tempdir("stg-rs-")
    results = _restart_behind_a_queue(server, "l1", "local", work)
    assert [r.ename for r in results] == ["KernelRestarted"] * 4
    assert _marks(work) == "barrier\n"  # nothing queued reached the old agent or the new


def test_a_kernel_whose_agent_cannot_start_answers_at_once(server: Server) -> None:
    kernels = server.runtime.path / "kernels"
    shutil.rmtree(kernels)
    kernels.write_text("not a directory")  # the agent's work directory cannot be made
    c = server.client()
    try:
        started = time.monotonic()
        r = c.execute("echo never", kernel="broken")
        assert time.monotonic() - started < 5
        assert r.ename == "KernelDied" and "could not start an agent" in (r.evalue or "")
    finally:
        kernels.unlink()
        kernels.mkdir(mode=0o700)
    r = c.execute("echo works", kernel="broken")  # the next request starts a fresh agent
    assert r.stdout == "works\n"
    assert r.ok


#: Values of the wrong type for the fields the broker reads.
_ODD = [None, 7, -1, 1e308, "x" * 300, "../x", [], [1, "a"], {"a": 1}, True, b"\xff"]
_FIELDS = ["kernel", "mode", "cwd", "ttl", "code", "timeout", "stdin", "connection", "silent"]
_TYPES = [
    "execute_request",
    "kernel_connect_request",
    "kernel_info_request",
    "interrupt_request",
    "kernel_shutdown_request",
    "detach_request",
    "kernel_list_request",
]


def test_signed_requests_with_fields_of_the_wrong_type_each_get_one_reply(
    server: Server,
) -> None:
    session = Session(server.runtime.read_key())
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(server.runtime.client_endpoint)
    sent = 0
    try:
        for msg_type in _TYPES:
            for field in _FIELDS:
                for value in _ODD:
                    content = {"code": "true", "kernel": "odd", field: value}
                    if msg_type == "detach_request":
                        continue  # answered by nothing, by design
                    sock.send_multipart(session.serialize(session.msg(msg_type, content)))
                    sent += 1
        replies = 0
        deadline = time.monotonic() + 60
        while replies < sent and time.monotonic() < deadline:
            if sock.poll(1000):
                _, msg = session.deserialize(sock.recv_multipart())
                if msg.msg_type.endswith("_reply"):
                    replies += 1
        assert replies == sent
        assert server.proc is not None and server.proc.poll() is None
    finally:
        ctx.destroy(linger=0)
    c = server.client()
    assert c.execute("echo still-fine", kernel="after").stdout == "still-fine\n"
    if "error while handling a message" in server.log():
        pytest.fail("a request raised inside the broker:\n" + server.log()[-3000:])


def test_auto_sides_expire_on_their_own_modes_ttl(server_factory: Any) -> None:
    srv = server_factory(STIGMER_KERNEL_TTL="2", STIGMER_SANDBOX_TTL="100")
    c = srv.client()
    work = short_tempdir("stg-auto-ttl-")
    assert c.execute("echo one", kernel="a3", mode="auto", cwd=work).stdout == "one\n"
    ttls = {k["name"]: k["ttl"] for k in c.list_kernels()}
    assert ttls == {"a3": 100.0, "a3~local": 2.0}
    deadline = time.monotonic() + 15
    while any(k["name"] == "a3~local" for k in c.list_kernels()):
        assert time.monotonic() < deadline, "the local side did not expire"
        time.sleep(0.2)
    assert [k["name"] for k in c.list_kernels()] == ["a3"]
    r = c.execute("echo two", kernel="a3", mode="auto")  # a fresh local side
    assert r.stdout == "two\n"
    asked = c.execute("true", kernel="a4", mode="auto", cwd=work, ttl=50)
    assert asked.ok
    ttls = {k["name"]: k["ttl"] for k in c.list_kernels()}
    assert (ttls["a4"], ttls["a4~local"]) == (50.0, 50.0)


def test_shutting_down_an_auto_side_by_name_keeps_its_successor_visible(server: Server) -> None:
    work = short_tempdir("stg-auto-side-")

    async def main() -> list[Any]:
        async with AsyncClient(server.config, autostart=False) as c:
            running = asyncio.create_task(
                c.execute("sleep 30", kernel="a5", mode="auto", cwd=work)  # aborted below
            )
            await _wait_until_busy(c, "a5", 1, "a5~local")
            queued = asyncio.create_task(c.execute("echo next", kernel="a5", mode="auto"))
            await _wait_until_busy(c, "a5", 2, "a5~local")
            await c.shutdown_kernel("a5~local")
            return await asyncio.wait_for(asyncio.gather(running, queued), timeout=10)

    first, second = asyncio.run(main())
    assert first.ename == "KernelShutdown"
    assert second.stdout == "next\n"  # ran on a fresh local side...
    c = server.client()
    kernels = {k["name"]: k for k in c.list_kernels()}
    assert kernels["a5"]["sides"] == {"local": "a5~local"}
    assert kernels["a5~local"]["state"] == "idle"  # ...which is listed and watched
