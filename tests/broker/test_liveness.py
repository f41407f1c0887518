"""Dead and silent agents, idle expiry: the broker tells clients the truth."""

from __future__ import annotations

import os
import re
import signal
import threading
import time
import uuid
from typing import Any

from stigmer_kernel import Client
from tests.conftest import Server, processes_matching


def _agent_pid(client: Client, name: str) -> int:
    (info,) = [k for k in client.list_kernels() if k["name"] == name]
    return int(info["pid"])


def _run_in_thread(client: Client, code: str, kernel: str) -> tuple[threading.Thread, list]:
    results: list = []
    thread = threading.Thread(target=lambda: results.append(client.execute(code, kernel=kernel)))
    thread.start()
    return thread, results


def _kernel(client: Client, name: str) -> dict[str, Any]:
    (info,) = [k for k in client.list_kernels() if k["name"] == name]
    return info


def _wait_for(predicate, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.05)


def test_agent_killed_mid_command(server: Server) -> None:
    client = server.client()
    tag = uuid.uuid4().hex[:8]
    client.execute("v=before", kernel="victim")
    pid = _agent_pid(client, "victim")
    thread, results = _run_in_thread(
        client, f"echo running; bash -c 'exec -a doomed-{tag} sleep 300'", "victim"
    )
    _wait_for(lambda: bool(processes_matching(f"doomed-{tag}")))
    killed_at = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    thread.join(timeout=10)
    (r,) = results
    assert time.monotonic() - killed_at < 6.0  # only against a hang: the exit is seen at once
    assert r.status == "error" and r.exit_code is None
    assert r.ename == "KernelDied"
    assert "SIGKILL" in (r.evalue or "")
    assert r.stdout == "running\n"  # output produced before the death is kept
    _wait_for(lambda: not processes_matching(f"doomed-{tag}"), timeout=5)
    # The next request starts a fresh agent and says so.
    after = client.execute("echo ${v:-fresh}", kernel="victim")
    assert after.stdout == "fresh\n"
    assert [e["event"] for e in after.events] == ["restarted"]
    assert "SIGKILL" in after.events[0]["reason"]
    assert _agent_pid(client, "victim") != pid


def test_silent_agent_is_declared_dead_within_three_intervals(server: Server) -> None:
    client = server.client()
    client.execute("true", kernel="frozen")
    pid = _agent_pid(client, "frozen")
    thread, results = _run_in_thread(client, "sleep 30", "frozen")
    _wait_for(lambda: _kernel(client, "frozen")["state"] == "busy")
    os.kill(pid, signal.SIGSTOP)  # alive but silent: no heartbeat, no output
    stopped_at = time.monotonic()
    thread.join(timeout=10)
    elapsed = time.monotonic() - stopped_at
    (r,) = results
    assert r.ename == "KernelDied"
    assert "no heartbeat" in (r.evalue or "")
    # Interval 0.3 s, 3 misses: declared dead after about 0.9 s of silence. The server's own
    # measure (free of the client's delays) keeps the original bound, well under the 3 s that
    # the default 1 s interval, or 10 misses, would take.
    silence = re.search(r"no heartbeat for ([0-9.]+)s", r.evalue or "")
    assert silence is not None, r.evalue
    assert float(silence.group(1)) < 0.3 * 3 + 1.5, r.evalue
    assert elapsed < 0.3 * 3 + 3.9  # seen by the client; only against a hang
    assert client.execute("echo back", kernel="frozen").stdout == "back\n"


def test_clients_attached_are_told_the_kernel_died(server: Server) -> None:
    a, b = server.client(), server.client()
    a.execute("true", kernel="shared-death")
    b.execute("true", kernel="shared-death")
    os.kill(_agent_pid(a, "shared-death"), signal.SIGKILL)
    _wait_for(lambda: any(e["event"] == "died" for e in b.events))
    died = next(e for e in b.events if e["event"] == "died")
    assert died["kernel"] == "shared-death"
    assert "SIGKILL" in died["reason"]


def test_idle_kernel_expires_and_clients_are_told(server_factory) -> None:  # type: ignore[no-untyped-def]
    srv = server_factory(STIGMER_KERNEL_TTL="1", STIGMER_HEARTBEAT_INTERVAL="0.2")
    client = srv.client()
    client.execute("v=1", kernel="idle")
    t0 = time.monotonic()
    pid = _agent_pid(client, "idle")
    # kernel_info and heartbeats are not activity: polling must not postpone expiry. The server's
    # idle_seconds keeps growing from the execute (before t0) through the polls: at least the
    # time since t0 (one monotonic clock); a poll that counted would reset it to about 0.
    checked_since = 0.0
    while time.monotonic() < t0 + 0.8:
        client.kernel_info("idle")
        asked_at = time.monotonic()
        idle = [k for k in client.list_kernels() if k["name"] == "idle"]
        if not idle:
            break  # already expired (a slow machine): the polls did not keep it
        assert idle[0]["idle_seconds"] >= asked_at - t0 - 0.01, (idle[0], asked_at - t0)
        checked_since = asked_at - t0
        time.sleep(0.1)
    assert checked_since >= 0.3  # the polls were checked over a good part of the ttl
    _wait_for(lambda: all(k["name"] != "idle" for k in client.list_kernels()), timeout=5)
    assert time.monotonic() - t0 < 3.4  # expired near its ttl of 1 s (slack for a slow machine)
    _wait_for(lambda: any(e["event"] == "expired" for e in client.events))
    event = next(e for e in client.events if e["event"] == "expired")
    assert "idle for" in event["reason"] and "ttl 1s" in event["reason"]
    _wait_for(lambda: not os.path.exists(f"/proc/{pid}"), timeout=5)
    again = client.execute("echo ${v:-new}", kernel="idle")
    assert again.stdout == "new\n"
    assert again.events and again.events[0]["event"] == "expired"
    assert "expired.log" not in os.listdir(srv.runtime_dir)
    assert "expired" in srv.log()


def test_busy_kernel_never_expires(server_factory) -> None:  # type: ignore[no-untyped-def]
    srv = server_factory(STIGMER_KERNEL_TTL="1")
    client = srv.client()
    r = client.execute("sleep 3; echo survived", kernel="busy")
    assert r.stdout == "survived\n"
    assert any(k["name"] == "busy" for k in client.list_kernels())


def test_shutdown_kernel_ends_its_processes(server: Server) -> None:
    client = server.client()
    tag = uuid.uuid4().hex[:8]
    client.execute(f"bash -c 'exec -a bg-{tag} sleep 300' &", kernel="gone")
    _wait_for(lambda: bool(processes_matching(f"bg-{tag}")))
    pid = _agent_pid(client, "gone")
    (info,) = [k for k in client.list_kernels() if k["name"] == "gone"]
    workdir = server.runtime.path / "kernels" / info["id"]
    assert workdir.is_dir()
    client.shutdown_kernel("gone")
    assert all(k["name"] != "gone" for k in client.list_kernels())
    _wait_for(lambda: not processes_matching(f"bg-{tag}") and not os.path.exists(f"/proc/{pid}"))
    _wait_for(lambda: not workdir.exists())


def test_agent_that_cannot_start_gives_a_clear_error(server_factory) -> None:  # type: ignore[no-untyped-def]
    srv = server_factory(STIGMER_SHELL="/nonexistent/bash")
    client = srv.client()
    start = time.monotonic()
    r = client.execute("echo hi", kernel="broken")
    assert time.monotonic() - start < 10
    assert r.status == "error" and r.ename == "KernelDied"
    assert "exited with code" in (r.evalue or "")
    assert "/nonexistent/bash" in (r.evalue or "")
