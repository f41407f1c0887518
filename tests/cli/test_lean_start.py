"""``stigmer run`` starts lean: it imports only what a plain run needs, and the lazily loaded
subcommands still all show in ``stigmer --help``."""

from __future__ import annotations

import subprocess
import sys

from stigmer_kernel.cli.main import COMMANDS
from tests.cli.conftest import stigmer

#: Modules a plain ``stigmer run -- true`` must not load (each costs tens of milliseconds; pyzmq:
#: the lean path speaks ZMTP itself).
HEAVY = ("asyncio", "docker", "jupyter_client", "yaml", "rich", "zmq")


def _imported(env: dict[str, str], *args: str) -> tuple[subprocess.CompletedProcess[str], set[str]]:
    """Run the CLI under ``-X importtime``: its result and every module it imported."""
    r = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "stigmer_kernel", *args],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )
    names = {
        line.rsplit("|", 1)[-1].strip()
        for line in r.stderr.splitlines()
        if line.startswith("import time:")
    }
    return r, names


def test_a_plain_run_loads_no_asyncio_pyzmq_docker_or_jupyter(env: dict[str, str]) -> None:
    stigmer(env, "run", "--", "true")  # the server it autostarts is up: a run like any other
    r, names = _imported(env, "run", "--", "echo lean")
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout == "lean\n"
    assert "msgpack" in names and "stigmer_kernel.client._zmtp" in names  # the check sees them
    assert sorted(n for n in names if n.split(".")[0] in HEAVY or n in HEAVY) == []


def test_a_run_with_stdin_to_stream_still_streams_it(env: dict[str, str]) -> None:
    assert stigmer(env, "run", "--", "wc -c", input=b"12345").stdout.strip() == b"5"


def test_help_lists_every_command_and_each_has_its_own(env: dict[str, str]) -> None:
    top = stigmer(env, "--help")
    assert top.returncode == 0
    listed = top.stdout.decode()
    for name in COMMANDS:
        assert f"\n    {name} " in listed or f"\n    {name}\n" in listed, name
        own = stigmer(env, name, "--help")
        assert own.returncode == 0, (name, own.stderr)
        assert f"usage: stigmer {name}" in own.stdout.decode(), name
