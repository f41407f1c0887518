"""A real Docker engine and the offline test image, or a skip that CI forbids."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.conftest import Server, short_tempdir

#: Built by scripts/build-test-image.sh (debootstrap; no registry is reachable here).
TEST_IMAGE = os.environ.get("STIGMER_TEST_SANDBOX_IMAGE", "stigmer-test-base:bookworm")
#: The uid:gid the test servers run sandbox commands as: a root server never runs them as root,
#: so the fixtures give it one of no account on the host (STIGMER_SANDBOX_USER); a server that is
#: not root runs them as itself.
SANDBOX_UID, SANDBOX_GID = (61234, 61234) if os.getuid() == 0 else (os.getuid(), os.getgid())


def sandbox_workspace(prefix: str = "stg-ws-") -> str:
    """A new workspace that sandbox commands (uid :data:`SANDBOX_UID`) can write in, resolved."""
    path = os.path.realpath(short_tempdir(prefix))
    if os.getuid() == 0:
        os.chown(path, SANDBOX_UID, SANDBOX_GID)
    os.chmod(path, 0o755)
    return path


def _unavailable(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"sandbox tests need a Docker engine in CI: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def docker_client() -> Iterator[Any]:
    try:
        import docker

        client = docker.from_env(timeout=60)
        client.ping()
    except Exception as exc:
        _unavailable(f"no Docker engine ({exc}); run scripts/provision-docker.sh")
    try:
        client.images.get(TEST_IMAGE)
    except Exception:
        _unavailable(f"no image {TEST_IMAGE}; run scripts/build-test-image.sh")
    yield client
    client.close()


def containers_of(client: Any, server: Server) -> list[Any]:
    """Containers labelled with ``server``'s runtime directory (running or not)."""
    return client.containers.list(
        all=True,
        ignore_removed=True,  # one removed between listing and inspecting is simply gone
        filters={"label": f"stigmer.runtime_dir={server.runtime_dir}"},
    )


@pytest.fixture
def sandbox_factory(
    docker_client: Any, server_factory: Callable[..., Server]
) -> Callable[..., Server]:
    def make(**settings: str) -> Server:
        settings.setdefault("STIGMER_SANDBOX_IMAGE", TEST_IMAGE)
        if os.getuid() == 0:
            settings.setdefault("STIGMER_SANDBOX_USER", f"{SANDBOX_UID}:{SANDBOX_GID}")
        settings.setdefault("STIGMER_HEARTBEAT_INTERVAL", "0.5")
        return server_factory(**settings)

    return make


@pytest.fixture
def sandbox(sandbox_factory: Callable[..., Server]) -> Server:
    return sandbox_factory()
