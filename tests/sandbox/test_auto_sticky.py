"""Install, then use, in auto mode, through the real client, a real server and real Docker.

What is real here: pip installs a real wheel (built by the test, as ``pip wheel`` would, since no
package index is reachable from a container) into the sandbox user's site-packages; npm installs
a real package tarball (``npm pack``'s format, made by the test) into node_modules; node and npm
are the host's own, copied into an image derived from the offline test image (which has neither).
The commands are the ones an agent types, decided by the real rules. The module names are made
up so that no host interpreter has them.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from stigmer_kernel import Client
from stigmer_kernel.config import load_config
from tests.conftest import Server, short_tempdir
from tests.sandbox.conftest import TEST_IMAGE, sandbox_workspace

MODULE = "sticky_six"  # what `pip install six` would give, under a name no host has
WHEEL = f"{MODULE}-1.0-py3-none-any.whl"
INSTALL = f"pip install --no-index --break-system-packages ./{WHEEL}"
IMPORT = f"python3 -c 'import {MODULE}; print({MODULE}.WHERE, {MODULE}.__file__)'"
NPM_PACKAGE = "sticky-pad"
NPM_INSTALL = f"npm install --offline --no-audit --no-fund ./{NPM_PACKAGE}-1.0.0.tgz"
REQUIRE = (
    f'node -e \'const pad = require("{NPM_PACKAGE}"); '
    'console.log(pad("x", 3), require("os").hostname())\''
)
NODE_IMAGE = "stigmer-test-node:sticky"


def sticky_reason(command: str) -> str:
    return f"kernel escalated by `{command}`, so later commands follow it to the sandbox"


def write_wheel(directory: str) -> None:
    """A pure-Python wheel of :data:`MODULE`, with the RECORD pip checks."""
    info = f"{MODULE}-1.0.dist-info"
    files = {
        f"{MODULE}.py": "import socket\nWHERE = socket.gethostname()\n",
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {MODULE}\nVersion: 1.0\n",
        f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
        "Tag: py3-none-any\n",
    }
    record = []
    for name, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=")
        record.append(f"{name},sha256={digest.decode()},{len(text.encode())}")
    files[f"{info}/RECORD"] = "\n".join([*record, f"{info}/RECORD,,"]) + "\n"
    with zipfile.ZipFile(os.path.join(directory, WHEEL), "w") as wheel:
        for name, text in files.items():
            wheel.writestr(name, text)


def write_npm_tarball(directory: str) -> None:
    """An npm package tarball (``package/`` inside, as ``npm pack`` makes it)."""
    files = {
        "package/package.json": json.dumps(
            {"name": NPM_PACKAGE, "version": "1.0.0", "main": "index.js"}
        ),
        "package/index.js": "module.exports = (s, n) => s.padStart(n, '.');\n",
    }
    with tarfile.open(os.path.join(directory, f"{NPM_PACKAGE}-1.0.0.tgz"), "w:gz") as tar:
        for name, text in files.items():
            data = text.encode()
            member = tarfile.TarInfo(name)
            member.size, member.mode = len(data), 0o644
            tar.addfile(member, io.BytesIO(data))


def workspace_with(*writers: Callable[[str], None]) -> str:
    workspace = sandbox_workspace("stg-sticky-")
    for write in writers:
        write(workspace)
    return workspace


def explain(srv: Server, kernel: str, command: str, cwd: str, **env: str) -> str:
    argv = ["run", "--explain", "--kernel", kernel, "--", command]
    r = subprocess.run(
        [sys.executable, "-m", "stigmer_kernel", *argv],
        env=env or srv.env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
    )
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_pip_install_then_import_runs_where_it_was_installed(sandbox: Server) -> None:
    workspace = workspace_with(write_wheel)
    c = sandbox.client()
    r = c.execute(INSTALL, kernel="pip1", mode="auto", cwd=workspace)
    assert (r.mode, r.rule, r.exit_code) == ("sandbox", "package-manager", 0), r.stderr
    assert f"Successfully installed {MODULE.replace('_', '-')}-1.0" in r.stdout

    r = c.execute(IMPORT, kernel="pip1", mode="auto")
    assert (r.mode, r.exit_code) == ("sandbox", 0), r.stderr
    assert r.auto == {"mode": "sandbox", "rule": "sticky", "reason": sticky_reason(INSTALL)}
    assert r.stdout.startswith(f"sandbox /tmp/home/.local/lib/python3.11/site-packages/{MODULE}")
    info = c.kernel_info("pip1")
    assert info["escalated"] == {
        "command": INSTALL,
        "rule": "package-manager",
        "reason": "pip is a package manager",
    }
    assert explain(sandbox, "pip1", IMPORT, workspace) == (
        f"sandbox: {sticky_reason(INSTALL)} (rule: sticky)\n"
    )

    # One command may opt out: decided by the rules alone, it runs on the host, which lacks it.
    r = c.execute(IMPORT, kernel="pip1", mode="auto", sticky=False)
    assert (r.mode, r.rule, r.exit_code) == ("local", "default", 1)
    assert f"No module named '{MODULE}'" in r.stderr
    assert "but stickiness is off" in (r.reason or "")
    assert c.execute(IMPORT, kernel="pip1", mode="auto").mode == "sandbox"  # still escalated

    # The broker dies and comes back: it re-adopts both sides, and the escalation with them.
    assert sandbox.proc is not None
    sandbox.proc.send_signal(signal.SIGKILL)  # the broker only: the container lives on
    sandbox.proc.wait()
    sandbox.start()
    r = c.execute(IMPORT, kernel="pip1", mode="auto")
    assert (r.mode, r.reason, r.exit_code) == ("sandbox", sticky_reason(INSTALL), 0), r.stderr

    # A restart gives a fresh sandbox, which holds nothing installed: the escalation ends.
    c.restart_kernel("pip1")
    assert c.kernel_info("pip1")["escalated"] is None
    r = c.execute(IMPORT, kernel="pip1", mode="auto")
    assert (r.mode, r.rule, r.exit_code) == ("local", "default", 1)


def test_with_stickiness_off_the_import_runs_on_the_host_and_fails(
    sandbox_factory: Callable[..., Server],
) -> None:
    srv = sandbox_factory(STIGMER_AUTO_STICKY="false")
    # Clients that did not set it themselves, so the server's setting applies.
    plain = {k: v for k, v in srv.env.items() if k != "STIGMER_AUTO_STICKY"}
    c = Client(load_config(env=plain), autostart=False)
    srv.clients.append(c)
    workspace = workspace_with(write_wheel)
    r = c.execute(INSTALL, kernel="off", mode="auto", cwd=workspace)
    assert (r.mode, r.exit_code) == ("sandbox", 0), r.stderr
    r = c.execute(IMPORT, kernel="off", mode="auto")
    assert (r.mode, r.rule, r.exit_code) == ("local", "default", 1)
    assert f"No module named '{MODULE}'" in r.stderr
    assert explain(srv, "off", IMPORT, workspace, **plain) == (
        "local: no sandbox rule matched: read-only or everyday command (the kernel escalated "
        f"by `{INSTALL}`, but stickiness is off) (rule: default)\n"
    )
    # A client whose own setting says on sends it with each request: it wins.
    mine = Client(load_config(env={**plain, "STIGMER_AUTO_STICKY": "true"}), autostart=False)
    srv.clients.append(mine)
    r = mine.execute(IMPORT, kernel="off", mode="auto")
    assert (r.mode, r.rule, r.exit_code) == ("sandbox", "sticky", 0), r.stderr


@pytest.fixture(scope="module")
def node_image(docker_client: Any) -> Iterator[str]:
    """The offline test image plus the host's node and npm (the test image has neither)."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if not node or not npm:
        pytest.fail("these tests need node and npm on the host (apt-get install nodejs npm)")
    npm_root = os.path.dirname(os.path.dirname(os.path.realpath(npm)))  # .../node_modules/npm
    script = (
        "mkdir -p /usr/local/lib/node_modules && cp /host/node /usr/local/bin/node && "
        "cp -r /host/npm /usr/local/lib/node_modules/npm && "
        "ln -s ../lib/node_modules/npm/bin/npm-cli.js /usr/local/bin/npm"
    )
    from docker.types import Mount

    container = docker_client.containers.run(
        TEST_IMAGE,
        ["sh", "-c", script],
        # Mounts, not volumes: the committed image must not declare them.
        mounts=[
            Mount("/host/node", os.path.realpath(node), type="bind", read_only=True),
            Mount("/host/npm", npm_root, type="bind", read_only=True),
        ],
        network_mode="none",
        labels={"stigmer.test": "sticky"},
        detach=True,
    )
    try:
        assert container.wait(timeout=120)["StatusCode"] == 0, container.logs()
        repository, tag = NODE_IMAGE.split(":")
        container.commit(repository, tag, changes=['CMD ["bash"]'])
    finally:
        container.remove(force=True)
    try:
        yield NODE_IMAGE
    finally:
        docker_client.images.remove(NODE_IMAGE, force=True)


