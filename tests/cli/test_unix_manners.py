"""The CLI as a Unix tool: output is never cut, stdin is passed, help says everything."""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import termios
import threading
import time
from collections.abc import Callable

from stigmer_kernel import Client, load_config
from stigmer_kernel.cli.main import _parser
from stigmer_kernel.cli.run import _Output
from tests.cli.conftest import stigmer
from tests.conftest import short_tempdir

CLI = [sys.executable, "-m", "stigmer_kernel"]
BIG = 100_000_000


def _rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as handle:
        return next(int(line.split()[1]) for line in handle if line.startswith("VmRSS:"))


def test_output_is_streamed_in_full_and_a_stopped_reader_loses_nothing(
    env: dict[str, str],
) -> None:
    source = os.path.join(short_tempdir("stg-big-"), "big.bin")
    with open(source, "wb") as handle:
        for i in range(BIG // 1_000_000):
            handle.write(hashlib.sha256(str(i).encode()).digest() * 31250)  # 1 MB, not zeros
    with open(source, "rb") as handle:
        want = hashlib.sha256(handle.read()).hexdigest()
    assert stigmer(env, "run", "--", "true").returncode == 0
    server = json.loads(stigmer(env, "server", "status", "--json").stdout)["pid"]
    baseline = _rss_kb(server)
    # The CLI is stopped while the command writes (as a reader that does not read): the command
    # waits for it; the server holds a bounded amount meanwhile.
    cli = subprocess.Popen(
        [*CLI, "run", "--", f"cat {source}"],
        env=env | {"PYTHONUNBUFFERED": "1"},  # a raw stdout: writes a signal cuts short show
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert cli.stdout is not None
    digest = hashlib.sha256()
    got = 0
    first = cli.stdout.read(1 << 20)
    digest.update(first)
    got += len(first)
    os.kill(cli.pid, signal.SIGSTOP)
    peak = baseline
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:
        peak = max(peak, _rss_kb(server))
        time.sleep(0.05)
    os.kill(cli.pid, signal.SIGCONT)
    while chunk := cli.stdout.read(1 << 20):
        digest.update(chunk)
        got += len(chunk)
        peak = max(peak, _rss_kb(server))
    assert cli.stderr is not None
    err = cli.stderr.read()
    cli.stdout.close()
    cli.stderr.close()
    assert cli.wait(timeout=60) == 0, err
    assert got == BIG and digest.hexdigest() == want
    assert err == b""  # no truncation notice
    # the client socket's queue (48 messages of <= 1 MiB) and one command's window (16 such)
    assert peak - baseline < 100_000, (baseline, peak)


def _int(raw: bytearray) -> int:
    return int.from_bytes(raw, sys.byteorder)


def _write_cut_short(write: Callable[[io.FileIO, bytes], object]) -> tuple[object, bytes, bytes]:
    """``write(stream, data)`` on a raw stream into a pipe of 64 KiB, more than it holds, with a
    signal (as SIGSTOP/SIGCONT or SIGWINCH bring) coming while the write waits for the reader:
    (what write returned, what was sent, what the reader got)."""
    r, w = os.pipe()
    fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, 65536)
    data = os.urandom(4 * 65536)
    caught = threading.Event()
    previous = signal.signal(signal.SIGUSR1, lambda *_: caught.set())
    writer = threading.get_ident()
    got = bytearray()

    def reader() -> None:
        held = bytearray(4)
        while fcntl.ioctl(r, termios.FIONREAD, held) == 0 and _int(held) < 65536:
            time.sleep(0.001)  # until the pipe is full: the write waits
        signal.pthread_kill(writer, signal.SIGUSR1)
        caught.wait(10)
        while chunk := os.read(r, 1 << 20):
            got.extend(chunk)

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        with io.FileIO(w, "wb") as stream:
            returned = write(stream, data)
        thread.join(10)
    finally:
        signal.signal(signal.SIGUSR1, previous)
        os.close(r)
    assert caught.is_set()
    return returned, data, bytes(got)


def test_a_write_a_signal_cuts_short_is_finished() -> None:
    # Under PYTHONUNBUFFERED (python -u, many container images) sys.stdout.buffer is raw: its
    # write returns short when a signal comes while it waits. `stigmer run` took that for all
    # written and lost the rest (64 or 192 KiB when its reader was stopped and continued).
    returned, data, got = _write_cut_short(lambda stream, data: stream.write(data))
    assert isinstance(returned, int) and returned < len(data) and got == data[:returned]
    output = _Output("default")

    def through_output(stream: io.FileIO, data: bytes) -> None:
        output.out["stdout"] = stream  # type: ignore[assignment]
        output.write("stdout", data)

    _, data, got = _write_cut_short(through_output)
    assert got == data


def test_a_result_marks_what_it_did_not_keep(env: dict[str, str]) -> None:
    r = stigmer(
        env | {"STIGMER_OUTPUT_LIMIT": "1000"}, "run", "--json", "--", "head -c 5000 /dev/zero"
    )
    result = json.loads(r.stdout)
    assert result["truncated"] is True
    assert (len(result["stdout"]), result["stdout_dropped"]) == (1000, 4000)
    with Client(load_config(env=env), autostart=False) as client:
        seen: list[bytes] = []
        r2 = client.execute(
            "head -c 3000 /dev/zero", output_limit=10, on_output=lambda n, d: seen.append(d)
        )
        assert r2.truncated and r2.stdout_truncated and r2.stdout_dropped == 2990
        assert len(b"".join(seen)) == 3000 and "truncated" in repr(r2)
        full = client.execute("head -c 3000 /dev/zero")
        assert not full.truncated and len(full.stdout_bytes) == 3000


def test_stdin_from_a_file_or_a_pipe_is_passed(env: dict[str, str]) -> None:
    lines = os.path.join(short_tempdir("stg-in-"), "lines.txt")
    with open(lines, "w") as handle:
        handle.write("".join(f"{i}\n" for i in range(1000)))
    with open(lines, "rb") as handle:
        r = subprocess.run([*CLI, "run", "--", "wc -l"], env=env, stdin=handle, capture_output=True)
    assert r.stdout.strip() == b"1000", r.stderr
    r = stigmer(env, "run", "--", "wc -c", input=b"abc")  # a pipe
    assert r.stdout.strip() == b"3"
    r = subprocess.run(
        [*CLI, "run", "--", "wc -c"], env=env, stdin=subprocess.DEVNULL, capture_output=True
    )
    assert r.stdout.strip() == b"0"
    r = stigmer(env, "run", "--no-stdin", "--", "wc -c", input=b"abc")
    assert r.stdout.strip() == b"0"


def test_a_pipe_that_stays_open_is_streamed_and_no_stdin_skips_it(env: dict[str, str]) -> None:
    read, write = os.pipe()  # a script's inherited stdin that never closes
    try:
        r = subprocess.run(
            [*CLI, "run", "--no-stdin", "--", "echo ran"],
            env=env,
            stdin=read,
            capture_output=True,
            timeout=30,
        )
        assert r.stdout == b"ran\n"
        cli = subprocess.Popen(
            [*CLI, "run", "--", "wc -c"],
            env=env,
            stdin=read,
            stderr=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        os.write(write, b"hello")  # streamed while the command runs; EOF once it closes
        os.close(write)
        write = -1
        out, err = cli.communicate(timeout=30)
        assert out.strip() == b"5" and err == b""
    finally:
        os.close(read)
        if write >= 0:
            os.close(write)


def _walk(parser: argparse.ArgumentParser, path: str = "stigmer") -> list[tuple[str, str]]:
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found += _walk(sub, f"{path} {name}")
        elif not isinstance(action, (argparse._HelpAction, argparse._VersionAction)) and (
            not action.help
        ):
            found.append((path, action.dest))
    return found


def test_every_option_and_argument_has_help() -> None:
    assert _walk(_parser()) == []


def test_help_shows_examples_exit_codes_and_settings(env: dict[str, str]) -> None:
    run = stigmer(env, "run", "--help").stdout.decode()
    assert "examples:" in run and "exit codes:" in run
    for code in ("124", "125", "130", "141"):
        assert f"\n  {code} " in run
    keys = stigmer(env, "config", "set", "--help").stdout.decode()
    assert "kernel_ttl" in keys and "STIGMER_SANDBOX_IMAGE" in keys
    clean = stigmer(env, "sandbox", "clean", "--help").stdout.decode()
    assert "Deletes the images" in clean


def test_config_list_prints_values_as_typed(env: dict[str, str]) -> None:
    out = stigmer(env, "config", "list").stdout.decode()
    assert "command_timeout = none " in out and "auto_sticky = true " in out
    assert "'" not in out and "None" not in out and "True" not in out


def test_kernels_info_and_list_agree_and_shutdown_all(env: dict[str, str]) -> None:
    for name in ("a", "b"):
        assert stigmer(env, "run", "-k", name, "--", "true").returncode == 0
    listed = json.loads(stigmer(env, "kernels", "list", "--json").stdout)
    info = json.loads(stigmer(env, "kernels", "info", "a").stdout)
    assert info["clients"] == next(k for k in listed if k["name"] == "a")["clients"] == 0
    r = stigmer(env, "kernels", "shutdown", "--all")
    assert r.returncode == 0 and b"'a' shut down" in r.stdout and b"'b' shut down" in r.stdout
    assert json.loads(stigmer(env, "kernels", "list", "--json").stdout) == []
    assert stigmer(env, "kernels", "shutdown").returncode == 2


def test_server_logs_and_where_the_log_is(env: dict[str, str]) -> None:
    assert stigmer(env, "run", "--", "true").returncode == 0
    status = stigmer(env, "server", "status").stdout.decode()
    log = os.path.join(env["STIGMER_RUNTIME_DIR"], "server.log")
    assert f"log:            {log}" in status
    logs = stigmer(env, "server", "logs")
    assert logs.returncode == 0 and b"ready" in logs.stdout
    assert stigmer(env, "server", "logs", "-n", "1").stdout.count(b"\n") == 1
