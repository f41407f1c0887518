"""The client's reader task: callbacks cannot break it; if it ends, nothing waits forever."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from stigmer_kernel import AsyncClient
from stigmer_kernel.errors import StigmerError
from tests.conftest import Server


class ReaderKiller(BaseException):
    """Not an Exception, so no callback guard may swallow it: it ends the reader task."""


def test_raising_callbacks_are_logged_and_the_result_still_arrives(
    server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    client = server.client()
    seen: list[str] = []

    def broken(text: str) -> None:
        seen.append(text)
        raise ValueError("callback bug")

    with caplog.at_level(logging.ERROR, logger="stigmer.client"):
        r = client.execute("echo one; sleep 0.2; echo two; echo err >&2", on_stdout=broken)
    assert (r.status, r.stdout, r.stderr) == ("ok", "one\ntwo\n", "err\n")
    assert "".join(seen) == "one\ntwo\n"  # still called for every chunk after the first failure
    failures = [rec for rec in caplog.records if "on_stdout callback raised" in rec.getMessage()]
    assert failures and all(rec.exc_info is not None for rec in failures)
    assert str(failures[0].exc_info[1]) == "callback bug"  # type: ignore[index]
    assert client.execute("echo again").stdout == "again\n"


async def test_raising_raw_output_callback_does_not_stop_the_client(server: Server) -> None:
    async with AsyncClient(server.config, autostart=False) as client:

        def broken(name: str, data: bytes) -> None:
            raise RuntimeError(f"cannot handle {name}")

        r = await client.execute("echo out; echo err >&2; exit 3", on_output=broken)
        assert (r.exit_code, r.stdout, r.stderr) == (3, "out\n", "err\n")
        assert (await client.execute("echo next")).stdout == "next\n"


async def test_a_dead_reader_fails_pending_and_new_requests_at_once(server: Server) -> None:
    async with AsyncClient(server.config, autostart=False) as client:
        await client.execute("true", kernel="other")  # started, so the next request is quick
        pending = asyncio.create_task(client.execute("sleep 30", kernel="other"))
        await asyncio.sleep(0.3)
        assert not pending.done()

        def kill_reader(text: str) -> None:
            raise ReaderKiller("reader ended by the test")

        started = time.monotonic()
        with pytest.raises(StigmerError, match="ReaderKiller: reader ended by the test"):
            await client.execute("echo hi; sleep 30", on_stdout=kill_reader)
        with pytest.raises(StigmerError, match="stopped receiving messages") as pending_error:
            await pending
        assert isinstance(pending_error.value.__cause__, ReaderKiller)
        with pytest.raises(StigmerError, match="use a new client"):
            await client.server_info()
        assert time.monotonic() - started < 3.0  # not the 30 s the commands would take
