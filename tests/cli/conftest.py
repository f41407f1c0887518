"""Fixtures of the CLI tests: the real ``stigmer`` command on a private runtime directory."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator

import pytest

from tests.conftest import config_path_of, short_tempdir, stigmer_env


def stigmer(
    env: dict[str, str],
    *args: str,
    input: bytes | None = None,
    cwd: str | None = None,
    timeout: float = 60,
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "stigmer_kernel", *args],
        env=env,
        input=input,
        capture_output=True,
        timeout=timeout,
        cwd=cwd,
    )


@pytest.fixture
def env() -> Iterator[dict[str, str]]:
    runtime = short_tempdir()
    environment = stigmer_env(runtime)
    yield environment
    stigmer(environment, "server", "stop")
    shutil.rmtree(runtime, ignore_errors=True)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(config_path_of(runtime))