def test_npm_install_then_require_runs_in_the_sandbox(
    sandbox_factory: Callable[..., Server], node_image: str
) -> None:
    srv = sandbox_factory(STIGMER_SANDBOX_IMAGE=node_image)
    workspace = workspace_with(write_npm_tarball)
    c = srv.client()
    r = c.execute(NPM_INSTALL, kernel="npm1", mode="auto", cwd=workspace)
    assert (r.mode, r.reason, r.exit_code) == (
        "sandbox",
        "npm install installs packages",
        0,
    ), r.stderr
    assert os.path.isfile(os.path.join(workspace, "node_modules", NPM_PACKAGE, "index.js"))

    r = c.execute(REQUIRE, kernel="npm1", mode="auto")
    assert (r.mode, r.rule, r.stdout, r.exit_code) == ("sandbox", "sticky", "..x sandbox\n", 0)
    assert r.reason == sticky_reason(NPM_INSTALL)
    assert explain(srv, "npm1", REQUIRE, workspace) == (
        f"sandbox: {sticky_reason(NPM_INSTALL)} (rule: sticky)\n"
    )
    # Without stickiness the same line runs on the host: node_modules is in the shared
    # workspace, so the host's node loads the code the sandbox installed. Sticky keeps it there.
    r = c.execute(REQUIRE, kernel="npm1", mode="auto", sticky=False)
    assert (r.mode, r.stdout, r.exit_code) == ("local", f"..x {os.uname().nodename}\n", 0)


def test_an_install_that_fell_back_to_the_host_does_not_escalate(
    server_factory: Callable[..., Server],
) -> None:
    srv = server_factory(
        DOCKER_HOST="unix:///nonexistent/docker.sock", STIGMER_AUTO_LOCAL_FALLBACK="true"
    )
    c = srv.client()
    cwd = short_tempdir("stg-sticky-")
    # Classified as an install; `false &&` keeps pip from running on this host.
    r = c.execute("false && pip install six", kernel="fb", mode="auto", cwd=cwd)
    assert (r.mode, r.rule) == ("local", "package-manager")
    assert c.kernel_info("fb")["escalated"] is None
    r = c.execute("echo after", kernel="fb", mode="auto")
    assert (r.mode, r.rule, r.stdout) == ("local", "default", "after\n")
