"""Fixtures for the attack tests: a second real local user, and the sandbox fixtures.

Every attack here is performed for real: by a process running as another local uid (made with
``useradd`` for the session and removed after it), or by a command inside a real sandbox.
"""

from __future__ import annotations

import os
import pwd
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.sandbox.conftest import docker_client, sandbox, sandbox_factory  # noqa: F401

#: The interpreter another local user runs: Debian's, with python3-zmq and python3-msgpack.
ATTACKER_PYTHON = "/usr/bin/python3"


@dataclass(frozen=True)
class LocalUser:
    """Another local account: what a hostile neighbour on the same machine can do."""

    name: str
    uid: int
    gid: int

    def env(self) -> dict[str, str]:
        return {
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "HOME": "/tmp",
            "USER": self.name,
            "LANG": "C.UTF-8",
        }

    def run(self, args: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        """Run ``args`` as this user (no extra groups), capturing text output."""
        kwargs.setdefault("capture_output", True)
        kwargs.setdefault("text", True)
        kwargs.setdefault("timeout", 60)
        kwargs.setdefault("cwd", "/")
        kwargs.setdefault("env", self.env())
        return subprocess.run(
            args, user=self.uid, group=self.gid, extra_groups=[], check=False, **kwargs
        )

    def popen(self, args: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        kwargs.setdefault("cwd", "/")
        kwargs.setdefault("env", self.env())
        return subprocess.Popen(args, user=self.uid, group=self.gid, extra_groups=[], **kwargs)

    def python(self, code: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
        """Run Python ``code`` as this user with Debian's Python (pyzmq, msgpack: installed by
        scripts/provision-test-deps.sh; the project's venv may be out of this user's reach)."""
        return self.run([ATTACKER_PYTHON, "-c", code], **kwargs)


def _unavailable(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"the attack tests need this in CI: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def other_user() -> Iterator[LocalUser]:
    """A second local user made with ``useradd`` for this session (removed at its end)."""
    if os.getuid() != 0:
        _unavailable("making a second local user needs root")
    name = f"stgatk{os.getpid() % 1_000_000}"
    made = subprocess.run(
        ["useradd", "--no-create-home", "--shell", "/bin/sh", "--user-group", name],
        capture_output=True,
        text=True,
    )
    if made.returncode != 0:
        _unavailable(f"useradd failed: {made.stderr.strip()}")
    try:
        entry = pwd.getpwnam(name)
        user = LocalUser(name, entry.pw_uid, entry.pw_gid)
        probe = user.python("import zmq, msgpack")
        if probe.returncode != 0:
            _unavailable(
                f"{name} cannot import zmq with {ATTACKER_PYTHON} ({probe.stderr.strip()}): "
                "run scripts/provision-test-deps.sh"
            )
        yield user
    finally:
        subprocess.run(["userdel", name], capture_output=True)
        subprocess.run(["groupdel", name], capture_output=True)
