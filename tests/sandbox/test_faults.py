"""Faults with a real engine: killed containers, memory limits, server stop mid-command."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
import uuid
from typing import Any

from tests.conftest import Server, processes_matching
from tests.sandbox.conftest import containers_of


def run_in_thread(fn: Any) -> tuple[threading.Thread, list[Any]]:
    out: list[Any] = []
    thread = threading.Thread(target=lambda: out.append(fn()))
    thread.start()
    return thread, out


def test_container_killed_mid_command(sandbox: Server, docker_client: Any) -> None:
    c = sandbox.client()
    c.execute("v=1", kernel="victim", mode="sandbox")
    (container,) = containers_of(docker_client, sandbox)
    printed = threading.Event()
    thread, out = run_in_thread(
        lambda: c.execute(
            "echo go; sleep 60",
            kernel="victim",
            mode="sandbox",
            on_stdout=lambda _text: printed.set(),
        )
    )
    assert printed.wait(timeout=15), "the command did not start"
    killed = time.monotonic()
    container.kill()
    thread.join(timeout=15)
    (r,) = out
    # Heartbeat 0.5 s, 3 misses, plus slack: doubled for a slow machine (the 60 s sleep is what
    # a missed death would wait for).
    assert time.monotonic() - killed < 2 * (3 * 0.5 + 1.5)
    assert (r.status, r.ename, r.stdout) == ("error", "KernelDied", "go\n")
    assert "container was killed" in (r.evalue or "")
    after = c.execute("echo ${v:-fresh}", kernel="victim", mode="sandbox")
    assert after.stdout == "fresh\n" and after.events[0]["event"] == "restarted"


def test_memory_limit_is_named_as_such(sandbox_factory: Any) -> None:
    srv = sandbox_factory(STIGMER_SANDBOX_MEMORY="128m")
    c = srv.client()
    r = c.execute(
        "python3 -c 'b = bytearray(600 * 1024 * 1024); print(len(b))'",
        kernel="small",
        mode="sandbox",
        timeout=60,
    )
    assert r.exit_code == 137
    assert "out-of-memory" in (r.evalue or "") and "128m" in (r.evalue or "")
    assert c.execute("echo survived", kernel="small", mode="sandbox").stdout == "survived\n"


def test_server_stop_while_commands_run(sandbox: Server, docker_client: Any) -> None:
    tag = uuid.uuid4().hex[:8]
    local, boxed = sandbox.client(), sandbox.client()
    local.execute("true", kernel="busy-local")
    boxed.execute("true", kernel="busy-box", mode="sandbox")
    t1, r1 = run_in_thread(
        lambda: local.execute(f"bash -c 'exec -a stuck-{tag} sleep 300'", kernel="busy-local")
    )
    t2, r2 = run_in_thread(lambda: boxed.execute("sleep 300", kernel="busy-box", mode="sandbox"))
    time.sleep(1.0)
    stop = subprocess.run(
        [sys.executable, "-m", "stigmer_kernel", "server", "stop"],
        env=sandbox.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert stop.returncode == 0, stop.stderr
    t1.join(timeout=15)
    t2.join(timeout=15)
    for (result,) in (r1, r2):
        assert result.status == "aborted" and result.ename == "KernelShutdown"
        assert "server is shutting down" in (result.evalue or "")
    assert processes_matching(f"stuck-{tag}") == []
    assert containers_of(docker_client, sandbox) == []
