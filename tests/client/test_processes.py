"""Background processes through the Python client, local mode: a real server, real agents."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from stigmer_kernel import NoSuchProcess, RequestError
from stigmer_kernel.client import AsyncClient, Client
from tests.conftest import Server, wait_for


def gone(pid: int) -> bool:
    """The process is gone (or only a zombie nobody will run again)."""
    try:
        return ") Z " in Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True


def test_start_output_wait_in_the_kernels_context(client: Client) -> None:
    client.execute("cd /tmp && export FROM_SESSION=yes", kernel="bg")
    proc = client.start(
        'pwd; echo "$FROM_SESSION $OWN"; echo err >&2; exit 3', kernel="bg", env={"OWN": "mine"}
    )
    assert proc.id == "p1" and proc.pid and proc.command
    assert proc.wait(timeout=15) == 3
    out, err = proc.output(), proc.output(stream="stderr")
    assert (out.data, err.data) == (b"/tmp\nyes mine\n", b"err\n")
    assert (out.offset, out.next, out.end, out.dropped, out.eof) == (0, 14, 14, 0, True)
    assert client.execute("echo ${OWN-unset}", kernel="bg").stdout == "unset\n"
    (info,) = client.processes("bg")
    assert (info.id, info.state, info.exit_code, info.stdout_bytes) == ("p1", "exited", 3, 14)
    with pytest.raises(NoSuchProcess, match="no background process 'p9'"):
        client.process("bg", "p9").wait(1)


def test_workdir_applies_to_one_command_and_to_a_start(client: Client) -> None:
    client.execute("cd /tmp", kernel="wd")
    r = client.execute("pwd; cd /; pwd", kernel="wd", workdir="/usr")
    assert (r.stdout, r.cwd) == ("/usr\n/\n", "/tmp")
    assert client.execute("pwd", kernel="wd").stdout == "/tmp\n"
    os.makedirs("/tmp/stg-wd-sub", exist_ok=True)
    try:
        assert client.execute("pwd", kernel="wd", workdir="stg-wd-sub").stdout == (
            "/tmp/stg-wd-sub\n"
        )
        proc = client.start("pwd", kernel="wd", workdir="stg-wd-sub")
        assert proc.wait(10) == 0 and proc.output().data == b"/tmp/stg-wd-sub\n"
    finally:
        os.rmdir("/tmp/stg-wd-sub")
    with pytest.raises(RequestError, match="workdir 'nowhere' is not a directory") as caught:
        client.execute("echo never", kernel="wd", workdir="nowhere")
    assert caught.value.ename == "BadRequest"
    assert client.execute("pwd", kernel="wd").stdout == "/tmp\n"


def test_the_journal_is_bounded_and_counts_what_it_dropped(
    server_factory: Callable[..., Server],
) -> None:
    server = server_factory(STIGMER_PROCESS_JOURNAL_BYTES=str(1 << 20))
    c = server.client()
    total = 200 * 1000 * 1000
    proc = c.start(f"head -c {total} /dev/zero | tr '\\0' x; echo done >&2", kernel="big")
    assert proc.wait(timeout=60) == 0
    out = proc.output()
    assert (out.end, out.dropped, out.offset) == (total, total - (1 << 20), total - (1 << 20))
    assert out.data == b"x" * (1 << 20) and out.next == total
    assert proc.output(stream="stderr").data == b"done\n"
    (info,) = c.processes("big")
    assert (info.stdout_bytes, info.stdout_dropped) == (total, total - (1 << 20))
    agent = next(k["pid"] for k in c.list_kernels() if k["name"] == "big")
    peak = next(
        int(line.split()[1])
        for line in Path(f"/proc/{agent}/status").read_text().splitlines()
        if line.startswith("VmHWM:")
    )
    assert peak < 100 * 1024, f"the agent's memory peaked at {peak} kB"


def test_a_new_client_reattaches_and_follows_without_loss(server: Server) -> None:
    first = server.client()
    proc = first.start(
        "echo one; read line; echo got $line; read line; echo got $line", kernel="re"
    )
    wait_for(lambda: proc.output().data == b"one\n")
    first.close()

    async def follow() -> list[bytes]:
        async with AsyncClient(server.config, autostart=False) as second:
            again = second.process("re", proc.id)
            chunks = []
            async for chunk in again.follow():
                chunks.append(chunk.data)
                if chunk.data.endswith(b"one\n"):
                    await again.write_stdin(b"a\n")
                elif chunk.data.endswith(b"got a\n"):
                    await again.write_stdin("b\n")
            assert await again.wait(5) == 0
            return chunks

    chunks = asyncio.run(follow())
    assert b"".join(chunks) == b"one\ngot a\ngot b\n"


def test_a_process_outlives_foreground_commands_and_their_timeout(client: Client) -> None:
    proc = client.start(
        "sh -c 'while :; do echo tick; sleep 0.05; done' & wait", kernel="long"
    )  # a child of its own too: a foreground stop must not touch the process's tree
    for i in range(3):
        assert client.execute(f"echo {i}", kernel="long").stdout == f"{i}\n"
    r = client.execute("sleep 30 & sleep 31", kernel="long", timeout=0.5)
    assert r.status == "timeout"
    seen = proc.output().end
    wait_for(lambda: proc.output().end > seen)  # still writing after the timeout's stop
    assert proc.info().state == "running"
    proc.kill()
    assert proc.wait(10) == 128 + 9 and proc.info().signal == "SIGKILL"


def test_stdin_is_written_and_closed(client: Client) -> None:
    proc = client.start("wc -c", kernel="in")
    proc.write_stdin(b"y" * (3 << 20))  # more than the agent buffers: written as it is read
    proc.close_stdin()
    assert proc.wait(10) == 0
    assert proc.output().data.strip() == str(3 << 20).encode()
    with pytest.raises(RequestError, match="stdin of process p1 is closed"):
        proc.write_stdin(b"late")


def test_signals_reach_the_process_group(client: Client) -> None:
    proc = client.start(
        "trap 'echo term; exit 7' TERM; echo ready; while :; do sleep 0.05; done", kernel="sig"
    )
    wait_for(lambda: proc.output().data == b"ready\n")
    proc.signal("TERM")
    assert proc.wait(10) == 7 and proc.output().data == b"ready\nterm\n"
    with pytest.raises(RequestError, match="has exited"):
        proc.signal(9)
    with pytest.raises(RequestError, match="unknown signal"):
        client.start("sleep 5", kernel="sig").signal("NOPE")


def test_kernel_shutdown_ends_its_background_processes(client: Client) -> None:
    proc = client.start("sleep 300 & sleep 301", kernel="end")
    assert proc.pid is not None
    wait_for(lambda: not gone(proc.pid or 0))
    children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children")
    wait_for(lambda: children.read_text().strip() != "")
    child = int(children.read_text().split()[0])
    wait_for(lambda: _info(client, "end").get("processes") == 1)  # heartbeats count it
    client.shutdown_kernel("end")
    wait_for(lambda: gone(proc.pid or 0) and gone(child))


def _info(client: Client, kernel: str) -> dict[str, Any]:
    return next((k for k in client.list_kernels() if k["name"] == kernel), {})
