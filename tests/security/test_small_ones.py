"""Kernel names, terminal escapes in listings, and limits on how many kernels one may make."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from stigmer_kernel import Client, RequestError
from stigmer_kernel.runtime import RuntimeDir
from tests.conftest import Server, short_tempdir


@pytest.mark.parametrize("name", ["k\n", "k\nforged row", "k\r", "k\x1b[2J", "k "])
def test_kernel_names_with_line_breaks_or_escapes_are_refused(client: Client, name: str) -> None:
    with pytest.raises(RequestError) as refused:
        client.execute("true", kernel=name)
    assert refused.value.ename == "BadRequest"
    assert all(k["name"] != name for k in client.list_kernels())


def test_kernels_list_never_prints_terminal_escapes(server: Server, client: Client) -> None:
    base = short_tempdir("stg-esc-")
    hostile = os.path.join(base, "\x1b]0;pwned\x07\x1b[2J\nforged-row")
    os.mkdir(hostile)
    client.execute(f"cd {base!r}/*", kernel="esc")
    assert client.kernel_info("esc")["cwd"] == hostile
    out = subprocess.run(
        [sys.executable, "-m", "stigmer_kernel", "kernels", "list"],
        env=server.env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 0, out.stderr
    assert "\x1b" not in out.stdout and "\x07" not in out.stdout
    rows = out.stdout.splitlines()
    assert len(rows) == 2  # the header and one row: the cwd's newline split nothing
    assert "\\x1b]0;pwned\\x07\\x1b[2J\\nforged-row" in rows[1]


def test_kernel_limits_per_client_and_per_server(server_factory: Callable[..., Server]) -> None:
    srv = server_factory(STIGMER_MAX_KERNELS="3", STIGMER_MAX_KERNELS_PER_CLIENT="2")
    a, b = srv.client(), srv.client()
    a.execute("true", kernel="a1")
    a.execute("true", kernel="a2")
    with pytest.raises(RequestError) as refused:
        a.execute("true", kernel="a3")
    assert refused.value.ename == "TooManyKernels"
    assert "max_kernels_per_client 2" in str(refused.value)
    assert a.execute("echo again", kernel="a1").stdout == "again\n"  # its own kernels still serve
    b.execute("true", kernel="b1")
    with pytest.raises(RequestError) as full:
        b.execute("true", kernel="b2")
    assert full.value.ename == "TooManyKernels"
    assert "max_kernels 3" in str(full.value) and "STIGMER_MAX_KERNELS" in str(full.value)
    assert sorted(k["name"] for k in b.list_kernels()) == ["a1", "a2", "b1"]
    a.shutdown_kernel("a1")
    assert b.execute("echo room", kernel="b2").stdout == "room\n"
    cli = subprocess.run(
        [sys.executable, "-m", "stigmer_kernel", "run", "--kernel", "c1", "--", "true"],
        env=srv.env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert cli.returncode == 125
    assert len(cli.stderr.strip().splitlines()) == 1 and "max_kernels 3" in cli.stderr


def test_the_lock_holder_is_the_only_pid_server_stop_may_signal(server: Server) -> None:
    """`server stop` falls back to SIGTERM when the server does not answer: only to the
    process the kernel's lock table names as the holder of the directory's lock."""
    assert server.proc is not None
    assert server.runtime.lock_holder() == server.proc.pid
    unlocked = RuntimeDir(Path(short_tempdir("stg-nolock-")))
    unlocked.lock_path.write_text("")
    assert unlocked.lock_holder() is None
