"""Background processes in a sandbox kernel: the agent in the container spawns and keeps them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tests.conftest import Server, wait_for
from tests.sandbox.conftest import containers_of


def test_background_processes_in_a_sandbox(
    sandbox_factory: Callable[..., Server], docker_client: Any
) -> None:
    server = sandbox_factory(STIGMER_PROCESS_JOURNAL_BYTES=str(1 << 20))
    c = server.client()
    c.execute("cd /tmp && export IN=sandbox", kernel="sb", mode="sandbox")
    proc = c.start(
        'test -f /.dockerenv && echo "$IN $PWD $OWN"; exec cat', kernel="sb", env={"OWN": "x"}
    )
    wait_for(lambda: proc.output().data == b"sandbox /tmp x\n")
    # It outlives foreground commands and a foreground timeout.
    assert c.execute("echo fg", kernel="sb").stdout == "fg\n"
    assert c.execute("sleep 30", kernel="sb", timeout=0.5).status == "timeout"
    proc.write_stdin(b"through stdin\n")
    proc.close_stdin()
    assert proc.wait(15) == 0
    assert proc.output().data == b"sandbox /tmp x\nthrough stdin\n"
    # 200 MB through a 1 MiB journal: bounded, what fell out counted.
    total = 200 * 1000 * 1000
    big = c.start(f"head -c {total} /dev/zero", kernel="sb", workdir="/")
    assert big.wait(60) == 0
    out = big.output()
    assert (out.end, out.dropped, len(out.data)) == (total, total - (1 << 20), 1 << 20)
    # A new client takes the handle up by id; signals reach the group.
    other = server.client()
    sleeper = c.start("trap 'exit 5' TERM; echo ready; while :; do sleep 0.05; done", kernel="sb")
    wait_for(lambda: other.process("sb", sleeper.id).output().data == b"ready\n")
    other.process("sb", sleeper.id).signal("TERM")
    assert other.process("sb", sleeper.id).wait(15) == 5
    assert [p.id for p in other.processes("sb")] == ["p1", "p2", "p3"]
    # The kernel's end ends them: its container goes, and with it everything in it.
    c.start("sleep 300", kernel="sb")
    wait_for(lambda: next(k for k in c.list_kernels() if k["name"] == "sb")["processes"] == 1)
    c.shutdown_kernel("sb")
    wait_for(lambda: containers_of(docker_client, server) == [], timeout=30)
