"""The sandbox images, built for real on the offline base: a supported Node.js LTS in both tiers,
no CA material in any layer (tiers and requirements layers), the basic tier's own layers within
budget, and a download failure that says so."""

from __future__ import annotations

import datetime
import io
import json
import re
import tarfile
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from stigmer_kernel.provisioners import images
from tests.conftest import Server
from tests.sandbox.conftest import (
    SESSION,
    SUITE_TIER_TAG,
    TEST_IMAGE,
    TIER_BUILD_TIMEOUT,
    BuiltTier,
    MarkedCA,
    build_tier,
    containers_of,
    first_stage_images,
    sandbox_workspace,
)

pytestmark = pytest.mark.timeout(TIER_BUILD_TIMEOUT)

TAG = SUITE_TIER_TAG
DOCKERFILE = "Dockerfile.sandbox.basic"
#: The full tier's core stage (the basic tier's tools with compilers): the rest of the full
#: tier downloads from vendors no test machine may reach.
FULL_CORE_TAG = f"stigmer-sandbox-full:tests-core-{SESSION}"
#: Node.js LTS majors and the day each reaches end of life (https://nodejs.org/en/about/previous-releases).
NODE_LTS_END = {
    22: datetime.date(2027, 4, 30),
    24: datetime.date(2028, 4, 30),
    26: datetime.date(2029, 4, 30),
}
#: The tier's own layers (image minus base) on the offline base. On python:3.11-slim (124.8 MB,
#: docker-library/repo-info) the image must stay within 350 MB, so its own layers within 225 MB;
#: the offline base already holds ~16 MB of what they add there (Debian's pyzmq and msgpack,
#: OpenSSL, Kerberos and ncurses libraries, measured on a plain debootstrap minbase), so here:
OWN_LAYERS_BUDGET = 205e6


def layers_holding(image: Any, needle: str, skip: int = 0) -> list[str]:
    """Where ``image``'s layers hold ``needle`` or a lent CA's file: every file of every layer
    of ``docker save`` scanned (but the first ``skip``, its base's), and the build history."""
    found: list[str] = []
    data = needle.encode()
    with tarfile.open(fileobj=io.BytesIO(b"".join(image.save(named=True)))) as outer:
        manifest = outer.extractfile("manifest.json")
        assert manifest is not None
        layers = json.loads(manifest.read())[0]["Layers"]
        assert len(layers) > skip + 1
        for name in layers[skip:]:
            layer = outer.extractfile(name)
            assert layer is not None
            with tarfile.open(fileobj=layer) as inner:
                for entry in inner:
                    if "host-ca" in entry.name or "stigmer/ca-certificates" in entry.name:
                        found.append(f"{entry.name} in {name}")
                    elif entry.isfile():
                        content = inner.extractfile(entry)
                        assert content is not None
                        if data in content.read():
                            found.append(f"CA copy at {entry.name} in {name}")
    history = " ".join(str(h.get("CreatedBy", "")) for h in image.history())
    if ".crt" in history or needle in history:
        found.append(f"history: {history}")
    return found


def base_layers(client: Any) -> int:
    """How many layers the offline base has (the first ones of every image built on it)."""
    return len(client.images.get(TEST_IMAGE).attrs["RootFS"]["Layers"])


def node_and_npm(client: Any, image: str) -> tuple[str, str]:
    """(node --version, npm --version) in ``image``, asserting Node.js is a supported LTS."""
    out = client.containers.run(
        image, ["sh", "-c", "node --version; npm --version"], remove=True, network_mode="none"
    )
    node, npm = out.decode().split()
    major = int(node.lstrip("v").split(".")[0])
    assert major in NODE_LTS_END, f"Node.js {node} is not an LTS line"
    assert datetime.date.today() < NODE_LTS_END[major], (
        f"Node.js {major} reached end of life on {NODE_LTS_END[major]}: bump NODE_VERSION in "
        "sandbox/fetch.sh"
    )
    assert int(npm.split(".")[0]) >= 10
    return node, npm


@pytest.fixture(scope="module")
def full_core(docker_client: Any, marked_ca: MarkedCA, basic_tier: BuiltTier) -> Iterator[Any]:
    """The full tier built up to its core stage (``--target core``) with the marked CA lent."""
    directory = images.sandbox_dir()
    assert directory is not None
    with images.staged_context(directory, marked_ca.path) as context:
        lines, error = build_tier(
            docker_client, context, "Dockerfile.sandbox.full", FULL_CORE_TAG, target="core"
        )
    assert error is None, "\n".join(lines[-30:]) + error
    # Its download stage starts as the basic tier's does (those images are the session's).
    fetch_stage = [i for i in first_stage_images(lines) if i not in basic_tier.fetch_stage]
    yield docker_client.images.get(FULL_CORE_TAG)
    for image_id in reversed(fetch_stage):  # docker_client's cleanup removes FULL_CORE_TAG
        docker_client.images.remove(image_id, noprune=True)


def test_download_failure_is_reported_as_such(docker_client: Any, marked_ca: MarkedCA) -> None:
    url = "http://127.0.0.1:9/node-linux.tgz"  # inside the build container: nothing listens
    directory = images.sandbox_dir()
    assert directory is not None
    with images.staged_context(directory, marked_ca.path) as context:
        lines, error = build_tier(
            docker_client, context, DOCKERFILE, f"stigmer-tier-fail:tests-{SESSION}", NODE_URL=url
        )
    assert error is not None and "non-zero code" in error
    said = "\n".join(lines)
    assert f"stigmer: download of {url} failed: check the network" in said
    assert "curl: (7)" in said  # curl's own reason, just above
    assert "gzip" not in said and "stdin" not in said
    with pytest.raises(Exception, match=r"not found|No such image"):
        docker_client.images.get(f"stigmer-tier-fail:tests-{SESSION}")


