"""Runtime directories: private, locked, independent; a server whose directory goes stops."""

from __future__ import annotations

import os
import shutil
import stat
from typing import Any

from tests.conftest import Server, wait_for


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


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    with open(f"/proc/{pid}/stat") as handle:  # a zombie: ended, not yet reaped
        return handle.read().rsplit(")", 1)[1].split()[0] == "Z"


def _agent_pid(srv: Server, kernel: str) -> int:
    c = srv.client()
    c.execute("true", kernel=kernel)
    pid = next(k["pid"] for k in c.list_kernels() if k["name"] == kernel)
    c.close()
    assert isinstance(pid, int)
    return pid


def test_a_server_whose_runtime_dir_is_removed_stops_with_its_kernels(server_factory: Any) -> None:
    srv = server_factory()
    agent = _agent_pid(srv, "k")
    shutil.rmtree(srv.runtime_dir)  # no client can reach it now
    wait_for(lambda: srv.proc.poll() is not None, timeout=30)
    assert srv.proc.returncode == 0
    wait_for(lambda: _gone(agent), timeout=30)


def test_a_new_server_in_a_recreated_dir_is_left_alone_by_the_old_one(server_factory: Any) -> None:
    old = server_factory()
    agent = _agent_pid(old, "k")
    shutil.rmtree(old.runtime_dir)
    os.mkdir(old.runtime_dir, 0o700)
    new = Server(old.runtime_dir, old.env).start()
    try:
        wait_for(lambda: old.proc.poll() is not None, timeout=30)
        wait_for(lambda: _gone(agent), timeout=30)
        # The old server removed none of the new one's files on its way out.
        rt = new.runtime
        for path in (rt.client_socket, rt.agent_socket, rt.key_path, rt.info_path):
            assert path.exists(), path
        assert rt.read_info() is not None and rt.read_info()["pid"] == new.proc.pid  # type: ignore[index]
        assert new.client().execute("echo fine", kernel="k").stdout == "fine\n"
    finally:
        new.stop()
