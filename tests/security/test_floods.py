"""Floods that used to take the broker down or blow up its memory, performed for real.

* File descriptors: another local user opens far more plain TCP connections than a socket's cap
  to a kernel's TCP Jupyter shell port and holds them; so does this user.
* Memory: 32 connections on agents.sock (what a sandbox reaches) send endless multipart
  messages, wrongly signed messages and oversized frames, and the client socket gets oversized
  and wrongly signed frames.

Each time the same broker process keeps serving a legitimate client, and its descriptors or
resident memory stay under a stated bound.
"""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from jupyter_client.blocking import BlockingKernelClient

from stigmer_kernel.broker.connections import JUPYTER_CAP
from tests.conftest import Server
from tests.security.conftest import ATTACKER_PYTHON, LocalUser

#: Opens N plain TCP connections to a port (as fast as it can, for at most 20 s), says how many,
#: and holds them until its stdin closes.
CONNECT_FLOOD = textwrap.dedent(
    """
    import socket, sys, time
    port, count = int(sys.argv[1]), int(sys.argv[2])
    held, deadline = [], time.monotonic() + 20
    while len(held) < count and time.monotonic() < deadline:
        conn = socket.socket()
        try:
            conn.connect(("127.0.0.1", port))
        except OSError:
            conn.close()
            time.sleep(0.01)
            continue
        held.append(conn)
    print(len(held), flush=True)
    sys.stdin.read()
    """
)

#: For SECONDS: endless multipart messages, wrongly signed 1 MiB messages and oversized frames on
#: the agent socket (CONNS connections), oversized and wrongly signed frames on the client socket.
MEMORY_FLOOD = textwrap.dedent(
    """
    import os, socket, sys, threading, time, zmq
    agents, clients, conns, seconds = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
    stop = time.monotonic() + seconds
    greeting = b"\\xff" + b"\\0" * 8 + b"\\x7f\\x03\\x00NULL" + b"\\0" * 16 + b"\\0" + b"\\0" * 31
    ready = b"\\x05READY\\x0bSocket-Type" + (6).to_bytes(4, "big") + b"DEALER"
    endless = (b"\\x01\\xff" + b"x" * 255) * 4096  # frames flagged MORE: a message never ending

    def never_ending():
        while time.monotonic() < stop:
            conn = socket.socket(socket.AF_UNIX)
            try:
                conn.connect(agents)
                conn.sendall(greeting)
                conn.recv(64)
                conn.sendall(b"\\x04" + bytes([len(ready)]) + ready)
                while time.monotonic() < stop:
                    conn.sendall(endless)
            except OSError:
                pass  # closed by the broker: come again
            finally:
                conn.close()

    def bad_messages(endpoint, size):
        ctx = zmq.Context.instance()
        while time.monotonic() < stop:
            sock = ctx.socket(zmq.DEALER)
            sock.setsockopt(zmq.IDENTITY, os.urandom(8).hex().encode() + b":1:x")
            sock.setsockopt(zmq.SNDTIMEO, 200)
            sock.setsockopt(zmq.LINGER, 0)
            sock.connect(endpoint)
            try:
                for _ in range(20):
                    sock.send_multipart([b"<IDS|MSG>", b"f" * 64, b"h" * size, b"{}", b"{}", b"{}"])
                sock.send(b"z" * (40 * 1024 * 1024))  # past every socket's frame limit
            except zmq.Again:
                pass
            sock.close(0)

    threads = [threading.Thread(target=never_ending) for _ in range(conns - 8)]
    threads += [threading.Thread(target=bad_messages, args=("ipc://" + agents, 1 << 20))
                for _ in range(8)]
    threads += [threading.Thread(target=bad_messages, args=("ipc://" + clients, 1 << 20))
                for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print("done", flush=True)
    """
)


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


@contextlib.contextmanager
def soft_fd_limit(soft: int) -> Iterator[None]:
    """Children started meanwhile get this soft RLIMIT_NOFILE (as under a default login)."""
    old = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, old[1]))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, old)


class Served:
    """A legitimate client running ``echo`` in a loop on its own thread: how it went."""

    def __init__(self, server: Server, kernel: str) -> None:
        self.client = server.client()
        self.kernel = kernel
        self.client.execute("true", kernel=kernel)
        self.stop = threading.Event()
        self.results: list[tuple[int | None, float]] = []
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run)
        self.thread.start()

    def _run(self) -> None:
        try:
            n = 0
            while not self.stop.is_set():
                start = time.monotonic()
                n += 1
                result = self.client.execute(f"echo served-{n}", kernel=self.kernel)
                assert result.stdout == f"served-{n}\n", result
                self.results.append((result.exit_code, time.monotonic() - start))
        except BaseException as exc:  # reported by finish()
            self.error = exc

    def finish(self) -> list[tuple[int | None, float]]:
        self.stop.set()
        self.thread.join(timeout=60)
        assert self.error is None, self.error
        return self.results