def test_node_is_a_supported_lts(docker_client: Any, basic_tier: BuiltTier) -> None:
    node_and_npm(docker_client, TAG)


def test_no_layer_holds_the_ca(
    docker_client: Any, basic_tier: BuiltTier, marked_ca: MarkedCA
) -> None:
    # The marked CA did reach the build (the fetch stage), so its absence below means something.
    seen = docker_client.containers.run(
        basic_tier.fetch_stage[-1],
        ["cat", "/opt/stigmer/host-ca.crt"],
        remove=True,
        network_mode="none",
    )
    assert marked_ca.marker.encode() in seen
    assert layers_holding(basic_tier.image, marked_ca.marker, base_layers(docker_client)) == []


def test_own_layers_within_budget(docker_client: Any, basic_tier: BuiltTier) -> None:
    image = basic_tier.image
    base = docker_client.images.get(TEST_IMAGE)
    own = image.attrs["Size"] - base.attrs["Size"]
    layers = [
        f"{h['Size'] / 1e6:.1f} MB {str(h['CreatedBy'])[:60]}" for h in image.history() if h["Size"]
    ]
    assert own <= OWN_LAYERS_BUDGET, f"own layers {own / 1e6:.0f} MB: " + "; ".join(layers)
    # No compiler in the basic tier (the full tier has them).
    docker_client.containers.run(
        TAG,
        ["sh", "-c", "! command -v gcc && ! command -v make"],
        remove=True,
        network_mode="none",
    )


def test_full_tier_has_the_lts_node_compilers_and_no_ca(
    docker_client: Any, full_core: Any, marked_ca: MarkedCA
) -> None:
    node, _ = node_and_npm(docker_client, FULL_CORE_TAG)
    basic_node, _ = node_and_npm(docker_client, TAG)
    assert node == basic_node  # the same pinned download as the basic tier
    out = docker_client.containers.run(
        FULL_CORE_TAG,
        [
            "sh",
            "-c",
            "gcc --version | head -1; make --version | head -1; aws --version; yamllint -v",
        ],
        remove=True,
        network_mode="none",
    ).decode()
    assert "gcc" in out and "GNU Make" in out and "aws-cli/1." in out and "yamllint" in out
    assert layers_holding(full_core, marked_ca.marker, base_layers(docker_client)) == []


def test_full_tier_stages_keep_the_ca_in_download_stages() -> None:
    """What the build here cannot reach (the vendors' stage and the last one): only the download
    stages (fetch, tools FROM fetch) ever see the context's *.crt, and the image takes nothing
    from them but the download directories."""
    from tests.sandbox.test_tiers import instructions

    directory = images.sandbox_dir()
    assert directory is not None
    stage, stages = "", {}
    copies: list[tuple[str, str]] = []
    for word, rest in instructions(directory / "Dockerfile.sandbox.full"):
        if word == "FROM":
            parts = rest.split()
            stage = parts[2] if len(parts) == 3 else "image"
            stages[stage] = parts[0]
        elif word in ("COPY", "ADD"):
            copies.append((stage, rest))
    assert stages == {
        "fetch": "${BASE_IMAGE}",
        "core": "${BASE_IMAGE}",
        "tools": "fetch",
        "image": "core",
    }
    for stage, rest in copies:
        if ".crt" in rest:
            assert stage == "fetch", rest
        elif stage in ("core", "image"):
            assert rest.startswith("--from="), rest
            source = rest.split()[1]
            assert source.startswith(
                (
                    "/opt/node/",
                    "/opt/stigmer/wheels/",
                    "/opt/tools/",
                    "/opt/stigmer/requirements.txt",
                )
            ), rest
    # The tools stage downloads with the lent CA: fetch.sh's `get`, never a pipe into tar.
    script = (directory / "fetch.sh").read_text()
    assert not re.search(r"\|\s*(tar|sh|gpg|bash)\b", script), "a pipe hides curl's failure"


def test_requirements_layer_holds_no_ca(
    sandbox_factory: Callable[..., Server], docker_client: Any, marked_ca: MarkedCA
) -> None:
    srv = sandbox_factory(STIGMER_SANDBOX_CA_FILE=str(marked_ca.path))
    started = time.time()
    requirements = f"six==1.16.0\n# {uuid.uuid4().hex}: a layer of this test's own\n"
    r = srv.client().execute(
        "python3 -c 'import six; print(six.__version__)'",
        kernel="reqca",
        mode="sandbox",
        requirements=requirements,
        cwd=sandbox_workspace(),
        timeout=300,
    )
    assert r.stdout == "1.16.0\n", (r.stderr, r.evalue)
    # Behind a TLS-intercepting proxy (as here), pip reached PyPI with the lent CA. No layer
    # of the image the kernel runs on kept it:
    (container,) = containers_of(docker_client, srv)
    assert any(t.startswith("stigmer-requirements:") for t in container.image.tags)
    assert layers_holding(container.image, marked_ca.marker) == []

    # ... and the install stage's images, which held it, are not left in the engine.
    def install_stage(image: Any) -> bool:
        made_by = " ".join(image.attrs.get("ContainerConfig", {}).get("Cmd") or [])
        return "install.py" in made_by or "in /opt/stigmer/ " in made_by

    left = [
        image.id
        for image in docker_client.images.list(all=True)
        if _created(image) >= started - 1 and install_stage(image)
    ]
    assert left == []


def _created(image: Any) -> float:
    stamp = str(image.attrs["Created"]).rstrip("Z")
    whole, _, fraction = stamp.partition(".")
    moment = datetime.datetime.fromisoformat(whole).replace(tzinfo=datetime.timezone.utc)
    return moment.timestamp() + float(f"0.{fraction or 0}")
