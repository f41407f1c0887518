"""The pure-Python ZMTP DEALER of the lean path (what ``stigmer run`` uses): against the real
broker, a libzmq ROUTER over TCP, a broker that goes away mid-command, and peers that speak
something else."""

from __future__ import annotations

import os
import signal
import socket
import threading
from collections.abc import Iterator

import pytest
import zmq

from stigmer_kernel import StigmerError
from stigmer_kernel.client._blocking import BlockingTransport
from stigmer_kernel.client._call import client_identity
from stigmer_kernel.client._requests import exec_result
from stigmer_kernel.client._zmtp import ZmtpDealer
from stigmer_kernel.client.discovery import find_server
from stigmer_kernel.errors import ServerNotRunning
from stigmer_kernel.protocol import MsgType
from tests.conftest import Server, processes_matching, short_tempdir, wait_for


def _execute(transport: BlockingTransport, code: str, **extra: object) -> tuple[str, int]:
    content = {"code": code, "kernel": "default", "mode": None, "cwd": None, "silent": False}
    content.update(extra)
    reply, call = transport.request(MsgType.EXECUTE_REQUEST.value, content)
    result = exec_result(content, reply, call)
    assert result.exit_code is not None, (result.ename, result.evalue)
    return result.stdout, result.exit_code


@pytest.fixture
def zmtp(server: Server) -> Iterator[BlockingTransport]:
    transport = BlockingTransport(find_server(server.config), client_identity(), zmtp=True)
    yield transport
    transport.close()


def test_a_command_runs_through_the_pure_python_dealer(zmtp: BlockingTransport) -> None:
    assert _execute(zmtp, "echo hello; exit 3") == ("hello\n", 3)
    assert _execute(zmtp, "echo again") == ("again\n", 0)  # the same connection, a 2nd request


def test_big_output_arrives_whole_in_long_and_short_frames(zmtp: BlockingTransport) -> None:
    out, code = _execute(zmtp, "seq 1 300000; printf x")
    assert code == 0
    assert out == "".join(f"{i}\n" for i in range(1, 300001)) + "x"


def test_a_broker_that_goes_away_mid_command_fails_the_request(server: Server) -> None:
    """Killed, it says nothing: the liveness check ends the wait (no hang)."""
    transport = BlockingTransport(find_server(server.config), client_identity(), zmtp=True)
    assert server.proc is not None
    proc = server.proc

    def kill_the_broker() -> None:
        wait_for(lambda: bool(processes_matching("sleep 31")))
        proc.kill()

    killer = threading.Thread(target=kill_the_broker)
    killer.start()
    try:
        with pytest.raises(ServerNotRunning, match="stopped before answering"):
            _execute(transport, "sleep 31")
    finally:
        killer.join()
        transport.close()
        for pid in processes_matching(server.runtime_dir):  # its agent, orphaned by SIGKILL
            os.kill(pid, signal.SIGKILL)


def test_a_broker_that_stops_mid_command_says_so(server: Server) -> None:
    transport = BlockingTransport(find_server(server.config), client_identity(), zmtp=True)
    assert server.proc is not None
    proc = server.proc

    def stop_the_broker() -> None:
        wait_for(lambda: bool(processes_matching("sleep 32")))
        proc.terminate()

    stopper = threading.Thread(target=stop_the_broker)
    stopper.start()
    content = {"code": "sleep 32", "kernel": "default", "mode": None, "cwd": None}
    try:
        reply, call = transport.request(MsgType.EXECUTE_REQUEST.value, content)
    finally:
        stopper.join()
        transport.close()
    result = exec_result(content, reply, call)
    assert (result.ename, result.evalue) == (
        "KernelShutdown",
        "kernel 'default' was shutdown: the server is shutting down",
    )
    wait_for(lambda: not processes_matching("sleep 32"))  # the agent ends it as it stops


@pytest.mark.parametrize(
    ("says", "why"),
    [
        (b"HTTP/1.1 400 Bad Request\r\n\r\n" + b"." * 64, "does not speak ZMTP 3"),
        (b"", "closed the connection during the handshake"),
    ],
)
def test_a_peer_that_speaks_something_else_is_named(says: bytes, why: str) -> None:
    path = os.path.join(short_tempdir(), "fake.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(1)

    def answer() -> None:
        peer, _ = listener.accept()
        peer.sendall(says)
        peer.close()

    thread = threading.Thread(target=answer)
    thread.start()
    try:
        with pytest.raises(StigmerError) as failed:
            ZmtpDealer(f"ipc://{path}", b"me")
    finally:
        thread.join()
        listener.close()
    assert f"cannot connect to ipc://{path}" in str(failed.value)
    assert why in str(failed.value)


def test_nobody_listening_is_a_clear_error() -> None:
    path = os.path.join(short_tempdir(), "nobody.sock")
    with pytest.raises(StigmerError, match=f"cannot connect to ipc://{path}: "):
        ZmtpDealer(f"ipc://{path}", b"me")


def test_a_libzmq_router_over_tcp_sees_its_identity_and_frames() -> None:
    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    try:
        port = router.bind_to_random_port("tcp://127.0.0.1")
        dealer = ZmtpDealer(f"tcp://127.0.0.1:{port}", b"c:me")
        big = os.urandom(70000)
        dealer.send([b"", b"short", big])
        assert router.poll(10000)
        assert router.recv_multipart() == [b"c:me", b"", b"short", big]
        router.send_multipart([b"c:me", b"back", big, b""])
        got: list[bytes] | None = None

        def arrived() -> bool:
            nonlocal got
            got = dealer.recv()
            return got is not None

        wait_for(arrived)
        assert got == [b"back", big, b""]
        dealer.close()
    finally:
        router.close(linger=0)
        ctx.term()


def test_frames_big_and_small_arrive_whole_whatever_the_reads_cut() -> None:
    """A big frame (an output chunk) is read into a buffer of its own: its start comes with the
    frames before it, its end with the ones after; every message arrives whole, in order."""
    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    try:
        port = router.bind_to_random_port("tcp://127.0.0.1")
        dealer = ZmtpDealer(f"tcp://127.0.0.1:{port}", b"c:big")
        dealer.send([b"hello"])
        assert router.poll(10000)
        router.recv_multipart()
        sizes = [65536, 3, 262144, 65535, 1 << 20, 0, 300001, 70000, 5]
        sent = [[b"head", os.urandom(n), b"tail"] for n in sizes * 3]
        for message in sent:
            router.send_multipart([b"c:big", *message])
        got: list[list[bytes]] = []

        def all_arrived() -> bool:
            while (message := dealer.recv()) is not None:
                got.append(message)
            return len(got) == len(sent)

        wait_for(all_arrived)
        assert got == sent
        dealer.close()
    finally:
        router.close(linger=0)
        ctx.term()


def test_it_connects_again_to_a_restarted_server_and_follows_its_key(server: Server) -> None:
    transport = BlockingTransport(find_server(server.config), client_identity(), zmtp=True)
    try:
        assert _execute(transport, "echo one") == ("one\n", 0)
        assert server.proc is not None
        server.proc.terminate()  # a clean stop: the key is removed, a new one made at start
        server.proc.wait(timeout=15)
        server.start()
        assert _execute(transport, "echo two") == ("two\n", 0)  # sent again, signed anew
    finally:
        transport.close()
