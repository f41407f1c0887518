"""A real Docker engine and the offline test image, or a skip that CI forbids."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from stigmer_kernel.provisioners.netns import LABEL_ROLE, ROLE_NETNS
from tests.conftest import Server, session_tempdirs, short_tempdir, wait_for

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


#: Repositories of the images tests (and the code they drive) build: those made during the
#: session are removed at its end. TEST_IMAGE, built by a script, is kept.
TEST_BUILT = (
    "stigmer-test-bare",
    "stigmer-sandbox-basic",
    "stigmer-sandbox-full",
    "stigmer-agent-layer",
    "stigmer-requirements",
    "stigmer-pool",
)


def _test_built(client: Any) -> set[str]:
    return {image.id for name in TEST_BUILT for image in client.images.list(name)}


def _test_tags(client: Any) -> set[str]:
    """The tags of those images (a cached build tags an image that was there already)."""
    return {tag for name in TEST_BUILT for image in client.images.list(name) for tag in image.tags}


#: Test sessions may run at once on one engine (two checkouts, CI beside a developer): the tags
#: a session builds carry its pid, and the images tests made are removed by the last session
#: to end, keeping what existed when the first of them began.
SESSION = str(os.getpid())
#: Live instances of :func:`docker_client` in this session: a test module that imports the
#: fixture (tests/cli, tests/client) gets a session fixture of its own, set up when its tests
#: begin. Only the first takes the images' base, and only the last to end removes what tests
#: made: before, each took a base of its own, which kept the images built before it (the
#: basic tier, the pool images: left after every full run).
_INSTANCES = 0
_SESSIONS = Path(tempfile.gettempdir()) / "stigmer-test-sessions"


@contextlib.contextmanager
def _sessions_locked() -> Iterator[list[str]]:
    """The other live sessions' pids, with the sessions directory locked."""
    _SESSIONS.mkdir(mode=0o700, exist_ok=True)
    with open(_SESSIONS / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        alive = []
        for entry in _SESSIONS.glob("[0-9]*"):
            if entry.name == SESSION:
                continue
            try:
                os.kill(int(entry.name), 0)
                alive.append(entry.name)
            except PermissionError:
                alive.append(entry.name)
            except (ProcessLookupError, ValueError):
                entry.unlink(missing_ok=True)  # a session that was killed
        yield alive


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
    global _INSTANCES
    if _INSTANCES == 0:
        _begin_session(client)
    _INSTANCES += 1
    yield client
    _INSTANCES -= 1
    if _INSTANCES == 0:
        _end_session(client)
    client.close()


_BASE = _SESSIONS / "base.json"


def _begin_session(client: Any) -> None:
    """Note this session, and the images there before it if no other session is live."""
    with _sessions_locked() as others:
        if not others or not _BASE.exists():
            _BASE.write_text(
                json.dumps(
                    {
                        "ids": sorted(_test_built(client)),
                        "tags": sorted(_test_tags(client)),
                        "all": sorted(i.id for i in client.images.list(all=True)),
                    }
                )
            )
        (_SESSIONS / SESSION).touch()


def _end_session(client: Any) -> None:
    """The last session to end removes the images tests made (since the first began)."""
    # Containers of this session's servers that outlived them (a server killed and never
    # started again leaves its sandboxes and network holders running): they would keep
    # the session's images in use.
    ours = set(session_tempdirs())
    for container in client.containers.list(all=True, filters={"label": "stigmer.runtime_dir"}):
        if container.labels.get("stigmer.runtime_dir") in ours:
            with contextlib.suppress(Exception):
                container.remove(force=True)
    with _sessions_locked() as others:
        (_SESSIONS / SESSION).unlink(missing_ok=True)
        if others:
            return
        saved = json.loads(_BASE.read_text()) if _BASE.exists() else {}
        _BASE.unlink(missing_ok=True)
        if isinstance(saved, list):  # (written by an older checkout's session)
            saved = {"ids": saved}
        before = set(saved.get("ids", _test_built(client)))
        made = _with_descendants(client, _test_built(client) - before)
        if "all" in saved:
            made |= _build_steps(client, set(saved["all"]))
        _remove_images(client, made)
        for tag in _test_tags(client) - set(saved.get("tags", _test_tags(client))):
            with contextlib.suppress(Exception):  # a tag of an image kept: untagged only
                client.images.remove(tag, noprune=True)


def _with_descendants(client: Any, images: set[str]) -> set[str]:
    """``images`` and the untagged images built on them: the steps a build made before it
    failed (a refused pool build from a test image) hold their parent, which the engine then
    refuses to remove."""
    parents = {i.id: i.attrs.get("Parent") or "" for i in client.images.list(all=True)}
    untagged = {i.id for i in client.images.list(all=True) if not i.tags}
    found = set(images)
    grown = True
    while grown:
        more = {i for i in untagged - found if parents.get(i) in found}
        found |= more
        grown = bool(more)
    return found


def _build_steps(client: Any, before: set[str]) -> set[str]:
    """The untagged images on TEST_IMAGE that were not there at the first session's start: the
    steps of the builds tests ran (a multi-stage build's first stage, the shared steps of the
    tiers), which removing the tagged images leaves."""
    root = client.images.get(TEST_IMAGE).id
    images = client.images.list(all=True)
    parents = {i.id: i.attrs.get("Parent") or "" for i in images}

    def on_root(image: str) -> bool:
        seen: set[str] = set()
        while image and image not in seen:
            if image == root:
                return True
            seen.add(image)
            image = parents.get(image, "")
        return False

    return {i.id for i in images if not i.tags and i.id not in before and on_root(i.id)}


def _remove_images(client: Any, images: set[str]) -> None:
    """Remove ``images``, children first: a pass removes what has no child left (the engine
    refuses an image another one is built on, even forced), until a pass removes nothing
    (one in use by someone's running container stays)."""
    left = set(images)
    while left:
        removed = set()
        for image in sorted(left):
            try:
                client.images.remove(image, force=True, noprune=False)
            except Exception as exc:  # the engine's conflict, or already gone
                if "No such image" not in str(exc):
                    continue
            removed.add(image)
        if not removed:
            return
        left -= removed


#: A cold build of the basic tier takes 60-90 s here (apt in two stages, ~60 MB of downloads),
#: of the full tier's core stage ~55 s more: the timeout of the tests that build them.
TIER_BUILD_TIMEOUT = 600
#: The basic tier as the suite builds it, once per session (:func:`basic_tier`).
SUITE_TIER_TAG = f"stigmer-sandbox-basic:tests-{SESSION}"


def build_tier(
    client: Any, context: str, dockerfile: str, tag: str, target: str | None = None, **args: str
) -> tuple[list[str], str | None]:
    """Build a tier's Dockerfile from ``context`` on the offline base: (output lines, error)."""
    chunks: list[str] = []  # a step's stderr comes a few characters at a time, coloured
    error: str | None = None
    for event in client.api.build(
        path=context,
        dockerfile=dockerfile,
        tag=tag,
        target=target,
        buildargs={"BASE_IMAGE": TEST_IMAGE, **args},
        rm=True,
        forcerm=True,
        decode=True,
    ):
        chunks.append(str(event.get("stream", "")))
        if "error" in event:
            error = str(event["error"])
            break
    return re.sub(r"\x1b\[[0-9;]*m", "", "".join(chunks)).splitlines(), error


def first_stage_images(lines: list[str]) -> list[str]:
    """The ids of the images a classic build made for its first stage (the download stage)
    from its COPY step on (the images before it, base and apt step, are shared with every
    other build): the ones that hold the lent CA."""
    ids: list[str] = []
    stage, step = 0, ""
    for line in lines:
        if line.startswith("Step "):
            step = line.split(" : ", 1)[-1]
            stage += step.startswith("FROM ")
        elif (
            line.startswith(" ---> ")
            and " " not in line[6:].strip()
            and stage == 1
            and (ids or step.startswith("COPY "))
        ):
            ids.append(line[6:].strip())
    return ids


@dataclass(frozen=True)
class MarkedCA:
    """The host's CA bundle plus a comment line with ``marker``: any copy of it in an image can
    be found. Builds get it as STIGMER_SANDBOX_CA_FILE (or ``staged_context``'s ``ca_file``)."""

    path: Path
    marker: str


@pytest.fixture(scope="session")
def marked_ca() -> Iterator[MarkedCA]:
    marker = f"stigmer-tier-test-{uuid.uuid4().hex}"
    path = Path(tempfile.mkdtemp(prefix="stg-ca-")) / "ca.crt"
    system = Path("/etc/ssl/certs/ca-certificates.crt")
    path.write_bytes(system.read_bytes() + f"\n# {marker}\n".encode())
    yield MarkedCA(path, marker)
    shutil.rmtree(path.parent)


@dataclass(frozen=True)
class BuiltTier:
    image: Any
    #: The download stage's images from the COPY of the marked CA on (removed at the end).
    fetch_stage: list[str]


@pytest.fixture(scope="session")
def basic_tier(docker_client: Any, marked_ca: MarkedCA) -> Iterator[BuiltTier]:
    """The basic tier, built once per session as :data:`SUITE_TIER_TAG` by the product's staging
    with :func:`marked_ca` lent (a later build with the same CA, e.g. ``make sandbox-build-basic``
    with STIGMER_SANDBOX_CA_FILE, finds every step cached). A test that uses it needs
    ``@pytest.mark.timeout(TIER_BUILD_TIMEOUT)``."""
    from stigmer_kernel.provisioners import images

    directory = images.sandbox_dir()
    assert directory is not None
    with images.staged_context(directory, marked_ca.path) as context:
        assert marked_ca.marker in (Path(context) / "host-ca.crt").read_text()
        lines, error = build_tier(
            docker_client, context, "Dockerfile.sandbox.basic", SUITE_TIER_TAG
        )
    assert error is None, "\n".join(lines[-30:]) + error
    fetch_stage = first_stage_images(lines)
    assert fetch_stage, lines
    yield BuiltTier(docker_client.images.get(SUITE_TIER_TAG), fetch_stage)
    for image_id in reversed(fetch_stage):  # docker_client's cleanup removes the image itself
        with contextlib.suppress(Exception):
            docker_client.images.remove(image_id, noprune=True)


def containers_of(client: Any, server: Server) -> list[Any]:
    """Kernel containers labelled with ``server``'s runtime directory (running or not): not
    its network holders (:func:`holders_of`)."""
    return [c for c in _labelled(client, server) if LABEL_ROLE not in c.labels]


def holders_of(client: Any, server: Server) -> list[Any]:
    """``server``'s network holders (stigmer_kernel/provisioners/netns.py), running or not."""
    return [c for c in _labelled(client, server) if c.labels.get(LABEL_ROLE) == ROLE_NETNS]


def _labelled(client: Any, server: Server) -> list[Any]:
    return client.containers.list(
        all=True,
        ignore_removed=True,  # one removed between listing and inspecting is simply gone
        filters={"label": f"stigmer.runtime_dir={server.runtime_dir}"},
    )


def warm_pool_server(
    sandbox_factory: Callable[..., Server], docker_client: Any, prefix: str
) -> tuple[Server, str, Any]:
    """A server with a warm pool of one for a new workspace: the server, the workspace and the
    pooled container, once its agent has registered."""
    workspace = sandbox_workspace(prefix)
    srv = sandbox_factory(STIGMER_SANDBOX_WARM="1", STIGMER_SANDBOX_WORKSPACE=workspace)
    wait_for(lambda: len(containers_of(docker_client, srv)) == 1, timeout=30)
    (pooled,) = containers_of(docker_client, srv)
    pool_name = pooled.labels["stigmer.kernel"]
    wait_for(lambda: f"kernel {pool_name} ready (" in srv.log(), timeout=30)
    return srv, workspace, pooled


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
