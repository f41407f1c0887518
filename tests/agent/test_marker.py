"""The session's end reports are found on the control pipe however its bytes are split; output
kept between commands is capped; code reaches bash as one quoted word, byte for byte."""

from __future__ import annotations

import random
import subprocess

from stigmer_kernel.agent.shell import BetweenCommands, ControlScanner
from stigmer_kernel.agent.shell_scripts import quote_code

MARK = b"\x1e\x1fabcdef"
END = b"\x1f\x1eabcdef"


def test_reports_split_at_every_position() -> None:
    stream = (
        b"<PS1 junk>\x1e bash: /dev/null/" + MARK + b"r0;" + END + b": Not a directory\n"
        b"+ trace\n" + MARK + b"e3;/tmp/a b" + END + b": Not a directory\n$ "
    )
    for cut in range(len(stream) + 1):
        scan = ControlScanner(MARK, END)
        found = scan.feed(stream[:cut]) + scan.feed(stream[cut:])
        assert found == [("r", "0;"), ("e", "3;/tmp/a b")]


def test_random_chunking_finds_every_report_once() -> None:
    rng = random.Random(7)
    for _ in range(200):
        parts, expected = [], []
        for i in range(rng.randint(0, 5)):
            parts.append(bytes(rng.choice(b"ab\x1e\x1f\n") for _ in range(rng.randint(0, 40))))
            parts.append(MARK + b"e%d;/x" % i + END)
            expected.append(("e", f"{i};/x"))
        stream = b"".join(parts)
        scan = ControlScanner(MARK, END)
        found = []
        pos = 0
        while pos < len(stream):
            step = rng.randint(1, 20)
            found += scan.feed(stream[pos : pos + step])
            pos += step
        assert found == expected


def test_output_between_commands_is_capped_and_counted() -> None:
    kept = BetweenCommands(limit=100)
    for _ in range(10):
        kept.keep(1, b"a" * 30)
    kept.keep(2, b"err")
    assert kept.take(1) == b"a" * 100  # the oldest 100 bytes are kept
    assert kept.take(2) == b"err"
    assert kept.take_dropped() == 200
    assert kept.take(1) == b"" and kept.take_dropped() == 0


def test_code_reaches_bash_byte_for_byte() -> None:
    code = "printf '%s' \"a'b\\\\c!d\" $'\\t'; echo \xe9\u20ac \udcff"
    line = quote_code(code)
    assert "\n" not in line and "!" not in line
    out = subprocess.run(
        ["bash", "-c", f"printf '%s' {line}"], capture_output=True, check=True
    ).stdout
    assert out == code.encode("utf-8", "surrogateescape")
