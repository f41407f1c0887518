"""Without a working Docker engine: sandbox requests fail at once with one clear line, and the
server's other kernels keep answering (the engine check never holds up the event loop)."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from stigmer_kernel.errors import ModeUnavailable
from tests.conftest import Server, short_tempdir


class LocalLatency:
    """Runs ``echo`` on a local kernel in a loop (its own client, its own thread) until stopped,
    keeping the slowest round trip."""

    def __init__(self, server: Server) -> None:
        self.client = server.client()
        assert self.client.execute("echo warm").stdout == "warm\n"
        self.slowest = 0.0
        self.runs = 0
        self.failure: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            start = time.monotonic()
            r = self.client.execute("echo local-ok")
            self.slowest = max(self.slowest, time.monotonic() - start)
            self.runs += 1
            if r.stdout != "local-ok\n":
                self.failure = f"{r.stdout!r} {r.ename} {r.evalue}"
            time.sleep(0.02)

    def __enter__(self) -> LocalLatency:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


#: Seconds within which a request (a refusal, or a local echo) counts as prompt. The loop may
#: wait up to 0.5 s per engine check by design (ENGINE_CHECK_WAIT); a loop stalled on the engine
#: would wait its 3 s ping timeout, so this leaves slack for a slow machine and still catches that.
PROMPT = 1.5


def unreachable(host: str) -> str:
    return f"Docker engine not reachable at {host} — start Docker or use --mode local"


def test_no_engine_fails_each_request_at_once_and_local_kernels_stay_prompt(
    server_factory: Any,
) -> None:
    host = "unix:///tmp/nonexistent.sock"
    srv = server_factory(DOCKER_HOST=host)
    c = srv.client()
    with LocalLatency(srv) as local:
        for attempt in range(12):  # across several lifetimes of a cached answer
            start = time.monotonic()
            with pytest.raises(ModeUnavailable) as caught:
                c.execute("true", kernel=f"box{attempt}", mode="sandbox")
            assert str(caught.value) == unreachable(host)
            assert time.monotonic() - start < PROMPT
            time.sleep(0.4)
    assert local.failure is None and local.runs > 20
    assert local.slowest < PROMPT, f"a local command waited {local.slowest:.2f} s"


@pytest.fixture
def hung_engine() -> Iterator[str]:
    """A unix socket that accepts connections and never answers: an engine that hangs."""
    directory = short_tempdir("stg-hung-")
    path = os.path.join(directory, "docker.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(128)
    try:
        yield f"unix://{path}"
    finally:
        with contextlib.suppress(OSError):
            listener.close()
        shutil.rmtree(directory, ignore_errors=True)


def test_a_hung_engine_does_not_stall_the_server(server_factory: Any, hung_engine: str) -> None:
    srv = server_factory(DOCKER_HOST=hung_engine)
    c = srv.client()
    with LocalLatency(srv) as local:
        start = time.monotonic()
        r = c.execute("true", kernel="box", mode="sandbox")
        assert time.monotonic() - start < 10
        assert r.ename == "KernelDied", (r.ename, r.evalue)
        assert unreachable(hung_engine) in (r.evalue or "")
        start = time.monotonic()
        with pytest.raises(ModeUnavailable) as caught:  # known now: refused before a kernel
            c.execute("true", kernel="box2", mode="sandbox")
        assert str(caught.value) == unreachable(hung_engine)
        assert time.monotonic() - start < PROMPT
    assert local.failure is None and local.runs > 20
    assert local.slowest < PROMPT, f"a local command waited {local.slowest:.2f} s"
