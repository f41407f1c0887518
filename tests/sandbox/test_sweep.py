"""The start-up sweep of dead servers' containers does not give up on an engine that answers late
(a slow ping on a busy machine, an engine started after the server)."""

from __future__ import annotations

import contextlib
import os
import selectors
import socket
import threading
from collections.abc import Iterator
from typing import Any

from stigmer_kernel.provisioners.container import server_id
from tests.conftest import Server, short_tempdir, wait_for
from tests.sandbox.conftest import TEST_IMAGE, containers_of

ENGINE_SOCKET = "/var/run/docker.sock"


class LateEngine:
    """A unix socket that answers nothing until :meth:`open` forwards it to the real engine."""

    def __init__(self) -> None:
        self.path = os.path.join(short_tempdir("stg-eng-"), "docker.sock")
        self._listener: socket.socket | None = None
        self._threads: list[threading.Thread] = []
        self._conns: list[socket.socket] = []

    def open(self) -> None:
        listener = socket.socket(socket.AF_UNIX)
        listener.bind(self.path)
        listener.listen(16)
        self._listener = listener
        self._spawn(self._accept)

    def _spawn(self, target: Any, *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        thread.start()
        self._threads.append(thread)

    def _accept(self) -> None:
        assert self._listener is not None
        with contextlib.suppress(OSError):
            while True:
                near, _ = self._listener.accept()
                self._conns.append(near)
                self._spawn(self._forward, near)

    def _forward(self, near: socket.socket) -> None:
        """Carry bytes both ways between ``near`` and the engine until either side closes."""
        with near, socket.socket(socket.AF_UNIX) as far, contextlib.suppress(OSError):
            far.connect(ENGINE_SOCKET)
            with selectors.DefaultSelector() as sel:
                sel.register(near, selectors.EVENT_READ, far)
                sel.register(far, selectors.EVENT_READ, near)
                while True:
                    for key, _ in sel.select():
                        src: socket.socket = key.fileobj  # type: ignore[assignment]
                        data = src.recv(65536)
                        if not data:
                            return
                        key.data.sendall(data)

    def close(self) -> None:
        if self._listener is not None:
            self._listener.close()  # the accept thread ends; forwarders end with their peers
        for conn in self._conns:  # wakes its forwarder, which closes both ends
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        for thread in self._threads:
            thread.join(timeout=10)


@contextlib.contextmanager
def late_engine() -> Iterator[LateEngine]:
    engine = LateEngine()
    try:
        yield engine
    finally:
        engine.close()


def test_leftovers_go_once_a_late_engine_answers(server_factory: Any, docker_client: Any) -> None:
    with late_engine() as engine:
        srv: Server = server_factory(
            DOCKER_HOST=f"unix://{engine.path}", STIGMER_SANDBOX_IMAGE=TEST_IMAGE
        )
        # A container of a dead server on this runtime directory, made before the server ran.
        srv.stop()
        stray = docker_client.containers.create(
            TEST_IMAGE,
            ["sleep", "60"],
            labels={
                "stigmer.server": server_id(srv.runtime),
                "stigmer.runtime_dir": srv.runtime_dir,
                "stigmer.kernel_id": "gone-1",
            },
        )
        try:
            srv.start()
            wait_for(lambda: "no leftover check yet" in srv.log(), timeout=30)
            assert stray.id in {c.id for c in containers_of(docker_client, srv)}
            engine.open()
            wait_for(
                lambda: stray.id not in {c.id for c in containers_of(docker_client, srv)},
                timeout=60,
            )
        finally:
            with contextlib.suppress(Exception):
                stray.remove(force=True)
