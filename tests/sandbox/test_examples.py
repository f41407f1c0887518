"""The examples run as a newcomer would run them, against the real engine."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.conftest import short_tempdir, stigmer_env
from tests.sandbox.conftest import SANDBOX_GID, SANDBOX_UID, TEST_IMAGE, sandbox_workspace

ROOT = Path(__file__).resolve().parents[2]


def test_the_dev_server_example_in_a_sandbox(docker_client: Any) -> None:
    runtime = short_tempdir()
    env = stigmer_env(runtime, STIGMER_SANDBOX_IMAGE=TEST_IMAGE)
    if os.getuid() == 0:  # never root in the sandbox (as the sandbox fixtures)
        env["STIGMER_SANDBOX_USER"] = f"{SANDBOX_UID}:{SANDBOX_GID}"
    workspace = sandbox_workspace("stg-example-")
    try:
        run = subprocess.run(
            [sys.executable, str(ROOT / "examples" / "dev_server_agent.py")],
            cwd=workspace,
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert run.returncode == 0, run.stdout + run.stderr
        lines = run.stdout.splitlines()
        assert "fetched: <h1>hello from the kernel</h1>  (exit 0)" in lines
        assert any('"GET / HTTP/1.1" 200' in line for line in lines if "access log" in line)
        assert "read back: the server answered" in lines
        assert "server exit status: 137" in lines  # SIGKILL: 128 + 9
        assert Path(workspace, "notes.txt").read_text() == "the server answered\n"
    finally:
        subprocess.run(
            [sys.executable, "-m", "stigmer_kernel", "server", "stop"],
            env=env,
            capture_output=True,
            timeout=60,
        )
