"""The end-of-command marker is found however the byte stream is split."""

from __future__ import annotations

import random

from stigmer_kernel.agent.shell import MarkerScanner

MARK = b"\x1e\x1fSTGMabcdef"


def test_marker_split_at_every_position() -> None:
    stream = b"hello \x1e world" + MARK + b"0;/tmp\0" + b"later"
    for cut in range(len(stream) + 1):
        scan = MarkerScanner(MARK, payload_end=b"\0")
        out = scan.feed(stream[:cut]) + scan.feed(stream[cut:])
        assert out == b"hello \x1e world"
        assert scan.found and scan.payload == b"0;/tmp"
        assert scan.after == b"later"


def test_random_chunking_never_loses_or_holds_bytes() -> None:
    rng = random.Random(7)
    for _ in range(200):
        body = bytes(rng.choice(b"ab\x1e\x1fS\n") for _ in range(rng.randint(0, 300)))
        stream = body + MARK
        scan = MarkerScanner(MARK)
        out = b""
        pos = 0
        while pos < len(stream):
            step = rng.randint(1, 20)
            out += scan.feed(stream[pos : pos + step])
            pos += step
        assert scan.found
        assert out == body


def test_output_after_marker_goes_to_next_command() -> None:
    scan = MarkerScanner(MARK)
    assert scan.feed(b"a" + MARK + b"bg-output") == b"a"
    scan.reset()
    assert scan.feed(b"more") == b"bg-outputmore"
