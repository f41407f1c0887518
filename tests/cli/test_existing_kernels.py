"""An existing kernel keeps its own cwd and options; a client's settings reach a running server;
a kernel whose first start failed leaves nothing behind (real CLI processes, a real server)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from stigmer_kernel import Client
from stigmer_kernel.config import load_config
from stigmer_kernel.errors import KernelMismatch
from tests.cli.conftest import stigmer
from tests.conftest import Server
from tests.sandbox.conftest import (
    SANDBOX_GID,
    SANDBOX_UID,
    TEST_IMAGE,
    containers_of,
    sandbox_workspace,
)
from tests.sandbox.conftest import docker_client as docker_client  # the fixture

MISSING_IMAGE = "stigmer-missing-image-for-tests:latest"  # never pulled: auto-pull is off


def one_line_error(r: subprocess.CompletedProcess[bytes]) -> str:
    """The CLI's single stderr line (and nothing on stdout: the command did not run)."""
    assert r.stdout == b"", r.stdout
    lines = r.stderr.decode().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def kernels(env: dict[str, str]) -> dict[str, dict[str, Any]]:
    listed = json.loads(stigmer(env, "kernels", "list", "--json").stdout)
    return {k["name"]: k for k in listed}


def test_an_existing_kernel_keeps_its_cwd_and_refuses_other_options(env: dict[str, str]) -> None:
    # The caller's directory is the cwd of a new kernel; an existing one keeps its own.
    assert stigmer(env, "run", "-k", "k", "--", "pwd", cwd="/usr").stdout == b"/usr\n"
    kept = stigmer(env, "run", "-k", "k", "--", "pwd; export MARK=1", cwd="/etc")
    assert (kept.returncode, kept.stdout, kept.stderr) == (0, b"/usr\n", b"")
    # An option chosen on the command line that the kernel does not have: exit 2, one line
    # naming the kernel and how to restart or remove it.
    r = stigmer(env, "run", "-k", "k", "--cwd", "/etc", "--", "pwd")
    assert r.returncode == 2
    line = one_line_error(r)
    assert "kernel 'k'" in line and "its cwd is /usr, not /etc" in line
    assert "`stigmer kernels restart k --cwd /etc`" in line
    assert "`stigmer kernels shutdown k`" in line
    for options in (["--mode", "sandbox"], ["--sandbox-image", TEST_IMAGE]):
        r = stigmer(env, "run", "-k", "k", *options, "--", "pwd")
        assert r.returncode == 2 and "`stigmer kernels shutdown k`" in one_line_error(r)
    # Options that match what it has are fine; so is a mode that only comes from the config.
    same = stigmer(env, "run", "-k", "k", "--cwd", "/usr", "--mode", "local", "--", "pwd")
    assert (same.returncode, same.stdout) == (0, b"/usr\n")
    configured = dict(env, STIGMER_EXECUTION_MODE="sandbox")
    joined = stigmer(configured, "run", "-k", "k", "--", "echo $MARK")
    assert (joined.returncode, joined.stdout, joined.stderr) == (0, b"1\n", b"")
    # The Python client gets the same check, as a KernelMismatch.
    with Client(load_config(env=env), autostart=False) as client:
        with pytest.raises(KernelMismatch, match="its cwd is /usr, not /tmp"):
            client.execute("pwd", kernel="k", cwd="/tmp")
        assert client.execute("pwd", kernel="k").stdout == "/usr\n"

    # `kernels restart` gives a fresh session, in a new cwd if asked, and keeps that option.
    restarted = stigmer(env, "kernels", "restart", "k", "--cwd", "/etc")
    assert restarted.returncode == 0, restarted.stderr
    after = stigmer(env, "run", "-k", "k", "--cwd", "/etc", "--", "pwd; echo ${MARK-gone}")
    assert (after.returncode, after.stdout) == (0, b"/etc\ngone\n")
    assert stigmer(env, "kernels", "restart", "k").returncode == 0
    assert stigmer(env, "run", "-k", "k", "--", "pwd").stdout == b"/etc\n"
    assert kernels(env)["k"]["restarts"] == 2
    missing = stigmer(env, "kernels", "restart", "nope")
    assert missing.returncode == 125 and "no kernel named 'nope'" in one_line_error(missing)
    local_image = stigmer(env, "kernels", "restart", "k", "--sandbox-image", TEST_IMAGE)
    assert local_image.returncode == 125 and "is a local kernel" in one_line_error(local_image)


def test_a_clients_kernel_settings_reach_a_server_started_earlier(env: dict[str, str]) -> None:
    started = stigmer(env, "server", "start")  # with the default TTL
    assert started.returncode == 0, started.stderr
    mine = dict(env, STIGMER_KERNEL_TTL="77")
    assert stigmer(mine, "run", "-k", "t", "--", "true").returncode == 0
    assert kernels(env)["t"]["ttl"] == 77  # the client's, not the server's 3600


def test_a_kernel_whose_first_start_failed_is_not_kept(
    env: dict[str, str], docker_client: Any
) -> None:
    workspace = sandbox_workspace()
    server = Server(env["STIGMER_RUNTIME_DIR"], env)
    settings = {"STIGMER_SANDBOX_AUTO_PULL": "false", "STIGMER_HEARTBEAT_INTERVAL": "0.5"}
    if os.getuid() == 0:
        settings["STIGMER_SANDBOX_USER"] = f"{SANDBOX_UID}:{SANDBOX_GID}"
    # The server starts with an image that does not exist; the client names one that does.
    server_env = dict(env, **settings, STIGMER_SANDBOX_IMAGE=MISSING_IMAGE)
    started = stigmer(server_env, "server", "start", cwd=workspace)
    assert started.returncode == 0, started.stderr
    client_env = dict(env, STIGMER_SANDBOX_IMAGE=TEST_IMAGE)
    try:
        ran = stigmer(
            client_env, "run", "--mode", "sandbox", "-k", "s", "--", "echo", "in", cwd=workspace
        )
        assert (ran.returncode, ran.stdout) == (0, b"in\n"), ran.stderr

        r = stigmer(
            env,
            "run",
            "--mode",
            "sandbox",
            "--sandbox-image",
            MISSING_IMAGE,
            "--",
            "true",
            cwd=workspace,
        )
        assert r.returncode == 125
        line = one_line_error(r)
        assert f"sandbox image '{MISSING_IMAGE}' is not available" in line
        assert "--sandbox-image IMAGE, or STIGMER_SANDBOX_IMAGE where you run stigmer" in line
        assert "`stigmer server stop`" in line  # auto-pull is the server's setting
        assert "not kept" in line
        assert "default" not in kernels(env)
        # The name is free again: the next command gets a new kernel, of the default mode.
        hi = stigmer(env, "run", "--json", "--", "echo", "hi", cwd=workspace)
        result = json.loads(hi.stdout)
        assert (hi.returncode, result["stdout"], result["mode"]) == (0, "hi\n", "local")
        assert hi.stderr == b""  # no notice about the kernel that never was
        records = Path(env["STIGMER_RUNTIME_DIR"], "records")
        ids = {k["id"] for k in kernels(env).values()}
        assert {p.stem for p in records.glob("*.json")} <= ids  # no record of the failed one
        assert len(containers_of(docker_client, server)) == 1  # kernel s's only
    finally:
        stigmer(env, "server", "stop")
    assert containers_of(docker_client, server) == []
