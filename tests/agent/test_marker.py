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


def test_output_between_commands_is_capped_and_counted() -> None:
    scan = MarkerScanner(MARK, payload_end=b"\0", after_limit=100)
    assert scan.feed(b"cmd-output" + MARK + b"0;/tmp\0" + b"a" * 60) == b"cmd-output"
    for _ in range(10):
        assert scan.feed(b"b" * 30) == b""
    assert scan.after == b"a" * 60 + b"b" * 40  # the oldest 100 bytes are kept
    assert scan.dropped == 60 + 300 - 100
    scan.reset()
    # The next command's output, marker split across reads, is complete and after what was kept.
    body = b"x" * 5000
    stream = body + MARK + b"0;/\0"
    out = scan.feed(stream[:5003]) + scan.feed(stream[5003:5010]) + scan.feed(stream[5010:])
    assert out == b"a" * 60 + b"b" * 40 + body
    assert scan.found and scan.payload == b"0;/"
    assert scan.after == b"" and scan.dropped == 260


def test_a_long_command_output_is_never_capped() -> None:
    scan = MarkerScanner(MARK, after_limit=10)
    body = bytes(range(256)) * 4096  # 1 MiB, far past the cap on output between commands
    out = b"".join(scan.feed(body[i : i + 4096]) for i in range(0, len(body), 4096))
    out += scan.feed(MARK[:3]) + scan.feed(MARK[3:] + b"tail")
    assert out == body
    assert scan.found and scan.after == b"tail" and scan.dropped == 0


def test_output_set_aside_for_a_hidden_run_stays_within_the_cap() -> None:
    scan = MarkerScanner(MARK, after_limit=10)
    scan.feed(MARK + b"12345678")
    held = scan.take_after()
    scan.reset()
    assert scan.feed(b"completion" + MARK + b"abcdef") == b"completion"
    scan.restore_after(held)
    assert scan.after == b"12345678ab"
    assert scan.dropped == 4


def test_a_marker_among_output_between_commands_ended_no_command() -> None:
    scan = MarkerScanner(MARK, payload_end=b"\0")
    assert scan.feed(b"out" + MARK + b"0;/\0") == b"out"
    scan.feed(b"bg\n" + MARK + b"130;/\0" + b"more")  # a prompt shown again, then a job's output
    scan.reset()
    assert scan.stale == 1
    assert scan.feed(b"next" + MARK + b"0;/tmp\0") == b"bg\nmorenext"
    assert scan.found and scan.payload == b"0;/tmp"