def jupyter_client(connection_file: str) -> BlockingKernelClient:
    kc = BlockingKernelClient()
    kc.load_connection_file(connection_file)
    kc.start_channels()
    kc.wait_for_ready(timeout=15)
    return kc


def flood(runner: Any, port: int, count: int) -> subprocess.Popen[bytes]:
    python = ATTACKER_PYTHON if runner is not subprocess.Popen else sys.executable
    proc: subprocess.Popen[bytes] = runner(
        [python, "-c", CONNECT_FLOOD, str(port), str(count)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    return proc


def test_connection_floods_on_a_tcp_jupyter_port_never_stop_the_server(
    server_factory: Any, other_user: LocalUser
) -> None:
    with soft_fd_limit(1024):
        server: Server = server_factory()
    assert server.proc is not None
    pid = server.proc.pid
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    (line,) = [x for x in Path(f"/proc/{pid}/limits").read_text().splitlines() if "open" in x]
    assert line.split()[3:5] == [str(hard), str(hard)], line  # the soft limit was raised
    info = server.client().connect_jupyter("flooded", connection={"transport": "tcp"})
    shell = info["connection"]["shell_port"]
    legit = jupyter_client(info["connection_file"])
    served = Served(server, "busy")
    baseline = open_fds(pid)
    floods = [
        # Another user: refused whatever the cap, and far past the fatal ~1,100 descriptors.
        flood(other_user.popen, shell, 1500),
        # This user: refused past the cap.
        flood(subprocess.Popen, shell, JUPYTER_CAP + 500),
    ]
    try:
        in_flight = legit.execute("sleep 0.5; echo in-flight")
        held = [int(p.stdout.readline()) for p in floods]  # type: ignore[union-attr]
        assert held == [1500, JUPYTER_CAP + 500]  # the kernel accepted them all...
        bound = baseline + JUPYTER_CAP + 32
        # Shed at once here (< 0.2 s, also beside two CPU hogs), but one CI run was still
        # shedding after 15 s (189, then 160 descriptors): the bound is what is asserted, not
        # the speed, so the wait is generous.
        start = time.monotonic()
        while open_fds(pid) > bound and time.monotonic() < start + 60:
            time.sleep(0.1)
        took = time.monotonic() - start
        assert open_fds(pid) <= bound, (open_fds(pid), bound, took)  # ...the broker holds few
        reply = legit.get_shell_msg(timeout=15)
        assert reply["parent_header"]["msg_id"] == in_flight
        assert reply["content"]["status"] == "ok"
    finally:
        for proc in floods:
            proc.communicate(b"", timeout=30)
    results = served.finish()
    assert results and all(code == 0 for code, _ in results)
    assert server.proc.poll() is None and server.runtime.read_info()["pid"] == pid  # type: ignore[index]
    # Once the flood is gone, new Jupyter connections work again.
    again = jupyter_client(info["connection_file"])
    try:
        assert again.execute("echo after", reply=True, timeout=15)["content"]["status"] == "ok"
    finally:
        again.stop_channels()
        legit.stop_channels()
    stats = server.client().server_info()["stats"]
    assert stats["connections_refused"] >= 1500 + 500


@pytest.mark.parametrize("seconds", [4.0])
def test_memory_floods_on_the_agent_and_client_sockets_stay_bounded(
    server_factory: Any, seconds: float
) -> None:
    limit_mib = 256
    server: Server = server_factory(STIGMER_BROKER_MEMORY_MB=str(limit_mib))
    assert server.proc is not None
    pid = server.proc.pid
    served = Served(server, "memory")
    before = rss_mib(pid)
    peak = before
    # The attacker's own libzmq sometimes aborts under its flood ("Resource temporarily
    # unavailable (src/session_base.cpp)", in the attacker's process): another attacker takes
    # over for the time left, so the broker is flooded for the whole time all the same.
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0.5:
        attack = subprocess.Popen(
            [
                sys.executable,
                "-c",
                MEMORY_FLOOD,
                str(server.runtime.agent_socket),
                str(server.runtime.client_socket),
                "32",
                str(left),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        while attack.poll() is None:
            peak = max(peak, rss_mib(pid))
            time.sleep(0.05)
        out, err = attack.communicate(timeout=30)
        own_abort = attack.returncode == -signal.SIGABRT and b"(src/" in err
        assert (attack.returncode, out) == (0, b"done\n") or own_abort, err.decode()[-2000:]
        assert server.proc.poll() is None  # the broker lives on, whatever the attacker did
    print(f"broker RSS {before:.0f} MiB before, {peak:.0f} MiB at most during the flood")
    results = served.finish()
    # The bound: the limit, plus what arrives before the connections holding it are closed and
    # their memory is freed (measured: at most ~230 MiB over the limit).
    bound = limit_mib + 320
    assert peak < bound, f"broker RSS went from {before:.0f} MiB to {peak:.0f} MiB"
    assert results and all(code == 0 for code, _ in results)
    assert max(t for _, t in results) < 5, results
    assert server.proc.poll() is None
    stats = server.client().server_info()["stats"]
    assert stats["connections_closed"] > 0
