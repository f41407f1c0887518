"""The broker killed with SIGKILL and started again: kernels re-adopted with their state."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from stigmer_kernel import ServerNotRunning, ServerRestarted
from tests.conftest import Server, short_tempdir


def kill_broker(server: Server) -> None:
    assert server.proc is not None
    server.proc.send_signal(signal.SIGKILL)  # the broker only: its agents live on
    server.proc.wait()


def test_local_kernels_are_readopted_with_their_state(server: Server) -> None:
    c = server.client()
    c.execute("cd /usr && X=kept && f() { echo fn; }", kernel="state")
    pid = next(k["pid"] for k in c.list_kernels() if k["name"] == "state")
    kill_broker(server)
    server.start()
    r = c.execute("pwd; echo $X; f", kernel="state")  # the same client carries on
    assert r.stdout == "/usr\nkept\nfn\n"
    (info,) = [k for k in c.list_kernels() if k["name"] == "state"]
    assert (info["pid"], info["restarts"]) == (pid, 0)


def test_a_slow_request_sent_after_a_restart_is_not_mistaken_for_one_in_flight(
    server: Server,
) -> None:
    c = server.client()
    c.execute("X=kept", kernel="slow")
    kill_broker(server)
    server.start()
    time.sleep(0.2)  # the new server is up before the next request is sent
    r = c.execute("sleep 2.5; echo $X", kernel="slow")  # outlives the client's liveness checks
    assert (r.status, r.stdout) == ("ok", "kept\n")


def test_request_in_flight_is_not_replayed_and_the_client_is_told(server: Server) -> None:
    c = server.client()
    log = Path(short_tempdir("stg-restart-")) / "runs"
    c.execute("true", kernel="once")
    outcome: list[Any] = []

    def run() -> None:
        try:
            # Long enough to be still running across a slow restart of the server.
            outcome.append(c.execute(f"echo run >> {log}; sleep 6", kernel="once"))
        except (ServerRestarted, ServerNotRunning) as exc:
            outcome.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    deadline = time.monotonic() + 15
    while not log.exists():  # the command runs
        assert time.monotonic() < deadline, "the command did not start"
        time.sleep(0.05)
    kill_broker(server)
    server.start()
    thread.join(timeout=30)
    (result,) = outcome
    assert isinstance(result, (ServerRestarted, ServerNotRunning)), result
    retry = c.execute("echo served", kernel="once")  # a client that retries gets served
    assert retry.stdout == "served\n"
    # Executed exactly once: a replay would have run before the retry in the kernel's queue.
    assert log.read_text() == "run\n"


def test_kernels_whose_agent_died_meanwhile_are_removed(server: Server) -> None:
    c = server.client()
    c.execute("true", kernel="lost")
    pid = next(k["pid"] for k in c.list_kernels() if k["name"] == "lost")
    kill_broker(server)
    os.kill(pid, signal.SIGKILL)
    server.start()
    deadline = time.monotonic() + 15
    while any(k["name"] == "lost" for k in c.list_kernels()):
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert c.execute("echo new", kernel="lost").stdout == "new\n"


@pytest.mark.usefixtures("server")
def test_key_survives_a_restart(server: Server) -> None:
    key = server.runtime.read_key()
    kill_broker(server)
    server.start()
    assert server.runtime.read_key() == key


def test_a_running_background_process_and_its_journal_survive_a_restart(server: Server) -> None:
    c = server.client()
    proc = c.start("echo before; read line; echo after $line", kernel="bg")
    deadline = time.monotonic() + 15
    while proc.output().data != b"before\n":
        assert time.monotonic() < deadline, "the process did not write"
        time.sleep(0.05)
    kill_broker(server)
    server.start()
    (info,) = c.processes("bg")  # the agent kept it: the new broker only forwards
    assert (info.id, info.state, info.stdout_bytes) == (proc.id, "running", 7)
    again = c.process("bg", proc.id)
    again.write_stdin("kept\n")
    assert again.wait(10) == 0
    assert again.output().data == b"before\nafter kept\n"


def test_follow_and_wait_ride_out_a_broker_restart(server: Server) -> None:
    """A background process's output is read by offset, so a read in flight when the broker
    died is simply asked again of the next one: follow() misses and repeats nothing, and
    wait() gets the exit code (an execute in flight is not asked again: it may have run)."""
    c = server.client()
    proc = c.start("echo before; read line; echo after $line", kernel="fw")
    got: list[bytes] = []
    codes: list[Any] = []

    def follow() -> None:
        try:
            got.extend(chunk.data for chunk in proc.follow())
        except Exception as exc:
            got.append(repr(exc).encode())

    waiter = server.client().process("fw", proc.id)

    def wait() -> None:
        try:
            codes.append(waiter.wait(60))
        except Exception as exc:
            codes.append(exc)

    threads = [threading.Thread(target=follow), threading.Thread(target=wait)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 15
    while got != [b"before\n"]:  # the follow's next long-poll is in flight
        assert time.monotonic() < deadline, f"the process did not write: {got}"
        time.sleep(0.05)
    kill_broker(server)
    server.start()
    c.process("fw", proc.id).write_stdin("kept\n")
    for thread in threads:
        thread.join(timeout=60)
    assert b"".join(got) == b"before\nafter kept\n"
    assert codes == [0]
