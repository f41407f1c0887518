"""The sandbox tiers, their tooling and the Makefile targets that can run here."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.sandbox.conftest import (
    SUITE_TIER_TAG,
    TEST_IMAGE,
    TIER_BUILD_TIMEOUT,
    BuiltTier,
    MarkedCA,
)

ROOT = Path(__file__).resolve().parents[2]
INSTRUCTIONS = {
    "FROM",
    "ARG",
    "RUN",
    "COPY",
    "ADD",
    "ENV",
    "WORKDIR",
    "CMD",
    "ENTRYPOINT",
    "USER",
    "LABEL",
    "EXPOSE",
    "VOLUME",
    "SHELL",
    "HEALTHCHECK",
    "STOPSIGNAL",
}


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined."""
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        word, _, rest = line.partition(" ")
        out.append((word, rest.strip()))
    return out


def test_dockerfiles_parse_and_hold_their_tools() -> None:
    for tier, tools in (
        ("basic", ["NODE_VERSION", "git", "curl", "jq", "npm"]),
        (
            "full",
            [
                "kubectl",
                "helm",
                "k9s",
                "terraform",
                "pulumi",
                "google-cloud-cli",
                "azure-cli",
                "awscli",
                "docker-ce-cli",
                "gh",
                "yq",
                "yamllint",
                "tkn",
                "gcc",
            ],
        ),
    ):
        path = ROOT / "sandbox" / f"Dockerfile.sandbox.{tier}"
        parsed = instructions(path)
        assert all(word in INSTRUCTIONS for word, _ in parsed), parsed
        assert parsed[0] == ("ARG", "BASE_IMAGE=python:3.11-slim")
        assert any(w == "FROM" and rest.startswith("${BASE_IMAGE}") for w, rest in parsed)
        assert all(rest for word, rest in parsed if word == "RUN")
        text = path.read_text()
        for tool in tools:
            assert tool in text, f"{tool} missing from the {tier} tier"
    assert "aws" not in (ROOT / "sandbox" / "Dockerfile.sandbox.basic").read_text()


def test_compose_and_workflows_parse() -> None:
    compose = yaml.safe_load((ROOT / "sandbox" / "docker-compose.sandbox.yml").read_text())
    assert set(compose["services"]) == {"sandbox-image", "stigmer"}
    publish = yaml.safe_load((ROOT / ".github/workflows/publish-sandbox.yml").read_text())
    triggers = publish.get("on", publish.get(True))  # YAML 1.1 reads a bare `on` as True
    assert set(triggers) == {"workflow_dispatch"}
    step = next(s for s in publish["jobs"]["publish"]["steps"] if "build-push" in s.get("uses", ""))
    assert step["with"]["platforms"] == "linux/amd64,linux/arm64"
    assert ":latest" in step["with"]["tags"] and "inputs.version" in step["with"]["tags"]
    ci = yaml.safe_load((ROOT / ".github/workflows/ci.yml").read_text())
    assert any("make test" in s.get("run", "") for s in ci["jobs"]["test"]["steps"])


def test_make_help_lists_every_target() -> None:
    makefile = (ROOT / "Makefile").read_text()
    targets = set(re.findall(r"^([a-z][a-z-]*):", makefile, re.M))
    out = subprocess.run(
        ["make", "-s", "help"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    listed = {line.split()[1] for line in out.splitlines() if line.strip().startswith("make ")}
    assert targets <= listed, targets - listed
    for target in (
        "sandbox-build-basic",
        "sandbox-build-full",
        "sandbox-test",
        "sandbox-clean",
        "test-local-mode",
        "test-sandbox-mode",
        "dev-full",
        "bench",
        "lint",
    ):
        assert target in listed


def make(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    venv = Path(sys.executable).parent.parent
    return subprocess.run(
        ["make", "-s", f"VENV={venv}", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=TIER_BUILD_TIMEOUT,
        env={**os.environ, **env},
    )


@pytest.mark.timeout(TIER_BUILD_TIMEOUT)
def test_basic_tier_builds_offline_and_passes_sandbox_test(
    docker_client: Any, basic_tier: BuiltTier, marked_ca: MarkedCA
) -> None:
    # The session's build (basic_tier) lent the same CA: every step is cached, no new image.
    tag = SUITE_TIER_TAG
    built = make(
        "sandbox-build-basic",
        f"SANDBOX_BASIC_IMAGE={tag}",
        f"SANDBOX_BASE_IMAGE={TEST_IMAGE}",
        STIGMER_SANDBOX_CA_FILE=str(marked_ca.path),
    )
    assert built.returncode == 0, built.stderr[-2000:]
    assert f"built {tag}" in built.stdout
    assert docker_client.images.get(tag).id == basic_tier.image.id
    checked = make("sandbox-test", f"SANDBOX_BASIC_IMAGE={tag}")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    lines = dict(line.split(": ", 1) for line in checked.stdout.splitlines() if ": " in line)
    assert lines["python"].startswith("Python 3.11")
    assert lines["node"].startswith("v")
    assert lines["git"].startswith("git version")
    # The offline base alone has no node: `stigmer sandbox test` says so and fails.
    bare = subprocess.run(
        [sys.executable, "-m", "stigmer_kernel", "sandbox", "test", TEST_IMAGE],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bare.returncode == 1 and "node: MISSING" in bare.stdout


def test_pull_failure_is_one_clear_line(docker_client: Any) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "stigmer_kernel", "sandbox", "pull", "localhost:1/stigmer/nope:1"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 125
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("stigmer: error: pull of localhost:1/stigmer/nope:1 failed")


def test_sandbox_test_and_build_refuse_clearly(docker_client: Any) -> None:
    def stigmer(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "stigmer_kernel", "sandbox", *args],
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, **env},
        )

    missing = stigmer("test", "stigmer-nope:1")
    assert missing.returncode == 125 and missing.stderr.count("\n") == 1
    assert missing.stderr.startswith("stigmer: error: no image stigmer-nope:1 here")
    # Building with the base image as STIGMER_SANDBOX_IMAGE would re-tag the base: refused.
    over = stigmer("build", "basic", "--base-image", TEST_IMAGE, STIGMER_SANDBOX_IMAGE=TEST_IMAGE)
    assert over.returncode == 125 and "its own base image" in over.stderr
    docker_client.images.get(TEST_IMAGE)


def test_clean_removes_stigmer_images_and_dead_servers_containers(docker_client: Any) -> None:
    import io

    docker_client.images.build(
        fileobj=io.BytesIO(f"FROM {TEST_IMAGE}\n".encode()),
        tag="stigmer-requirements:cleanme",
        rm=True,
    )
    orphan = docker_client.containers.create(
        TEST_IMAGE, ["true"], labels={"stigmer.server": "x", "stigmer.runtime_dir": "/nonexistent"}
    )
    r = subprocess.run(
        [sys.executable, "-m", "stigmer_kernel", "sandbox", "clean"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    assert "stigmer-requirements:cleanme" in r.stdout
    assert "stigmer-requirements:cleanme" not in {
        t for i in docker_client.images.list() for t in i.tags
    }
    left = docker_client.containers.list(all=True, ignore_removed=True)
    assert orphan.id not in {c.id for c in left}
    docker_client.images.get(TEST_IMAGE)  # the base image is not stigmer's to remove
