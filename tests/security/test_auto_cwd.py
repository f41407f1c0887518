"""Auto mode: the sandbox side must not choose the host side's working directory.

The sandbox side reports its cwd (its ``$PWD``), which code in the sandbox controls. A carried
directory is resolved on the host and used only if it lies inside the workspace.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest

from stigmer_kernel.broker.auto_router import _ESCAPES, translate
from tests.conftest import Server
from tests.sandbox.conftest import sandbox_workspace

IN_SANDBOX = "pip --version >/dev/null"  # auto mode sends this command line to the sandbox


@pytest.fixture
def workspace() -> str:
    path = sandbox_workspace("stg-autocwd-")  # sandboxes run as its owner, never root
    os.makedirs(os.path.join(path, "app"))
    os.symlink("/", os.path.join(path, "hostroot"))
    os.symlink("app", os.path.join(path, "inner"))
    return path


def test_translate_resolves_on_the_host(workspace: str) -> None:
    assert translate("/workspace/app", "sandbox", "local", workspace) == f"{workspace}/app"
    assert translate("/workspace/inner", "sandbox", "local", workspace) == f"{workspace}/app"
    assert translate("/workspace/../../root", "sandbox", "local", workspace) is None
    assert translate("/workspace/app/../../../root", "sandbox", "local", workspace) is None
    assert translate("/workspace/hostroot", "sandbox", "local", workspace) is _ESCAPES
    assert translate("/workspace/hostroot/etc", "sandbox", "local", workspace) is _ESCAPES
    assert translate("relative", "sandbox", "local", workspace) is None
    assert translate(f"{workspace}/inner", "local", "sandbox", workspace) == "/workspace/app"
    assert translate(f"{workspace}/hostroot", "local", "sandbox", workspace) is _ESCAPES


@pytest.mark.parametrize(
    "escape",
    [
        "export PWD=/workspace/../../../../root",
        "PWD=/workspace/app/../../../../../root",
        "cd /workspace/hostroot/etc",  # (the sandbox's uid, never root, cannot enter /root)
        "cd /workspace/hostroot",
    ],
)
def test_the_sandbox_side_cannot_pick_the_hosts_cwd(
    sandbox_factory: Callable[..., Server], workspace: str, escape: str
) -> None:
    srv = sandbox_factory()
    c = srv.client()
    first = c.execute("cd app && pwd", kernel="ac", mode="auto", cwd=workspace)
    assert (first.mode, first.stdout) == ("local", f"{workspace}/app\n")
    r = c.execute(f"{IN_SANDBOX}; {escape}; echo moved", kernel="ac", mode="auto")
    assert (r.mode, r.stdout, r.exit_code) == ("sandbox", "moved\n", 0), (r.ename, r.evalue)
    host = c.execute("pwd", kernel="ac", mode="auto")
    assert host.mode == "local"
    assert host.stdout == f"{workspace}/app\n"  # the host side kept its own directory
    if "hostroot" in escape:  # inside the workspace as a path, outside it on the host
        assert host.reason is not None and "outside the workspace" in host.reason


def test_a_directory_inside_the_workspace_still_carries(
    sandbox_factory: Callable[..., Server], workspace: str
) -> None:
    srv = sandbox_factory()
    c = srv.client()
    c.execute("true", kernel="ok", mode="auto", cwd=workspace)
    r = c.execute(f"{IN_SANDBOX}; cd /workspace/inner && pwd", kernel="ok", mode="auto")
    assert (r.mode, r.stdout) == ("sandbox", "/workspace/inner\n")
    host = c.execute("pwd", kernel="ok", mode="auto")
    assert (host.mode, host.stdout) == ("local", f"{workspace}/app\n")
