"""A short command's last output travels inside its execute_reply (``output``), through the
real broker, agent and bash: complete and in order, in fewer messages; a long command still
streams as it writes; clients that do not take it inline get stream messages as before."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import zmq

from stigmer_kernel import AsyncClient
from stigmer_kernel.protocol import Message, MsgType, Session
from tests.conftest import Server, short_tempdir


def _raw_run(
    server: Server, code: str, inline: bool, kernel: str = "inline", **options: Any
) -> tuple[list[Message], Message]:
    """``code`` sent on a bare DEALER (with the request fields ``options``): every message
    received for it, and its reply."""
    session = Session(server.runtime.read_key())
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(server.runtime.client_endpoint)
    try:
        content: dict[str, Any] = {"code": code, "kernel": kernel, "mode": "local", **options}
        if inline:
            content["inline_output"] = True
        request = session.msg(MsgType.EXECUTE_REQUEST.value, content)
        sock.send_multipart(session.serialize(request))
        received: list[Message] = []
        while True:
            assert sock.poll(30_000), f"no reply to {code!r}: {[m.msg_type for m in received]}"
            _, msg = session.deserialize(sock.recv_multipart())
            if msg.parent_id != request.msg_id:
                continue  # (a kernel event)
            received.append(msg)
            if msg.msg_type == MsgType.EXECUTE_REPLY.value:
                return received, msg
    finally:
        sock.close()


def _chunks(received: list[Message]) -> list[tuple[str, bytes]]:
    """The output of a command as a client sees it: its streams, then its reply's inline
    output."""
    out = [
        (m.content["name"], m.content["data"])
        for m in received
        if m.msg_type == MsgType.STREAM.value
    ]
    return out + [(name, data) for name, data in received[-1].content.get("output", [])]


def test_short_command_output_comes_in_its_reply(server: Server) -> None:
    """``echo hi`` is one message (the reply, with the output in it), and the output of a
    command that writes both streams arrives complete and per stream in order."""
    _raw_run(server, "true", inline=True)  # the kernel is up
    counts = []
    for _ in range(20):
        received, reply = _raw_run(server, "echo hi", inline=True)
        assert reply.content["status"] == "ok"
        assert _chunks(received) == [("stdout", b"hi\n")]
        counts.append(len(received))
    # The end report is read in the turn that read the output, mostly: one message, not two.
    assert counts.count(1) >= len(counts) // 2, counts
    received, _ = _raw_run(server, "echo a; echo b >&2; echo c; echo d >&2", inline=True)
    chunks = _chunks(received)
    for name, want in (("stdout", b"a\nc\n"), ("stderr", b"b\nd\n")):
        assert b"".join(data for n, data in chunks if n == name) == want


def test_a_client_that_does_not_take_inline_output_gets_streams(server: Server) -> None:
    """A native client that does not ask for ``inline_output`` (an older one): the broker
    sends the output as stream messages, then a reply with no ``output``."""
    received, reply = _raw_run(server, "echo hi; echo there >&2", inline=False)
    assert "output" not in reply.content
    streams = [(m.content["name"], m.content["data"]) for m in received[:-1]]
    assert streams == [("stdout", b"hi\n"), ("stderr", b"there\n")]
    assert [m.msg_type for m in received[:-1]] == [MsgType.STREAM.value] * 2


def test_output_limit_and_its_notice_hold_with_inline_output(server: Server) -> None:
    """The request's output limit cuts the output the reply carries as it cut streams, and
    the notice of what was discarded comes after it, in the reply too."""
    received, reply = _raw_run(server, "printf 0123456789; echo tail >&2", True, output_limit=4)
    chunks = _chunks(received)
    assert chunks[0] == ("stdout", b"0123")
    assert b"".join(data for name, data in chunks if name == "stderr") == (
        b"\n[stigmer] output truncated: 11 bytes past the limit of 4 bytes were discarded\n"
    )
    assert reply.content["output"][-1][0] == "stderr"  # (the notice, sent with the reply)
    assert reply.content["truncated"] is True


def test_output_streams_before_a_long_command_ends(server: Server) -> None:
    """A command that prints, then waits for a file that only the client's callback for that
    output creates: it ends only if its first output reached the client while it ran."""
    flag = Path(short_tempdir("stg-flag-")) / "seen"
    client = server.client()
    seen: list[tuple[str, bytes]] = []

    def on_output(name: str, data: bytes) -> None:
        seen.append((name, data))
        if b"first" in data:
            flag.touch()

    code = f"echo first; while [ ! -e {flag} ]; do sleep 0.02; done; echo err >&2; echo last"
    result = client.execute(code, kernel="inline-long", timeout=20, on_output=on_output)
    assert result.status == "ok", result
    assert result.stdout == "first\nlast\n" and result.stderr == "err\n"
    assert seen[0] == ("stdout", b"first\n")
    assert b"".join(d for n, d in seen if n == "stdout") == b"first\nlast\n"


async def test_async_client_gets_inline_output_through_its_callbacks(server: Server) -> None:
    async with AsyncClient(server.config, autostart=False) as client:
        seen: list[tuple[str, bytes]] = []
        text: list[str] = []
        result = await client.execute(
            "echo hi; echo oops >&2",
            kernel="inline-async",
            on_output=lambda name, data: seen.append((name, data)),
            on_stdout=text.append,
        )
        assert (result.stdout, result.stderr, result.exit_code) == ("hi\n", "oops\n", 0)
        assert b"".join(d for n, d in seen if n == "stdout") == b"hi\n"
        assert "".join(text) == "hi\n"
        # Many at once, on one kernel each: every result complete.
        results = await asyncio.gather(
            *(client.execute(f"echo {i}", kernel=f"inline-a{i % 3}") for i in range(12))
        )
        assert [r.stdout for r in results] == [f"{i}\n" for i in range(12)]


def test_auto_kernel_reply_rebuilt_with_its_decision_keeps_the_output(server: Server) -> None:
    """An auto kernel's reply is built anew (with the decision): its inline output stays."""
    client = server.client()
    seen: list[tuple[str, bytes]] = []
    result = client.execute(
        "echo via-auto; echo e >&2",
        kernel="inline-auto",
        mode="auto",
        on_output=lambda name, data: seen.append((name, data)),
    )
    assert (result.stdout, result.stderr, result.mode) == ("via-auto\n", "e\n", "local")
    assert result.auto is not None and result.auto["mode"] == "local"
    assert sorted(seen) == [("stderr", b"e\n"), ("stdout", b"via-auto\n")]
