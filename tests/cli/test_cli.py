"""The stigmer command as a newcomer uses it: real processes, no server started by hand."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

from tests.cli.conftest import stigmer
from tests.conftest import short_tempdir


def test_run_with_no_server_started(env: dict[str, str]) -> None:
    status = stigmer(env, "server", "status")
    assert status.returncode == 3
    r = stigmer(env, "run", "--", "echo", "hi")
    assert (r.returncode, r.stdout, r.stderr) == (0, b"hi\n", b"")
    assert stigmer(env, "server", "status").returncode == 0


def test_streams_and_exit_code(env: dict[str, str]) -> None:
    r = stigmer(env, "run", "--", "sh", "-c", "echo out; echo err >&2; exit 7")
    assert (r.returncode, r.stdout, r.stderr) == (7, b"out\n", b"err\n")


def test_cd_persists_in_a_named_kernel(env: dict[str, str]) -> None:
    assert stigmer(env, "run", "--kernel", "k1", "--", "cd", "/tmp").returncode == 0
    assert stigmer(env, "run", "--kernel", "k1", "--", "pwd").stdout == b"/tmp\n"


def test_single_argument_is_shell_code(env: dict[str, str]) -> None:
    r = stigmer(env, "run", "--", "x=3; echo $((x * 2)) | tr 6 S")
    assert r.stdout == b"S\n"
    quoted = stigmer(env, "run", "--", "echo", "$HOME", "a b")
    assert quoted.stdout == b"$HOME a b\n"


def test_timeout_exit_code_and_message(env: dict[str, str]) -> None:
    r = stigmer(env, "run", "--timeout", "0.5", "--", "echo start; sleep 10")
    assert r.returncode == 124
    assert r.stdout == b"start\n"
    assert b"timed out after 0.5s" in r.stderr


def test_stdin_is_forwarded_only_when_asked(env: dict[str, str]) -> None:
    assert stigmer(env, "run", "--no-stdin", "--", "wc -c", input=b"abc").stdout.strip() == b"0"
    assert stigmer(env, "run", "--stdin", "--", "wc -c", input=b"abc").stdout.strip() == b"3"


def test_new_kernel_starts_in_the_callers_directory(env: dict[str, str]) -> None:
    where = os.path.realpath(short_tempdir("stg-cwd-"))
    r = stigmer(env, "run", "--kernel", "here", "--", "pwd", cwd=where)
    assert r.stdout.decode().strip() == where


def test_kernels_list_and_shutdown(env: dict[str, str]) -> None:
    stigmer(env, "run", "--kernel", "listed", "--", "true")
    out = stigmer(env, "kernels", "list", "--json")
    kernels = json.loads(out.stdout)
    (k,) = [k for k in kernels if k["name"] == "listed"]
    for field in ("name", "mode", "state", "idle_seconds", "ttl", "clients", "pid"):
        assert field in k
    assert (k["mode"], k["state"], k["ttl"]) == ("local", "idle", 3600.0)
    table = stigmer(env, "kernels", "list").stdout.decode()
    assert "listed" in table and "NAME" in table
    assert stigmer(env, "kernels", "shutdown", "listed").returncode == 0
    assert "listed" not in stigmer(env, "kernels", "list").stdout.decode()
    missing = stigmer(env, "kernels", "shutdown", "listed")
    assert missing.returncode == 125
    assert missing.stderr.decode().count("\n") == 1
    assert "no kernel named 'listed'" in missing.stderr.decode()


def test_server_start_stop_status(env: dict[str, str]) -> None:
    start = stigmer(env, "server", "start")
    assert start.returncode == 0 and b"started" in start.stdout
    again = stigmer(env, "server", "start")
    assert b"already running" in again.stdout
    status = json.loads(stigmer(env, "server", "status", "--json").stdout)
    assert status["running"] is True and status["execution_mode"] == "local"
    stop = stigmer(env, "server", "stop")
    assert stop.returncode == 0 and b"stopped" in stop.stdout
    assert stigmer(env, "server", "status").returncode == 3


def test_config_precedence(env: dict[str, str]) -> None:
    assert stigmer(env, "config", "get", "kernel_ttl").stdout == b"3600\n"
    assert stigmer(env, "config", "set", "kernel_ttl", "120").returncode == 0
    assert stigmer(env, "config", "get", "kernel_ttl").stdout == b"120\n"
    with_env = dict(env, STIGMER_KERNEL_TTL="60")
    assert stigmer(with_env, "config", "get", "kernel_ttl").stdout == b"60\n"
    # Flags beat the environment: the server started with --kernel-ttl uses it for kernels
    # whose client sets no TTL of its own; a client's own setting travels with its request.
    assert stigmer(with_env, "server", "start", "--kernel-ttl", "30").returncode == 0
    stigmer(env, "run", "--kernel", "t", "--", "true")
    assert stigmer(env, "config", "unset", "kernel_ttl").returncode == 0
    stigmer(env, "run", "--kernel", "u", "--", "true")
    listed = json.loads(stigmer(env, "kernels", "list", "--json").stdout)
    assert {k["name"]: k["ttl"] for k in listed} == {"t": 120.0, "u": 30.0}
    bad = stigmer(env, "config", "set", "kernel_ttl", "soon")
    assert bad.returncode == 125
    assert (
        bad.stderr == b"stigmer: error: invalid value 'soon' for kernel_ttl: "
        b"expected a positive number of seconds\n"
    )
    unknown = stigmer(env, "config", "set", "colour", "blue")
    assert unknown.returncode == 125 and b"unknown setting 'colour'" in unknown.stderr


def test_seed_environment_variables_are_honoured(env: dict[str, str]) -> None:
    sandbox = dict(env, STIGMER_EXECUTION_MODE="sandbox")
    assert stigmer(sandbox, "config", "get", "execution_mode").stdout == b"sandbox\n"
    bad = dict(env, STIGMER_EXECUTION_MODE="cloud")
    r = stigmer(bad, "run", "--", "true")
    assert r.returncode == 125
    assert r.stderr == (
        b"stigmer: error: STIGMER_EXECUTION_MODE: invalid value 'cloud' for "
        b"execution_mode: expected one of local, sandbox, auto\n"
    )


def test_errors_are_one_line(env: dict[str, str]) -> None:
    r = stigmer(env, "run")
    assert r.returncode == 2
    assert r.stderr.decode().startswith("stigmer: error: no command given")
    long_dir = "/tmp/" + "x" * 120
    r = stigmer(dict(env, STIGMER_RUNTIME_DIR=long_dir), "run", "--", "true")
    assert r.returncode == 125 and r.stderr.count(b"\n") == 1
    assert b"too long for ipc sockets" in r.stderr
    assert not os.path.exists(long_dir)  # refused before anything was made


def _running(cmdline: list[str]) -> bool:
    """Whether a live process has exactly this command line."""
    wanted = b"".join(arg.encode() + b"\0" for arg in cmdline)
    for pid in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError):
            if Path("/proc", pid, "cmdline").read_bytes() == wanted:
                return ") Z " not in Path("/proc", pid, "stat").read_text()
    return False


def test_interrupt_from_ctrl_c(env: dict[str, str]) -> None:
    import signal

    # A duration no other process uses, to tell when this very sleep runs.
    duration = f"30.{int(uuid.uuid4().hex[:6], 16)}"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "stigmer_kernel",
            "run",
            "--kernel",
            "cc",
            "--",
            f"echo waiting; sleep {duration}; echo never",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline() == b"waiting\n"
    deadline = time.monotonic() + 15
    while not _running(["sleep", duration]):  # Ctrl-C comes while the program runs
        assert time.monotonic() < deadline, "the sleep did not start"
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=15)
    assert proc.returncode == 130
    assert b"never" not in out
    assert stigmer(env, "run", "--kernel", "cc", "--", "echo ok").stdout == b"ok\n"


def test_usage_errors_exit_2_and_run_nothing(env: dict[str, str]) -> None:
    for args, says in (
        (("run", "--timeout", "-1", "--", "touch", "ran"), b"--timeout must be a positive"),
        (("run", "--kernel", "", "--", "touch", "ran"), b"--kernel needs a name"),
        (
            ("run", "--mode", "local", "--requirements", "/dev/null", "--", "touch", "ran"),
            b"--requirements applies to sandbox and auto kernels, not to local mode",
        ),
        (("kernels",), b"required: ACTION"),
        (("config",), b"required: ACTION"),
        (("sandbox",), b"required: ACTION"),
    ):
        r = stigmer(env, *args, cwd=env["STIGMER_RUNTIME_DIR"])
        assert r.returncode == 2, (args, r.stderr)
        assert says in r.stderr, (args, r.stderr)
    assert not os.path.exists(os.path.join(env["STIGMER_RUNTIME_DIR"], "ran"))


def test_config_set_checks_each_value(env: dict[str, str]) -> None:
    for key, value, expected in (
        ("sandbox_memory", "lots", b"expected a size such as 512m, 2g or 2gb"),
        ("log_level", "chatty", b"expected one of debug, info, warning, warn, error, critical"),
        ("sandbox_cpus", "-1", b"expected a positive number of CPUs"),
        ("runtime_dir", "", b"invalid value"),
    ):
        r = stigmer(env, "config", "set", key, value)
        assert r.returncode == 125 and expected in r.stderr, (key, r.stderr)
    assert stigmer(env, "config", "set", "log_level", "debug").returncode == 0
    assert stigmer(env, "config", "get", "log_level").stdout == b"DEBUG\n"
    # A relative path means the directory it was given in, saved as an absolute path.
    here = short_tempdir("stg-rel-")
    assert stigmer(env, "config", "set", "kernel_cwd", "sub", cwd=here).returncode == 0
    assert stigmer(env, "config", "get", "kernel_cwd").stdout.decode().strip() == f"{here}/sub"
    shutil.rmtree(here, ignore_errors=True)
    assert stigmer(env, "config", "set", "kernel_cwd", "none").returncode == 0
    assert stigmer(env, "config", "get", "kernel_cwd").stdout == b"\n"
    other = stigmer(env, "--runtime-dir", "/tmp/stg-elsewhere", "config", "get", "runtime_dir")
    assert other.stdout == b"/tmp/stg-elsewhere\n"


def test_a_directory_that_is_not_stigmers_is_never_taken_over(env: dict[str, str]) -> None:
    foreign = short_tempdir("stg-foreign-")
    os.chmod(foreign, 0o755)
    os.mkdir(os.path.join(foreign, "jupyter"))
    for name in ("key", "notes.txt", "jupyter/mine.txt"):
        with open(os.path.join(foreign, name), "w") as handle:
            handle.write("mine\n")
    try:
        r = stigmer(dict(env, STIGMER_RUNTIME_DIR=foreign), "run", "--", "true")
        assert r.returncode == 125 and r.stderr.count(b"\n") == 1
        assert b"is not a stigmer runtime directory (it holds notes.txt)" in r.stderr
        assert sorted(os.listdir(foreign)) == ["jupyter", "key", "notes.txt"]
        assert os.listdir(os.path.join(foreign, "jupyter")) == ["mine.txt"]
        assert oct(os.stat(foreign).st_mode & 0o777) == "0o755"
    finally:
        shutil.rmtree(foreign, ignore_errors=True)
    empty = short_tempdir("stg-empty-")  # an empty directory is fine, and then it is ours
    try:
        assert stigmer(dict(env, STIGMER_RUNTIME_DIR=empty), "run", "--", "true").returncode == 0
        assert os.path.exists(os.path.join(empty, ".stigmer-runtime"))
    finally:
        stigmer(dict(env, STIGMER_RUNTIME_DIR=empty), "server", "stop")
        shutil.rmtree(empty, ignore_errors=True)


def test_a_relative_runtime_dir_means_the_directory_it_was_given_in(env: dict[str, str]) -> None:
    here = short_tempdir("stg-relrt-")
    relative = dict(env, STIGMER_RUNTIME_DIR="rt")
    try:
        r = stigmer(relative, "run", "--", "echo", "hi", cwd=here)
        assert (r.returncode, r.stdout) == (0, b"hi\n"), r.stderr
        status = json.loads(stigmer(relative, "server", "status", "--json", cwd=here).stdout)
        assert status["runtime_dir"] == os.path.join(here, "rt")
    finally:
        stigmer(relative, "server", "stop", cwd=here)
        shutil.rmtree(here, ignore_errors=True)


def test_the_servers_default_mode_applies_to_requests_that_name_none(env: dict[str, str]) -> None:
    bad = stigmer(env, "server", "start", "--kernel-ttl", "-3")
    assert bad.returncode == 125
    assert bad.stderr == (
        b"stigmer: error: invalid value -3.0 for kernel_ttl: expected a positive number of "
        b"seconds\n"
    )
    assert stigmer(env, "server", "start", "--execution-mode", "auto").returncode == 0
    assert stigmer(env, "run", "--kernel", "m", "--", "true").returncode == 0
    assert (
        stigmer(env, "run", "--mode", "local", "--kernel", "l", "--", "cd", "/tmp").returncode == 0
    )
    # No mode named: an existing kernel is joined in its own mode, and the reply says which.
    joined = json.loads(stigmer(env, "run", "--json", "--kernel", "l", "--", "pwd").stdout)
    assert (joined["stdout"], joined["mode"]) == ("/tmp\n", "local")
    kernels = {
        k["name"]: k["mode"] for k in json.loads(stigmer(env, "kernels", "list", "--json").stdout)
    }
    assert (kernels["m"], kernels["l"]) == ("auto", "local")
    # --explain answers for the mode the request would get: the server's, or the kernel's.
    fresh = stigmer(env, "run", "--explain", "--kernel", "new", "--", "pip", "install", "x")
    assert fresh.stdout.startswith(b"sandbox: ")
    joined = stigmer(env, "run", "--explain", "--kernel", "l", "--", "pip", "install", "x")
    assert joined.stdout.startswith(b"local: mode local runs every command there")
    # A mode the client was configured with is a default for new kernels: an existing one
    # keeps its own; a mode named on the command line must match it (exit 2).
    configured = dict(env, STIGMER_EXECUTION_MODE="local")
    joined = stigmer(configured, "run", "--kernel", "m", "--", "true")
    assert joined.returncode == 0, joined.stderr
    clash = stigmer(env, "run", "--mode", "local", "--kernel", "m", "--", "true")
    assert clash.returncode == 2 and b"runs in auto mode, not local" in clash.stderr


def test_a_server_started_for_a_client_keeps_its_own_default_mode(env: dict[str, str]) -> None:
    auto = dict(env, STIGMER_EXECUTION_MODE="auto")
    r = json.loads(stigmer(auto, "run", "--json", "--kernel", "a", "--", "echo", "x").stdout)
    assert r["auto"]["mode"] == "local"  # the client's auto mode was applied to its request
    status = json.loads(stigmer(env, "server", "status", "--json").stdout)
    assert status["execution_mode"] == "local"  # one client's mode is not everyone's default
    plain = json.loads(stigmer(env, "run", "--json", "--kernel", "p", "--", "true").stdout)
    assert (plain["mode"], plain["auto"]) == ("local", None)
