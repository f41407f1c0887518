"""The head/tail elision handed to a model: what is kept, what is counted."""

from __future__ import annotations

import pytest

from stigmer_kernel.mcp.bounded import bound


def test_output_that_fits_is_whole() -> None:
    got = bound(b"one\ntwo\n", 100)
    assert got.text == "one\ntwo\n"
    assert not got.truncated and got.elided_bytes == 0 and got.total_bytes == 8


def test_long_output_keeps_head_and_tail_and_counts_the_middle() -> None:
    data = b"".join(b"line %04d\n" % i for i in range(1000))  # 10 bytes a line
    got = bound(data, 1000)
    assert got.text.startswith("line 0000\n")
    assert got.text.endswith("line 0999\n")
    assert got.truncated
    kept = got.text.encode()
    marker = f"[... {got.elided_bytes} bytes, {got.elided_lines} lines elided ...]\n"
    assert marker in got.text
    assert len(kept) - len(marker) + got.elided_bytes == len(data)
    assert got.elided_lines == got.elided_bytes // 10  # cut at line ends
    assert len(kept) - len(marker) <= 1000


def test_cuts_never_split_a_utf8_character() -> None:
    data = "é" * 5000  # 2 bytes each, no newline
    got = bound(data.encode(), 999)
    assert "\ufffd" not in got.text
    assert got.text.count("é") * 2 + got.elided_bytes == 10000


@pytest.mark.parametrize("limit", [0, 1, 7])
def test_tiny_budgets_still_say_what_was_elided(limit: int) -> None:
    got = bound(b"x" * 50, limit)
    assert "50 bytes" in got.text or f"{got.elided_bytes} bytes" in got.text
    assert got.elided_bytes >= 50 - limit


def test_a_negative_budget_is_refused() -> None:
    with pytest.raises(ValueError):
        bound(b"x", -1)
