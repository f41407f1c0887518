"""Signing, serialization and verification of the wire format."""

from __future__ import annotations

import json

import msgpack
import pytest

from stigmer_kernel.errors import ProtocolError, SignatureError
from stigmer_kernel.protocol import DELIM, Session, Signer
from stigmer_kernel.protocol.session import LEAN_BUILTIN_MAX, RAW_STREAM_MIN


def test_round_trip_with_buffers_and_ids() -> None:
    a, b = Session(b"k"), Session(b"k")
    msg = a.msg(
        "execute_request", {"code": "ls", "data": b"\x00\xff"}, metadata={"m": 1}, buffers=[b"buf"]
    )
    frames = a.serialize(msg, [b"id1", b"id2"])
    assert frames[2] == DELIM
    ids, got = b.deserialize(frames)
    assert ids == [b"id1", b"id2"]
    assert got.header == msg.header
    assert got.content == {"code": "ls", "data": b"\x00\xff"}
    assert got.metadata == {"m": 1} and got.buffers == [b"buf"]
    assert got.header["version"] == "5.3"
    assert msgpack.unpackb(frames[4])["msg_type"] == "execute_request"


def test_json_packing_is_jupyter_wire_format() -> None:
    s = Session(b"secret", packing="json")
    frames = s.serialize(s.msg("kernel_info_request", {}))
    header = json.loads(frames[2])
    assert header["msg_type"] == "kernel_info_request"
    import hashlib
    import hmac

    expected = hmac.new(b"secret", b"".join(frames[2:6]), hashlib.sha256).hexdigest()
    assert frames[1] == expected.encode()


@pytest.mark.parametrize("lean", [False, True])
@pytest.mark.parametrize("seed", range(30))
def test_the_signature_is_hmacs_for_any_key_and_message(seed: int, lean: bool) -> None:
    """A lean signer's (the builtin SHA-256 below LEAN_BUILTIN_MAX, hmac above) and the
    others' (hmac) are hmac's, for keys shorter and longer than a block."""
    import hashlib
    import hmac
    import random

    rng = random.Random(seed)
    key_size = rng.choice([1, 31, 32, 63, 64, 65, 100, 200, rng.randrange(1, 300)])
    key = rng.randbytes(key_size)
    sizes = [rng.choice([0, 1, 55, 64, 1000, rng.randrange(70000)]) for _ in range(4)]
    if seed % 5 == 0:
        sizes[3] = LEAN_BUILTIN_MAX + seed  # past what a lean signer signs on the builtin
    parts = [rng.randbytes(n) for n in sizes]
    signer = Signer(key, lean=lean)
    expected = hmac.new(key, b"".join(parts), hashlib.sha256).hexdigest().encode()
    assert signer.sign(parts) == expected
    assert signer.verify(expected, parts)
    assert not signer.verify(expected[:-1] + (b"0" if expected[-1:] != b"0" else b"1"), parts)
    assert signer.sign(parts) == expected  # the kept states are not consumed


@pytest.mark.parametrize("size", [RAW_STREAM_MIN, LEAN_BUILTIN_MAX - 1, LEAN_BUILTIN_MAX + 7])
def test_a_lean_session_and_another_read_each_others_raw_streams(size: int) -> None:
    lean, other = Session(b"k", lean=True), Session(b"k")
    data = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
    for sender, receiver in ((lean, other), (other, lean)):
        frames = sender.serialize(sender.msg("stream", {"name": "stdout", "data": data}))
        assert receiver.deserialize(frames)[1].content["data"] == data


def test_no_key_signs_nothing_and_accepts_anything() -> None:
    assert Signer(b"").sign([b"a"]) == b"" and Signer(b"").verify(b"whatever", [b"a"])


def test_wrong_key_missing_signature_and_replay_are_refused() -> None:
    sender, receiver = Session(b"right"), Session(b"right")
    frames = sender.serialize(sender.msg("x", {}))
    receiver.deserialize(frames)
    with pytest.raises(SignatureError, match="replayed"):
        receiver.deserialize(frames)
    forged = Session(b"wrong").serialize(Session(b"wrong").msg("x", {}))
    with pytest.raises(SignatureError, match="invalid"):
        receiver.deserialize(forged)
    unsigned = [DELIM, b"", *frames[2:]]
    with pytest.raises(SignatureError):
        Session(b"right").deserialize(unsigned)


@pytest.mark.parametrize(
    "frames",
    [
        [b"no delimiter"],
        [DELIM],
        [DELIM, b"sig", b"h"],
        [DELIM, *([b""] * 30)],
    ],
)
def test_malformed_frames(frames: list[bytes]) -> None:
    with pytest.raises(ProtocolError):
        Session(b"").deserialize(frames)


def test_bad_dicts_are_protocol_errors() -> None:
    s = Session(b"k", check_replay=False)
    for parts in (
        [b"\xc1", b"\x80", b"\x80", b"\x80"],
        [msgpack.packb({"msg_id": 1}), b"\x80", b"\x80", b"\x80"],
        [
            msgpack.packb({"msg_id": "a", "msg_type": "t", "session": "s"}),
            b"\x80",
            b"\x80",
            msgpack.packb([1]),
        ],
    ):
        with pytest.raises(ProtocolError):
            s.deserialize([DELIM, s.signer.sign(parts), *parts])


def test_resign_changes_only_the_signature() -> None:
    a, b = Session(b"one"), Session(b"two")
    frames = a.serialize(a.msg("stream", {"name": "stdout", "data": b"x"}))
    resigned = b.resign(frames[1:])
    assert resigned[2:] == frames[2:]
    _, msg = Session(b"two").deserialize(resigned)
    assert msg.content["data"] == b"x"


def test_message_ids_are_unique() -> None:
    s = Session(b"k")
    ids = {s.msg("x").msg_id for _ in range(10000)}
    assert len(ids) == 10000


def test_large_stream_data_travels_in_a_raw_frame_covered_by_the_signature() -> None:
    agent, broker, client = Session(b"agent-key"), Session(b"agent-key"), Session(b"client-key")
    data = bytes(range(256)) * 1024  # 256 KiB
    frames = agent.serialize(agent.msg("stream", {"name": "stdout", "data": data}))
    assert frames[-1] is data  # not copied into the content frame
    content = msgpack.unpackb(frames[5])
    assert "data" not in content and len(content["data_sha256"]) == 32
    # The broker checks the small frames and re-signs them; the data goes on untouched.
    broker.verify_frames(frames[1:])
    assert broker.decode_routing(frames[1:]) == ("stream", None)
    forwarded = [b"client", *client.resign(frames[1:])]
    _, got = Session(b"client-key", check_replay=False).deserialize(forwarded)
    assert got.content == {"name": "stdout", "data": data} and got.buffers == []
    # A changed data frame does not match the signed digest.
    tampered = [*forwarded[:-1], b"x" + data[1:]]
    with pytest.raises(SignatureError):
        Session(b"client-key", check_replay=False).deserialize(tampered)


def test_small_stream_data_and_jupyter_streams_stay_in_the_content() -> None:
    for session in (Session(b"k"), Session(b"k", packing="json")):
        frames = session.serialize(session.msg("stream", {"name": "stdout", "data": b"hi\n"}))
        assert len(frames) == 6
    s = Session(b"k", packing="json")
    frames = s.serialize(s.msg("stream", {"name": "stdout", "text": "x" * 100_000}))
    assert len(frames) == 6
