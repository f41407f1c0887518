"""The docs' commands work: every ```bash runnable block runs here and exits 0.

Blocks are run in order per file, each with bash -e, from a scratch directory, against a private
runtime directory and the offline test image (no registry is reachable here).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import short_tempdir, stigmer_env
from tests.sandbox.conftest import SANDBOX_GID, SANDBOX_UID, TEST_IMAGE, sandbox_workspace

ROOT = Path(__file__).resolve().parents[2]
BLOCK = re.compile(r"^```bash runnable\n(.*?)^```", re.S | re.M)
PAGES = sorted(
    p
    for p in [*ROOT.glob("docs/**/*.md"), ROOT / "README.md", ROOT / "sandbox" / "README.md"]
    if BLOCK.search(p.read_text())
)


def test_some_pages_have_runnable_blocks() -> None:
    assert len(PAGES) >= 3


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_runnable_blocks_of(page: Path, docker_client: Any) -> None:
    runtime = short_tempdir()
    env = stigmer_env(runtime, STIGMER_SANDBOX_IMAGE=TEST_IMAGE)
    if os.getuid() == 0:  # as the sandbox fixtures: never root, and the scratch dir is its own
        env["STIGMER_SANDBOX_USER"] = f"{SANDBOX_UID}:{SANDBOX_GID}"
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    scratch = sandbox_workspace("stg-docs-")
    try:
        for index, block in enumerate(BLOCK.findall(page.read_text())):
            proc = subprocess.run(
                ["bash", "-e", "-c", block],
                cwd=scratch,
                env=env,
                capture_output=True,
                text=True,
                timeout=240,
            )
            assert proc.returncode == 0, (
                f"{page.name} block {index + 1} failed:\n{block}\n--- stdout\n{proc.stdout}"
                f"\n--- stderr\n{proc.stderr}"
            )
    finally:
        subprocess.run(
            [sys.executable, "-m", "stigmer_kernel", "server", "stop"],
            env=env,
            capture_output=True,
            timeout=60,
        )
