"""``stigmer run`` starts lean: it imports only what a plain run needs, parses its options as
argparse would without argparse, and the lazily loaded subcommands still all show in
``stigmer --help``."""

from __future__ import annotations

import argparse
import functools
import hashlib
import itertools
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from stigmer_kernel.cli.main import COMMANDS, _chosen, _parser
from stigmer_kernel.cli.run_args import parse_plain
from stigmer_kernel.protocol.constants import STDIN_INLINE_MAX
from tests.cli.conftest import stigmer

#: Modules a plain ``stigmer run -- true`` must not load (each costs tens of milliseconds; pyzmq:
#: the lean path speaks ZMTP itself).
HEAVY = ("asyncio", "docker", "jupyter_client", "yaml", "rich", "zmq")
#: Nor these, each a few milliseconds of a start that is itself tens: argparse (with gettext,
#: locale, and shutil with bz2 and lzma, which its parsers load) for the options parse_plain
#: reads alone; typing, which only the type checker needs (``TYPE_CHECKING = False`` in each
#: module on the path); socket (with selectors), whose import makes enums of all its constants,
#: for a dealer that needs only ``_socket``; shlex, for a command given as one argument.
LIGHT = ("argparse", "gettext", "locale", "shutil", "bz2", "lzma", "typing", "socket")
LIGHT += ("selectors", "shlex")
#: Nor, together a third of what it imported before: enum (with functools), whose classes the
#: protocol's names and the settings' names would build (the run uses their wire strings);
#: hashlib, which loads OpenSSL (a round trip's frames are signed on the builtin SHA-256);
#: json, re and contextlib (server.json is read on json's C scanner); signal, whose import makes
#: enums of its constants (``_signal`` sets the Ctrl-C handler).
LIGHT += ("enum", "functools", "stigmer_kernel.protocol.enums", "stigmer_kernel.names")
LIGHT += ("hashlib", "_hashlib", "hmac", "json", "re", "contextlib", "signal")
#: Nor msgpack, with datetime and collections (a fifth of the start): protocol/lean_msgpack.py.
LIGHT += ("msgpack", "datetime", "collections")
#: Nor a ``Config``: dataclasses, with inspect and ast (and tokenize, dis), ~10 ms; the run reads
#: its few settings with lean_config (tests/test_lean_config.py), and nothing on its path is a
#: dataclass; nor the whole config module (its TOML parser, its table of every setting).
DATACLASS = ("dataclasses", "inspect", "ast", "dis", "tokenize", "stigmer_kernel.config")
DATACLASS += ("stigmer_kernel.client.result", "tomllib")
#: Nor pathlib, with urllib.parse, ipaddress and fnmatch (~5 ms): the run's runtime directory
#: is a string (lean_config, runtime.RuntimeDir).
DATACLASS += ("pathlib", "urllib", "urllib.parse", "ipaddress", "fnmatch")


#: What the ``stigmer`` console script runs (``python -m stigmer_kernel`` would import runpy,
#: and with it contextlib and functools, before any of ours).
_CONSOLE_SCRIPT = "import sys\nfrom stigmer_kernel.cli.main import main\nsys.exit(main())\n"


def _imported(
    env: dict[str, str], *args: str, stdin: Any = subprocess.DEVNULL
) -> tuple[subprocess.CompletedProcess[str], set[str]]:
    """Run the CLI as its console script does, under ``-X importtime``: its result and every
    module it imported."""
    r = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", _CONSOLE_SCRIPT, *args],
        env=env,
        stdin=stdin,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return r, _names(r.stderr)


def _names(importtime: str) -> set[str]:
    return {
        line.rsplit("|", 1)[-1].strip()
        for line in importtime.splitlines()
        if line.startswith("import time:")
    }


