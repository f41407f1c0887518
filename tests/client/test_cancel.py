"""A cancelled ``AsyncClient.execute`` interrupts its own command and nobody else's: on a
kernel two clients share, one still queued is withdrawn while the other's runs on."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from stigmer_kernel.client import AsyncClient, Client
from stigmer_kernel.protocol import MsgType
from tests.conftest import Server, short_tempdir, wait_for


def pending(c: Client, kernel: str) -> int:
    return int(c.kernel_info(kernel)["pending"])


async def test_a_cancelled_call_withdraws_its_queued_command_only(server: Server) -> None:
    where = Path(short_tempdir("stg-cancel-"))
    watcher = server.client()
    gate = f"touch {where}/started; while [ ! -e {where}/go ]; do sleep 0.02; done; echo A-done"
    async with (
        AsyncClient(server.config, autostart=False) as a,
        AsyncClient(server.config, autostart=False) as b,
    ):
        first = asyncio.ensure_future(a.execute(gate, kernel="shared"))
        await asyncio.to_thread(wait_for, lambda: (where / "started").exists())
        queued = asyncio.ensure_future(b.execute(f"echo ran > {where}/marker", kernel="shared"))
        await asyncio.to_thread(wait_for, lambda: pending(watcher, "shared") == 2)
        queued.cancel()
        await asyncio.gather(queued, return_exceptions=True)
        assert queued.cancelled()
        await asyncio.to_thread(wait_for, lambda: pending(watcher, "shared") == 1)  # withdrawn
        (where / "go").touch()
        result = await first
        assert (result.status, result.stdout) == ("ok", "A-done\n")  # not interrupted
        after = await b.execute("echo after", kernel="shared")  # queued where it had been
        assert after.stdout == "after\n"
        assert not (where / "marker").exists()  # it never ran


async def test_a_cancelled_call_interrupts_its_running_command_only(server: Server) -> None:
    where = Path(short_tempdir("stg-cancel-"))
    async with AsyncClient(server.config, autostart=False) as a:
        running = asyncio.ensure_future(
            a.execute(f"touch {where}/started; sleep 60; touch {where}/finished", kernel="own")
        )
        await asyncio.to_thread(wait_for, lambda: (where / "started").exists())
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
        # The next command runs at once: the sleep was interrupted, not left to finish.
        nxt = await asyncio.wait_for(a.execute("echo next", kernel="own"), 30)
        assert nxt.stdout == "next\n"
        assert not (where / "finished").exists()
        # A targeted interrupt of a request that is not pending is told so, and stops nothing.
        reply = await a._transport.request(  # (the wire field itself)
            MsgType.INTERRUPT_REQUEST, {"kernel": "own", "request": os.urandom(8).hex()}, timeout=10
        )
        assert reply[0].content["was_busy"] is False
