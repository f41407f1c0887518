"""Auto mode end to end: package installs in the container, everyday commands on the host."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import pytest

from stigmer_kernel import ModeUnavailable
from tests.conftest import Server, short_tempdir
from tests.sandbox.conftest import sandbox_workspace, warm_pool_server


def stigmer(
    srv: Server, *args: str, cwd: str | None = None, **env: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "stigmer_kernel", *args],
        env={**srv.env, **env},
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
    )


def test_package_manager_in_container_everyday_command_on_host(sandbox: Server) -> None:
    workspace = sandbox_workspace("stg-auto-")
    r = stigmer(
        sandbox,
        "run",
        "--kernel",
        "a1",
        "--",
        "pip --version; hostname",
        cwd=workspace,
        STIGMER_EXECUTION_MODE="auto",
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("pip ") and r.stdout.splitlines()[-1] == "sandbox"
    r = stigmer(
        sandbox,
        "run",
        "--mode",
        "auto",
        "--kernel",
        "a1",
        "--",
        "echo pipeline; hostname",
        cwd=workspace,
    )
    assert r.stdout.splitlines() == ["pipeline", os.uname().nodename]
    explain = stigmer(
        sandbox,
        "run",
        "--explain",
        "--kernel",
        "a1",
        "--",
        "pip --version",
        STIGMER_EXECUTION_MODE="auto",
    )
    assert explain.stdout == "sandbox: pip is a package manager (rule: package-manager)\n"
    explain = stigmer(sandbox, "run", "--mode", "auto", "--explain", "--", "echo pipeline")
    assert explain.stdout.startswith("local: no sandbox rule matched")


def test_replies_say_where_and_why_and_cwd_carries(sandbox: Server) -> None:
    workspace = sandbox_workspace("stg-auto-")
    os.makedirs(os.path.join(workspace, "app"))
    c = sandbox.client()
    r = c.execute("cd app && pwd", kernel="carry", mode="auto", cwd=workspace)
    assert (r.mode, r.stdout) == ("local", f"{workspace}/app\n")
    assert r.auto == {
        "mode": "local",
        "rule": "default",
        "reason": "no sandbox rule matched: read-only or everyday command",
    }
    r = c.execute("pip --version >/dev/null && pwd", kernel="carry", mode="auto")
    assert (r.mode, r.stdout) == ("sandbox", "/workspace/app\n")
    assert r.reason == "pip is a package manager"
    r = c.execute("cd .. && pip --version >/dev/null; pwd", kernel="carry", mode="auto")
    assert r.stdout == "/workspace\n"
    assert c.execute("pwd", kernel="carry", mode="auto").stdout == f"{workspace}\n"
    names = {k["name"]: k for k in c.list_kernels()}
    assert names["carry"]["mode"] == "auto"
    assert names["carry~local"]["mode"] == "local"
    assert names["carry~sandbox"]["mode"] == "sandbox"


def test_without_an_engine_sandbox_commands_fail_and_never_run_on_the_host(
    server_factory: Any,
) -> None:
    marker = os.path.join(short_tempdir("stg-auto-"), "ran-on-host")
    srv = server_factory(DOCKER_HOST="unix:///nonexistent/docker.sock")
    c = srv.client()
    with pytest.raises(ModeUnavailable) as caught:
        c.execute(f"touch {marker}; pip --version", kernel="nodock", mode="auto")
    assert str(caught.value) == (
        "this command needs the sandbox (pip is a package manager), but Docker engine not "
        "reachable at unix:///nonexistent/docker.sock — start Docker, run it with --mode local, "
        "or let auto mode fall back to the host (stigmer config set auto_local_fallback true)"
    )
    assert not os.path.exists(marker)
    cli = stigmer(srv, "run", "--mode", "auto", "--kernel", "nodock", "--", "pip install x")
    assert cli.returncode == 125 and cli.stderr.count("\n") == 1
    assert c.execute("echo fine", kernel="nodock", mode="auto").stdout == "fine\n"


def test_local_fallback_when_the_user_opted_in(server_factory: Any) -> None:
    srv = server_factory(
        DOCKER_HOST="unix:///nonexistent/docker.sock", STIGMER_AUTO_LOCAL_FALLBACK="true"
    )
    r = srv.client().execute("pip --version", kernel="fb", mode="auto")
    assert r.mode == "local" and r.exit_code == 0
    assert "auto_local_fallback" in (r.reason or "")


def test_auto_kernels_background_processes_and_files_reach_the_side_they_ran_on(
    sandbox: Server,
) -> None:
    """A process started in an auto kernel is reached on the side its start ran on, whichever
    side the kernel's later commands take; files go to the side of the last command."""
    workspace = sandbox_workspace("stg-auto-bg-")
    c = sandbox.client()
    # A package install goes to the sandbox: the process runs there, and says so.
    boxed = c.start(
        "pip --version >/dev/null 2>&1; cat /etc/hostname; read line; true", kernel="a2",
        mode="auto",
        cwd=workspace,
    )  # fmt: skip
    assert boxed.side == "sandbox"
    here = c.execute("echo on-host", kernel="a2", mode="auto")  # an everyday command: the host
    assert here.mode == "local" and here.stdout == "on-host\n"
    boxed.close_stdin()
    assert boxed.wait(timeout=60) == 0
    assert boxed.output().data.strip() != os.uname()[1].encode()  # not this host's name
    # The last command ran on the host: a relative file path is the host side's.
    c.write_file("a2", "from-files.txt", b"x", mode="auto")
    assert os.path.exists(os.path.join(workspace, "from-files.txt"))


def test_an_auto_kernels_sandbox_side_takes_a_warm_container(
    sandbox_factory: Any, docker_client: Any
) -> None:
    srv, workspace, pooled = warm_pool_server(sandbox_factory, docker_client, "stg-auto-warm-")
    c = srv.client()
    r = c.execute("pip --version >/dev/null; hostname", kernel="esc", mode="auto", cwd=workspace)
    assert (r.stdout, r.mode) == ("sandbox\n", "sandbox"), (r.ename, r.evalue)
    assert "kernel esc~sandbox took a warm sandbox" in srv.log()
    side = [k for k in c.list_kernels() if k["name"] == "esc~sandbox"]
    assert side and pooled.id.startswith(side[0]["container"]), (side, pooled.id)