def test_a_plain_run_loads_no_asyncio_pyzmq_docker_or_jupyter(env: dict[str, str]) -> None:
    stigmer(env, "run", "--", "true")  # the server it autostarts is up: a run like any other
    r, names = _imported(env, "run", "--", "echo lean")
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout == "lean\n"
    assert "stigmer_kernel.protocol.lean_msgpack" in names  # the check sees what it imports
    assert "stigmer_kernel.client._zmtp" in names
    assert sorted(n for n in names if n.split(".")[0] in HEAVY or n in HEAVY) == []
    assert sorted(n for n in names if n in LIGHT) == []
    assert sorted(n for n in names if n in DATACLASS) == []
    failed, names = _imported(env, "run", "--", "echo no >&2; exit 3")  # the command's failure
    assert (failed.returncode, failed.stdout) == (3, ""), failed.stderr[-2000:]
    assert sorted(n for n in names if n in LIGHT or n in DATACLASS) == []


def test_a_plain_run_with_a_setting_still_applies_it(env: dict[str, str]) -> None:
    stigmer(env, "run", "--", "true")
    r, names = _imported({**env, "STIGMER_TIMEOUT": "0.5"}, "run", "--", "sleep 5")
    assert r.returncode == 124, r.stderr[-2000:]  # the Config path read it: timed out
    assert "stigmer_kernel.config" in names


