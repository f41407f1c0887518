"""stdin streams while the command runs, as ssh does: any size, exact bytes, EOF when it ends,
and a stdin that never ends does not keep the CLI (or a Python caller) waiting."""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

from stigmer_kernel import Client, load_config
from tests.cli.conftest import stigmer
from tests.conftest import PeakMemory, Server, short_tempdir
from tests.sandbox.conftest import docker_client, sandbox, sandbox_factory  # noqa: F401

CLI = [sys.executable, "-m", "stigmer_kernel"]
BIG = 200 * 1024 * 1024
#: Every byte value, CR/LF pairs and NULs: what a text mode would change.
BINARY = bytes(range(256)) * 4 + b"\r\n\0\0\n\r" * 100


def _blocks(total: int) -> Iterator[bytes]:
    """``total`` bytes that are not all alike (1 MiB blocks of a hash chain)."""
    seed = b"stdin"
    sent = 0
    while sent < total:
        seed = hashlib.sha256(seed).digest()
        block = (seed * (1024 * 1024 // len(seed)))[: total - sent]
        sent += len(block)
        yield block


def _wait(proc: subprocess.Popen[bytes], timeout: float) -> int:
    """Wait for ``proc`` (at most ``timeout`` s): its exit code."""
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise AssertionError(f"the CLI did not exit within {timeout:g}s") from None


def test_200_mb_stream_through_the_command_exactly_in_bounded_memory(
    env: dict[str, str],
) -> None:
    assert stigmer(env, "run", "--", "true").returncode == 0  # the kernel is warm
    # The kernel counts and hashes what it reads.
    fifo = os.path.join(short_tempdir("stg-sum-"), "f")
    code = f"mkfifo {fifo}; (sha256sum < {fifo} & tee {fifo} | wc -c; wait)"
    cli = subprocess.Popen(
        [*CLI, "run", "--", code],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert cli.stdin is not None and cli.stdout is not None and cli.stderr is not None
    peak = PeakMemory(cli.pid)
    digest = hashlib.sha256()
    out: list[bytes] = []
    reader = threading.Thread(target=lambda: out.append(cli.stdout.read()))  # type: ignore[union-attr]
    reader.start()
    for block in _blocks(BIG):
        digest.update(block)
        cli.stdin.write(block)
    cli.stdin.close()
    code_ = _wait(cli, 120)
    reader.join(10)
    err = cli.stderr.read()
    cli.stdout.close()
    cli.stderr.close()
    assert code_ == 0, err
    words = out[0].split()  # the count and the sum, in either order
    assert str(BIG).encode() in words and digest.hexdigest().encode() in words, out
    assert err == b""
    # Read only as the command reads: the CLI never holds more than a few windows.
    assert 0 < peak.stop() < 120_000, peak.kb  # kB (the CLI alone is ~35 MB)


def test_an_endless_producer_ends_with_the_command(env: dict[str, str]) -> None:
    started = time.monotonic()
    r = subprocess.run(
        ["sh", "-c", f'yes | {" ".join(CLI)} run -- head -c 5; echo " $?"'],
        env=env,
        capture_output=True,
        timeout=60,
    )
    assert r.stdout == b"y\ny\ny 0\n", r.stderr
    assert time.monotonic() - started < 30
    # The kernel goes on: the next command's stdin is its own (nothing left of `yes`).
    assert stigmer(env, "run", "--", "wc -c", input=b"abc").stdout.strip() == b"3"


def test_a_stdin_that_never_closes_does_not_keep_the_cli(env: dict[str, str]) -> None:
    assert stigmer(env, "run", "--", "true").returncode == 0
    read, write = os.pipe()  # an inherited pipe nobody closes (`sleep 1000 | stigmer run`)
    try:
        r = subprocess.run(
            [*CLI, "run", "--", "true"], env=env, stdin=read, capture_output=True, timeout=30
        )
        assert (r.returncode, r.stderr) == (0, b"")
        # A command that reads sees what arrives, while the pipe stays open: a slow producer.
        cli = subprocess.Popen(
            [*CLI, "run", "--", 'read -r a; echo "$a"; read -r b; echo "$b"'],
            env=env,
            stdin=read,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        os.write(write, b"first\n")
        assert cli.stdout is not None and cli.stdout.readline() == b"first\n"
        os.write(write, b"second\nthird\n")
        out, err = cli.communicate(timeout=30)
        assert (cli.returncode, out, err) == (0, b"second\n", b"")
        # --no-stdin: the command reads /dev/null, the pipe is not touched.
        os.write(write, b"left alone")
        r = subprocess.run(
            [*CLI, "run", "--no-stdin", "--", "wc -c"],
            env=env,
            stdin=read,
            capture_output=True,
            timeout=30,
        )
        assert r.stdout.strip() == b"0"
        os.set_blocking(read, False)
        # (what the last command did not read was read ahead, as ssh does: "third" went)
        assert os.read(read, 100) == b"left alone"
    finally:
        os.close(read)
        os.close(write)


def test_a_python_parent_whose_pipe_stays_open(env: dict[str, str]) -> None:
    cli = subprocess.Popen([*CLI, "run", "--", "true"], env=env, stdin=subprocess.PIPE)
    try:
        assert cli.wait(timeout=30) == 0  # stdin=PIPE, never closed
    finally:
        assert cli.stdin is not None
        cli.stdin.close()


def test_binary_stdin_arrives_exactly(env: dict[str, str]) -> None:
    r = stigmer(env, "run", "--", "cat", input=BINARY)  # small: travels in the request
    assert r.stdout == BINARY
    big = BINARY * 1500  # ~2 MB: streamed
    r = stigmer(env, "run", "--", "cat", input=big)
    assert r.returncode == 0 and r.stdout == big
    empty = subprocess.run(
        [*CLI, "run", "--stdin", "--", "wc -c"],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=30,
    )
    assert empty.stdout.strip() == b"0"


def test_python_client_streams_files_and_iterators(env: dict[str, str]) -> None:
    path = os.path.join(short_tempdir("stg-in-"), "data.bin")
    data = b"".join(_blocks(5 * 1024 * 1024 + 7))
    with open(path, "wb") as handle:
        handle.write(data)
    want = hashlib.sha256(data).hexdigest()
    assert stigmer(env, "run", "--", "true").returncode == 0  # a server for the client
    with Client(load_config(env=env), autostart=False) as client:
        with open(path, "rb") as handle:
            r = client.execute("sha256sum", stdin=handle)
        assert r.stdout.split()[0] == want, r
        r = client.execute("sha256sum", stdin=io.BytesIO(data))
        assert r.stdout.split()[0] == want
        r = client.execute("sha256sum", stdin=data)  # bytes larger than a request carries
        assert r.stdout.split()[0] == want
        r = client.execute("wc -l", stdin=(f"{i}\n".encode() for i in range(100_000)))
        assert r.stdout.strip() == "100000"
        r = client.execute("od -An -c", stdin=b"a\0b")
        assert r.stdout.split() == ["a", "\\0", "b"]
        read, write = os.pipe()
        try:
            with os.fdopen(read, "rb", closefd=False) as pipe:
                started = time.monotonic()
                r = client.execute("true", stdin=pipe)  # never closed: returns with `true`
                assert r.exit_code == 0 and time.monotonic() - started < 10
                os.write(write, b"x" * 10)
                r = client.execute("head -c 4", stdin=pipe)
                assert r.stdout == "xxxx"
        finally:
            os.close(read)
            os.close(write)


def test_sandbox_kernel_streams_stdin(sandbox: Server) -> None:  # noqa: F811
    env = sandbox.env
    lines = b"".join(b"line %d\n" % i for i in range(300_000))  # ~3.3 MB: streamed
    r = subprocess.run(
        [*CLI, "run", "--mode", "sandbox", "--", "wc -l"],
        env=env,
        input=lines,
        capture_output=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.split()[0] == b"300000"
    r = subprocess.run(
        [*CLI, "run", "--mode", "sandbox", "--", "cat"],
        env=env,
        input=BINARY * 1500,
        capture_output=True,
        timeout=60,
    )
    assert r.stdout == BINARY * 1500
    read, write = os.pipe()
    try:
        r = subprocess.run(
            [*CLI, "run", "--mode", "sandbox", "--", "true"],
            env=env,
            stdin=read,
            capture_output=True,
            timeout=60,
        )
        assert r.returncode == 0, r.stderr
    finally:
        os.close(read)
        os.close(write)
