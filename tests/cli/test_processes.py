"""``stigmer start``, ``ps``, ``logs``, ``kill``, ``wait`` and ``run --workdir``: the real CLI."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.cli.conftest import stigmer


def test_start_ps_logs_wait_kill(env: dict[str, str]) -> None:
    started = stigmer(env, "start", "-k", "web", "--", "echo hello; echo oops >&2; exit 4")
    assert started.returncode == 0, started.stderr
    pid = started.stdout.decode().strip()
    assert pid == "p1"  # the id alone: id=$(stigmer start ...)
    assert stigmer(env, "wait", pid, "-k", "web", "--timeout", "15").returncode == 4
    assert stigmer(env, "logs", pid, "-k", "web").stdout == b"hello\n"
    assert stigmer(env, "logs", "--stderr", pid, "-k", "web").stdout == b"oops\n"
    assert stigmer(env, "logs", "--since", "2", pid, "-k", "web").stdout == b"llo\n"
    server = stigmer(env, "start", "-k", "web", "-e", "WHO=cli", "--", "echo $WHO; sleep 300")
    second = server.stdout.decode().strip()
    rows = json.loads(stigmer(env, "ps", "--json", "-k", "web").stdout)
    assert [(r["id"], r["state"], r["exit_code"]) for r in rows] == [
        ("p1", "exited", 4),
        (second, "running", None),
    ]
    table = stigmer(env, "ps").stdout.decode().splitlines()
    assert table[0].split()[:4] == ["KERNEL", "ID", "PID", "STATE"]
    assert any(line.split()[:2] == ["web", second] and "running" in line for line in table)
    assert stigmer(env, "kill", second, "-k", "web").returncode == 0
    assert stigmer(env, "wait", second, "-k", "web").returncode == 128 + 15
    assert stigmer(env, "logs", "-f", second, "-k", "web").stdout == b"cli\n"
    missing = stigmer(env, "kill", "p9", "-k", "web")
    assert missing.returncode == 125 and b"no background process 'p9'" in missing.stderr
    late = stigmer(env, "wait", "--timeout", "0.2", "p9", "-k", "web")
    assert late.returncode == 125


def test_logs_follow_into_a_closed_pipe_exits_quietly(env: dict[str, str]) -> None:
    started = stigmer(env, "start", "-k", "flood", "--", "yes")
    pid = started.stdout.decode().strip()
    follow = subprocess.Popen(
        [sys.executable, "-m", "stigmer_kernel", "logs", "-f", pid, "-k", "flood"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert follow.stdout is not None
    assert follow.stdout.read(2) == b"y\n"
    follow.stdout.close()  # as `| head -1` does
    assert follow.wait(timeout=30) == 141
    assert follow.stderr is not None
    # Quiet: at most the notice that `yes` filled the journal before it was read.
    errors = follow.stderr.read()
    follow.stderr.close()
    assert all(b"were dropped" in line for line in errors.splitlines()), errors
    timed_out = stigmer(env, "wait", "--timeout", "0.3", pid, "-k", "flood")
    assert timed_out.returncode == 124 and b"still runs" in timed_out.stderr
    assert stigmer(env, "kill", "-s", "KILL", pid, "-k", "flood").returncode == 0
    assert stigmer(env, "wait", pid, "-k", "flood").returncode == 128 + 9


def test_run_workdir_is_for_one_command(env: dict[str, str]) -> None:
    assert stigmer(env, "run", "-k", "w", "--", "cd /tmp").returncode == 0
    r = stigmer(env, "run", "-k", "w", "--workdir", "/usr", "--", "pwd")
    assert (r.returncode, r.stdout) == (0, b"/usr\n")
    assert stigmer(env, "run", "-k", "w", "--", "pwd").stdout == b"/tmp\n"
    bad = stigmer(env, "run", "-k", "w", "--workdir", "/nowhere", "--", "pwd")
    assert bad.returncode == 125 and b"workdir '/nowhere' is not a directory" in bad.stderr
