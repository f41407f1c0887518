"""`stigmer sandbox build pool --from IMAGE`: an image that carries the agent, offline."""

from __future__ import annotations

import io
import subprocess
import sys
from typing import Any

from stigmer_kernel._version import __version__
from tests.conftest import Server
from tests.sandbox.conftest import SANDBOX_UID, SESSION, TEST_IMAGE


def stigmer(srv: Server, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "stigmer_kernel", *args],
        env=srv.env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_a_pool_image_carries_the_agent(sandbox: Server, docker_client: Any) -> None:
    tag = f"stigmer-pool:tests-{SESSION}"
    built = stigmer(sandbox, "sandbox", "build", "pool", "--from", TEST_IMAGE, "--tag", tag)
    assert built.returncode == 0, built.stderr
    assert built.stdout.startswith(f"built {tag} (")
    image = docker_client.images.get(tag)
    assert image.labels["stigmer.agent_version"] == __version__
    # The agent runs from the image alone (no host mount), as a user of no account.
    out = docker_client.containers.run(
        tag, ["--help"], user=f"{SANDBOX_UID}:{SANDBOX_UID}", remove=True, network_mode="none"
    )
    assert b"--join" in out
    # A manifest's own command (Kubernetes) finds `stigmer agent join` on PATH.
    out = docker_client.containers.run(
        tag, ["agent", "join", "--help"], entrypoint="stigmer", user=f"{SANDBOX_UID}:{SANDBOX_UID}",
        remove=True, network_mode="none",
    )  # fmt: skip
    assert b"--pool" in out
    mode = docker_client.containers.run(
        tag, ["-c", "import os; print(oct(os.stat('/workspace').st_mode))"],
        entrypoint="python3", remove=True, network_mode="none",
    )  # fmt: skip
    assert mode.strip() == b"0o41777"  # a scratch mount there is anyone's, sticky


def test_an_image_that_cannot_run_the_agent_is_refused_with_the_reason(
    sandbox: Server, docker_client: Any
) -> None:
    broken = f"stigmer-test-bare:nozmq-{SESSION}"
    dockerfile = f"FROM {TEST_IMAGE}\nRUN rm -rf /usr/lib/python3/dist-packages/zmq\n"
    docker_client.images.build(fileobj=io.BytesIO(dockerfile.encode()), tag=broken, rm=True)
    refused = stigmer(sandbox, "sandbox", "build", "pool", "--from", broken, "--tag", broken + "p")
    assert refused.returncode != 0
    assert "cannot run the agent" in refused.stderr and "pyzmq" in refused.stderr
    assert "pool needs --from" in stigmer(sandbox, "sandbox", "build", "pool").stderr
