"""Jupyter fixtures: the stigmer-local kernelspec installed in a private prefix."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Server, short_tempdir


def install_kernelspec(env: dict[str, str]) -> str:
    """Install stigmer-local under a temp prefix; returns the JUPYTER_PATH entry for it."""
    prefix = short_tempdir("stg-ks-")
    subprocess.run(
        [sys.executable, "-m", "stigmer_kernel", "kernelspec", "install", "--prefix", prefix],
        env=env,
        check=True,
        capture_output=True,
    )
    return str(Path(prefix) / "share" / "jupyter")


@pytest.fixture
def jupyter_env(server: Server, monkeypatch: pytest.MonkeyPatch) -> Iterator[Server]:
    """A running server, and this process's environment set so that kernelspecs find it."""
    monkeypatch.setenv("JUPYTER_PATH", install_kernelspec(server.env))
    for key, value in server.env.items():
        if key.startswith("STIGMER_") or key == "PYTHONPATH":
            monkeypatch.setenv(key, value)
    yield server
    os.environ.pop("JUPYTER_PATH", None)