def test_a_stdin_all_there_travels_in_the_request_without_an_event_loop(
    env: dict[str, str], tmp_path: Path
) -> None:
    stigmer(env, "run", "--", "true")
    exact = tmp_path / "exact"
    exact.write_bytes(bytes(range(256)) * (STDIN_INLINE_MAX // 256))  # the most that travels
    with exact.open("rb") as f:
        r, names = _imported(env, "run", "--", "sha256sum", stdin=f)
    assert r.stdout.split()[0] == hashlib.sha256(exact.read_bytes()).hexdigest(), r.stderr[-2000:]
    assert (
        sorted(n for n in names if n in ("asyncio", "zmq")) == []
    )  # (hashlib: 1 MiB is signed on OpenSSL)
    # A pipe whose writer is gone (`echo hi | stigmer run ...`), empty or not.
    for data in (b"hi\n", b""):
        read, write = os.pipe()
        os.write(write, data)
        os.close(write)
        with os.fdopen(read, "rb") as pipe:
            r, names = _imported(env, "run", "--", 'echo "[$(cat)]"', stdin=pipe)
        assert r.stdout == f"[{data.decode().strip()}]\n", r.stderr[-2000:]
        assert "asyncio" not in names


def test_a_stdin_still_written_or_too_large_is_streamed(
    env: dict[str, str], tmp_path: Path
) -> None:
    stigmer(env, "run", "--", "true")
    big = tmp_path / "big"
    big.write_bytes(os.urandom(STDIN_INLINE_MAX + 1))
    with big.open("rb") as f:
        r, names = _imported(env, "run", "--", "sha256sum", stdin=f)
    assert r.stdout.split()[0] == hashlib.sha256(big.read_bytes()).hexdigest()
    assert "asyncio" in names  # streamed
    # A writer still there: the command reads the first line before the second is written.
    proc = subprocess.Popen(
        [
            sys.executable,
            "-X",
            "importtime",
            "-c",
            _CONSOLE_SCRIPT,
            "run",
            "--",
            'read first; echo "got $first"; read second; echo "then $second"',
        ],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(b"one\n")
    proc.stdin.flush()
    assert proc.stdout.readline() == b"got one\n"  # streamed: the pipe is still open
    out, err = proc.communicate(b"two\n", timeout=60)
    assert (out, proc.returncode) == (b"then two\n", 0)
    assert "asyncio" in _names(err.decode())


def test_help_lists_every_command_and_each_has_its_own(env: dict[str, str]) -> None:
    top = stigmer(env, "--help")
    assert top.returncode == 0
    listed = top.stdout.decode()
    for name in COMMANDS:
        assert f"\n    {name} " in listed or f"\n    {name}\n" in listed, name
        own = stigmer(env, name, "--help")
        assert own.returncode == 0, (name, own.stderr)
        assert f"usage: stigmer {name}" in own.stdout.decode(), name


#: Every way of writing run's options parse_plain reads itself, and some it leaves to argparse.
_PIECES = [
    ["-k", "build"],
    ["--kernel", "build"],
    ["--kernel=build"],
    ["--kernel="],
    ["-t", "5"],
    ["--timeout", "2.5"],
    ["--timeout=1e3"],
    ["--timeout", "-1"],
    ["--timeout=-1"],
    ["--timeout", "soon"],
    ["--mode", "sandbox"],
    ["--mode=auto"],
    ["--mode", "nowhere"],
    ["--cwd", "/tmp"],
    ["-w", "sub"],
    ["--workdir=/x"],
    ["--sandbox-image", "img:1"],
    ["--pool", "p"],
    ["--requirements", "req.txt"],
    ["-e", "A=1"],
    ["--env", "B=2"],
    ["--env=C=3=4"],
    ["--stdin"],
    ["--no-stdin"],
    ["--explain"],
    ["--json"],
    ["--json=yes"],
    ["-kbuild"],
    ["--kern", "x"],
    ["--help"],
    ["--bogus"],
    ["-k", "-x"],
    ["-k"],
    ["-"],
]
_COMMANDS = [["--", "true"], ["--", "ls", "-la"], ["echo", "--kernel", "x"], ["--"], []]


@functools.cache
def _run_parser() -> argparse.ArgumentParser:
    return _parser(_chosen(["run"]))


def _argparse(argv: list[str]) -> dict[str, object] | None:
    """What the full parser makes of ``argv``; None if it refuses it (or prints help)."""
    try:
        return vars(_run_parser().parse_args(argv))
    except SystemExit:
        return None


@pytest.mark.parametrize(
    "options",
    [list(itertools.chain(*c)) for n in (0, 1, 2) for c in itertools.permutations(_PIECES, n)],
    ids=lambda options: " ".join(options) or "none",
)
def test_plain_parse_is_argparse_or_leaves_it_to_argparse(
    options: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    for command in _COMMANDS:
        argv = ["run", *options, *command]
        plain = parse_plain(argv)
        if plain is not None:
            assert vars(plain) == _argparse(argv), argv
    capsys.readouterr()  # argparse's complaints about the refused ones


@pytest.mark.parametrize(
    "argv",
    [
        ["run", "--", "true"],
        ["run", "true"],
        ["run", "-k", "build", "--timeout", "60", "--", "make", "-j4"],
        ["run", "--json", "--env=A=1", "-e", "B=2", "--no-stdin", "--", "env"],
        ["run", "--mode", "auto", "--explain", "--", "pip install six"],
    ],
)
def test_the_common_runs_are_parsed_without_argparse(argv: list[str]) -> None:
    assert parse_plain(argv) is not None


# -- the stigmer process ends at once, unless something would still run at its exit ------------
_AS_THE_PROCESS = "import sys\nsys.argv = ['stigmer', 'run', '--', 'exit 3']\n"
_MAIN = "from stigmer_kernel.cli.main import main\nsys.exit(main())\n"


def _python(env: dict[str, str], code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_a_run_ends_its_process_with_its_code_and_all_its_output(env: dict[str, str]) -> None:
    r = stigmer(env, "run", "--", "seq 100000; echo done >&2; exit 7")
    assert r.returncode == 7
    assert r.stdout.decode().splitlines()[-1] == "100000"
    assert r.stderr == b"done\n"


def test_an_atexit_callback_still_runs(env: dict[str, str]) -> None:
    code = _AS_THE_PROCESS + "import atexit\natexit.register(print, 'at exit')\n" + _MAIN
    r = _python(env, code)
    assert (r.returncode, r.stdout) == (3, "at exit\n"), r.stderr


def test_a_thread_still_running_is_waited_for(env: dict[str, str]) -> None:
    code = (
        _AS_THE_PROCESS
        + "import threading\nreturned = threading.Event()\n"
        + "threading.Thread(target=lambda: returned.wait() and print('thread ended')).start()\n"
        + "from stigmer_kernel.cli.main import main\ncode = main()\nreturned.set()\n"
        + "sys.exit(code)\n"
    )
    r = _python(env, code)
    assert (r.returncode, r.stdout) == (3, "thread ended\n"), r.stderr
