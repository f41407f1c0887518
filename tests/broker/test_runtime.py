"""Runtime directories: private, locked, independent."""

from __future__ import annotations

import os
import stat

from tests.conftest import Server


def _mode(path: str) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_runtime_files_are_owner_only(server: Server) -> None:
    rt = server.runtime
    assert _mode(str(rt.path)) == 0o700
    assert _mode(str(rt.agents_dir)) == 0o700
    assert _mode(str(rt.key_path)) == 0o600
    assert _mode(str(rt.client_socket)) == 0o600
    assert _mode(str(rt.agent_socket)) == 0o600


def test_second_server_on_the_same_directory_is_refused(server: Server) -> None:
    proc = server.start_refused()
    assert proc.returncode == 125
    assert "already runs" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    # The first server is unharmed.
    assert server.client().execute("echo alive").stdout == "alive\n"


def test_two_runtime_dirs_are_independent(server_factory) -> None:  # type: ignore[no-untyped-def]
    one, two = server_factory(), server_factory()
    c1, c2 = one.client(), two.client()
    c1.execute("x=one", kernel="same")
    c2.execute("x=two", kernel="same")
    assert c1.execute("echo $x", kernel="same").stdout == "one\n"
    assert c2.execute("echo $x", kernel="same").stdout == "two\n"
    one.stop()
    assert c2.execute("echo $x", kernel="same").stdout == "two\n"
    assert not one.runtime.server_running()
    assert not one.runtime.client_socket.exists()
