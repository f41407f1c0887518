"""The socket pump in-process: real ZeroMQ sockets on inproc://, no server."""

from __future__ import annotations

import ast
import asyncio
import itertools
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import zmq

from stigmer_kernel.broker import reactor
from stigmer_kernel.broker.reactor import Reactor

_names = itertools.count()


class Bench:
    """A reactor on the running loop, a bound ROUTER and its DEALER peer ``b"peer"``."""

    def __init__(self, ctx: zmq.Context[Any], hwm: int = 1000) -> None:
        self.ctx = ctx
        self.gone: list[bytes] = []
        self.reactor = Reactor(on_gone=lambda peer, sock: self.gone.append(peer))
        self.reactor.start(asyncio.get_running_loop())
        endpoint = f"inproc://reactor-{next(_names)}"
        self.router: zmq.Socket[Any] = ctx.socket(zmq.ROUTER)
        self.router.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self.router.setsockopt(zmq.LINGER, 0)
        self.router.setsockopt(zmq.SNDHWM, hwm)
        self.router.bind(endpoint)
        self.peer: zmq.Socket[Any] = ctx.socket(zmq.DEALER)
        self.peer.setsockopt(zmq.LINGER, 0)
        self.peer.setsockopt(zmq.RCVHWM, hwm)
        self.peer.setsockopt(zmq.ROUTING_ID, b"peer")
        self.peer.connect(endpoint)
        self.received: list[list[bytes]] = []
        self.reactor.register(self.router, self.received.append)

    def close(self) -> None:
        self.reactor.close()
        self.peer.close(0)

    async def connected(self) -> None:
        """The ROUTER knows the peer (it said hello)."""
        self.peer.send(b"hello")
        await until(lambda: self.received)
        self.received.clear()

    def fill(self, marker: bytes) -> int:
        """Send to the peer until its queue is full; how many went."""
        for sent in range(100_000):
            if not self.reactor.send(self.router, [b"peer", marker, str(sent).encode()]):
                return sent
        raise AssertionError("the queue never filled")

    def drain(self) -> list[list[bytes]]:
        frames = []
        while self.peer.poll(0):
            frames.append(self.peer.recv_multipart())
        return frames


async def until(predicate: Callable[[], object], timeout: float = 0.5) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.002)


@pytest.fixture
async def bench() -> AsyncIterator[Bench]:
    ctx: zmq.Context[Any] = zmq.Context()
    b = Bench(ctx, hwm=4)
    try:
        await b.connected()
        yield b
    finally:
        b.close()
        ctx.term()


@pytest.mark.timeout(5)
async def test_a_registered_router_hands_each_message_to_its_handler(bench: Bench) -> None:
    for n in range(3):
        bench.peer.send_multipart([b"ask", str(n).encode()])
    await until(lambda: len(bench.received) == 3)
    assert bench.received == [
        [b"peer", b"ask", b"0"],
        [b"peer", b"ask", b"1"],
        [b"peer", b"ask", b"2"],
    ]
    assert bench.reactor.send(bench.router, [b"peer", b"answer"])
    assert bench.peer.recv_multipart() == [b"answer"]


@pytest.mark.timeout(5)
async def test_what_must_arrive_waits_for_a_full_peer_in_order(bench: Bench) -> None:
    sent = bench.fill(b"chunk")
    assert sent > 0 and bench.reactor.stats["dropped_slow"] == 1  # the one that met a full queue
    finals = [[b"peer", b"final", str(n).encode()] for n in range(3)]
    for frames in finals:
        assert not bench.reactor.send(bench.router, frames, must_arrive=True)
    assert bench.reactor.deferred(bench.router, b"peer")

    got: list[list[bytes]] = []

    def reads_and_retries() -> bool:
        got.extend(bench.drain())
        bench.reactor.retry_deferred()
        return not bench.reactor.deferred(bench.router, b"peer") and not bench.peer.poll(0)

    await until(reads_and_retries)
    got.extend(bench.drain())
    assert got[:sent] == [[b"chunk", str(n).encode()] for n in range(sent)]
    assert got[sent:] == [frames[1:] for frames in finals]
    assert bench.reactor.stats["dropped_slow"] == 1  # nothing that must arrive was lost


@pytest.mark.timeout(5)
async def test_a_full_peer_loses_what_need_not_arrive_counted(bench: Bench) -> None:
    sent = bench.fill(b"chunk")
    for _ in range(5):
        assert not bench.reactor.send(bench.router, [b"peer", b"more"])
    assert bench.reactor.stats["dropped_slow"] == 6
    assert not bench.reactor.deferred(bench.router, b"peer")
    await asyncio.sleep(0.01)
    bench.reactor.retry_deferred()
    assert len(bench.drain()) == sent


@pytest.mark.timeout(5)
async def test_a_peer_that_is_gone_is_reported_and_forgotten(bench: Bench) -> None:
    assert not bench.reactor.send(bench.router, [b"nobody", b"answer"], must_arrive=True)
    assert bench.gone == [b"nobody"]
    assert not bench.reactor.deferred(bench.router, b"nobody")


@pytest.mark.timeout(5)
async def test_unregister_stops_delivery_and_forgets_what_waited(bench: Bench) -> None:
    bench.fill(b"chunk")
    assert not bench.reactor.send(bench.router, [b"peer", b"final"], must_arrive=True)
    router = bench.router
    bench.peer.send(b"already waiting")
    assert router.poll(500)  # it reached the socket, but the pump has not run since
    bench.reactor.unregister(router)
    assert router.closed and not bench.reactor.registered(router)
    assert not bench.reactor.deferred(router, b"peer")
    await asyncio.sleep(0.02)
    assert bench.received == []
    assert not bench.reactor.send(router, [b"peer", b"late"], must_arrive=True)
    assert not bench.reactor.deferred(router, b"peer")


def test_the_reactor_knows_nothing_of_kernels_or_frontends() -> None:
    tree = ast.parse(Path(reactor.__file__).read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add("." * node.level + (node.module or ""))
    allowed = {"__future__", "asyncio", "collections", "collections.abc", "contextlib"}
    allowed |= {"errno", "logging", "time", "typing", "zmq"}
    allowed |= {"..protocol.wire"}  # how frames go on a socket: nothing of kernels
    assert imported <= allowed, imported - allowed


def test_a_messages_connection_is_found_whichever_frame_libzmq_marks(tmp_path: Path) -> None:
    """libzmq 4.3.4 gives no descriptor (EINVAL) on the routing id of a connection's first
    message: the guard asks the other frames (a pump that raised there lost agents' first
    messages, and with them their registration)."""
    from stigmer_kernel.broker.connections import _source_fd

    ctx = zmq.Context()
    try:
        router, dealer = ctx.socket(zmq.ROUTER), ctx.socket(zmq.DEALER)
        router.bind(f"ipc://{tmp_path}/r.sock")
        dealer.connect(f"ipc://{tmp_path}/r.sock")
        dealer.send_multipart([b"a", b"b"])
        assert router.poll(5000)
        frames = router.recv_multipart(copy=False)
        fd = _source_fd(frames)
        assert fd >= 0 and fd == int(frames[-1].get(zmq.SRCFD))
        unmarked = zmq.Frame(b"made here")  # no connection: libzmq refuses to name one
        with pytest.raises(zmq.ZMQError):
            unmarked.get(zmq.SRCFD)
        assert _source_fd([unmarked, *frames[1:]]) == fd
        assert _source_fd([unmarked]) == -1
    finally:
        ctx.destroy(linger=0)
