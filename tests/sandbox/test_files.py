"""The file API in sandbox kernels: the container's filesystem, the sandbox user's permissions,
a full tmpfs, and a 200 MB copy both ways through ``stigmer cp`` with its memory bounded."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from stigmer_kernel import Client
from stigmer_kernel.errors import FileNotFound, NoSpace, PermissionDenied
from tests.conftest import PeakMemory, Server, make_server, short_tempdir
from tests.sandbox.conftest import SANDBOX_GID, SANDBOX_UID, TEST_IMAGE, sandbox_workspace

MB = 1024 * 1024


@pytest.fixture(scope="module")
def box(docker_client: Any) -> Iterator[tuple[Server, Client, str]]:
    """A sandbox server, a client, and kernel ``box``'s workspace (created here)."""
    settings = {"STIGMER_SANDBOX_IMAGE": TEST_IMAGE, "STIGMER_HEARTBEAT_INTERVAL": "0.5"}
    if os.getuid() == 0:
        settings["STIGMER_SANDBOX_USER"] = f"{SANDBOX_UID}:{SANDBOX_GID}"
    server = make_server(**settings).start()
    workspace = sandbox_workspace()
    client = Client(server.config, autostart=False)
    try:
        assert client.execute("true", kernel="box", mode="sandbox", cwd=workspace).ok
        yield server, client, workspace
    finally:
        client.close()
        server.stop()
        shutil.rmtree(server.runtime_dir, ignore_errors=True)
        shutil.rmtree(workspace, ignore_errors=True)


def test_each_operation_in_the_container(box: tuple[Server, Client, str]) -> None:
    _, c, workspace = box
    assert c.write_file("box", "w.txt", "in the workspace") == "/workspace/w.txt"
    assert Path(workspace, "w.txt").read_text() == "in the workspace"  # the mount, seen here
    assert os.stat(Path(workspace, "w.txt")).st_uid == SANDBOX_UID  # written as the sandbox
    c.make_dir("box", "/tmp/t/u", parents=True, mode="sandbox")
    c.write_file("box", "/tmp/t/u/f", b"\x00\x01" * 1000)
    assert not os.path.exists("/tmp/t/u/f")  # the container's /tmp, not the host's
    assert c.read_file("box", "/tmp/t/u/f") == b"\x00\x01" * 1000
    assert c.stat("box", "/tmp/t/u/f").size == 2000
    assert [e.name for e in c.list_dir("box", "/tmp/t")] == ["u"]
    assert c.sha256("box", "/tmp/t/u/f") == hashlib.sha256(b"\x00\x01" * 1000).hexdigest()
    assert c.read_file("box", "/etc/hostname").strip() == b"sandbox"
    c.remove("box", "/tmp/t", recursive=True)
    with pytest.raises(FileNotFound):
        c.stat("box", "/tmp/t")
    c.execute("mkdir -p /tmp/deep && cd /tmp/deep", kernel="box")
    assert c.write_file("box", "rel", b"r") == "/tmp/deep/rel"  # relative to the shell's cwd
    c.execute("cd /workspace", kernel="box")


def test_the_sandbox_users_permissions(box: tuple[Server, Client, str]) -> None:
    _, c, _ = box
    with pytest.raises(PermissionDenied, match="/etc/shadow"):
        c.read_file("box", "/etc/shadow")
    passwd = c.read_file("box", "/etc/passwd")
    for path in ("/etc/passwd", "/etc/new-file"):
        with pytest.raises(PermissionDenied):
            c.write_file("box", path, b"root::0:0::/root:/bin/sh\n")
    with pytest.raises(PermissionDenied):
        c.remove("box", "/etc/passwd")
    assert c.read_file("box", "/etc/passwd") == passwd
    with pytest.raises(FileNotFound):
        c.stat("box", "/etc/new-file")


def test_a_full_disk_leaves_the_old_file(box: tuple[Server, Client, str]) -> None:
    _, c, _ = box  # /run/lock is a tmpfs of 8 MB in every sandbox (container.py)
    c.write_file("box", "/run/lock/keep", b"old data")
    with pytest.raises(NoSpace, match="the old file is untouched"):
        c.write_file("box", "/run/lock/keep", os.urandom(12 * MB))
    assert c.read_file("box", "/run/lock/keep") == b"old data"
    assert [e.name for e in c.list_dir("box", "/run/lock")] == ["keep"]  # no temporary left
    c.write_file("box", "/run/lock/keep", os.urandom(MB))  # the space came back


def _cp(server: Server, *args: str) -> tuple[int, str, int, float]:
    """``stigmer cp ARGS``: its exit code, stderr, peak RSS in KiB and wall time."""
    started = time.monotonic()
    with (
        open(os.devnull, "wb") as out,
        subprocess.Popen(
            [sys.executable, "-m", "stigmer_kernel", "cp", *args],
            env=server.env,
            stdout=out,
            stderr=subprocess.PIPE,
        ) as proc,
    ):
        peak = PeakMemory(proc.pid)
        assert proc.stderr is not None
        err = proc.stderr.read()  # (until it exits: the child holds the pipe's only end)
        proc.wait()
    return proc.returncode, err.decode(), peak.stop(), time.monotonic() - started


def _peak_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def test_200_mb_up_and_down_with_bounded_memory(box: tuple[Server, Client, str]) -> None:
    server, c, workspace = box
    size = 200 * MB
    block = bytearray(os.urandom(MB))
    here = Path(short_tempdir("stg-big-"))
    source, back = here / "source.bin", here / "back.bin"
    digest = hashlib.sha256()
    with open(source, "wb") as handle:
        for n in range(size // MB):  # every MiB different, so a misplaced chunk shows
            block[:8] = n.to_bytes(8, "big")
            handle.write(block)
            digest.update(block)
    code, err, up_rss, up_time = _cp(
        server, "--mode", "sandbox", str(source), "box:/workspace/big.bin"
    )
    assert code == 0, err
    assert Path(workspace, "big.bin").stat().st_size == size
    assert c.sha256("box", "/workspace/big.bin") == digest.hexdigest()
    code, err, down_rss, down_time = _cp(server, "box:/workspace/big.bin", str(back))
    assert code == 0, err
    with open(back, "rb") as handle:
        assert hashlib.file_digest(handle, "sha256").hexdigest() == digest.hexdigest()
    broker_peak = _peak_kib(server.proc.pid) if server.proc else 0
    print(
        f"\n200 MB to a sandbox: {size / MB / up_time:.0f} MB/s up, "
        f"{size / MB / down_time:.0f} MB/s down (stigmer cp, process start included); "
        f"peak RSS: cp {max(up_rss, down_rss) // 1024} MB, broker {broker_peak // 1024} MB"
    )
    assert up_rss < 150 * 1024 and down_rss < 150 * 1024  # the file never sits in memory
    assert broker_peak < 200 * 1024
    shutil.rmtree(here)
    os.unlink(Path(workspace, "big.bin"))
