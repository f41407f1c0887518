"""An agent starts lean: ``python -m stigmer_kernel.agent`` imports only what serving a kernel
needs, and reads the options the broker writes as argparse would without argparse."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys

import pytest

from stigmer_kernel.agent.__main__ import _parse, _parser

#: Modules an agent's start must not load, each milliseconds of every kernel's start (twice that
#: in a container): argparse (with gettext) for options the broker writes the same way each time;
#: logging (with traceback, linecache, tokenize), imported at the first line logged; dataclasses
#: (with inspect, ast, dis); shutil and tempfile (with bz2, lzma) for a directory only a remote
#: agent makes; socket for a host name; ctypes.util, whose find_library runs `ldconfig -p` for
#: the name of glibc; the config module and its dataclass for two enums.
NOT_AT_START = ("argparse", "gettext", "logging", "traceback", "tokenize", "linecache")
NOT_AT_START += ("dataclasses", "inspect", "ast", "dis", "shutil", "tempfile", "bz2", "lzma")
NOT_AT_START += ("socket", "ctypes.util", "stigmer_kernel.config")

#: What an agent does before its loop: its imports, set_non_dumpable, its options.
_START = """
from stigmer_kernel.agent import __main__ as main, procs
procs.set_non_dumpable()
main._parse(["--endpoint", "ipc:///x", "--kernel-id", "k1", "--workdir", "/tmp", "--sandbox"])
"""


def test_an_agent_start_imports_none_of_the_slow_modules() -> None:
    r = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", _START],
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    names = {
        line.rsplit("|", 1)[-1].strip()
        for line in r.stderr.splitlines()
        if line.startswith("import time:")
    }
    # The check sees them (msgpack comes with the agent's Session, after this start).
    assert {"zmq", "stigmer_kernel.protocol.session", "stigmer_kernel.agent.agent"} <= names
    assert sorted(names & set(NOT_AT_START)) == []


#: Ways of writing the agent's options: those the broker writes, and some left to argparse.
_PIECES = [
    ["--endpoint", "ipc:///run/a.sock"],
    ["--server=tcp://h:5555"],
    ["--endpoint="],
    ["--kernel-id", "k-1"],
    ["--workdir=/w"],
    ["--heartbeat-interval", "0.5"],
    ["--orphan-timeout=1e3"],
    ["--timeout", "-1"],
    ["--output-limit", "12"],
    ["--journal-bytes=x"],
    ["--sandbox"],
    ["--sandbox=1"],
    ["--pool", "p"],
    ["--env-file", "a=b"],
    ["--endp", "x"],
    ["--help"],
    ["-h"],
    ["--bogus"],
    ["--kernel-id"],
    ["positional"],
    ["--"],
]

#: A command line as a provisioner writes it.
_BROKER_LINE = ["--endpoint", "ipc:///r/agents.sock", "--kernel-id", "build-1", "--cwd", "/src"]
_BROKER_LINE += ["--workdir", "/r/k", "--shell", "bash", "--heartbeat-interval", "1.0"]
_BROKER_LINE += ["--orphan-timeout", "60", "--timeout", "0", "--output-limit", "1048576"]
_BROKER_LINE += ["--journal-bytes", "0", "--env-file", "/r/k/env.json"]


def _outcome(parse: object, argv: list[str]) -> object:
    try:
        return vars(parse(argv))  # type: ignore[operator]
    except SystemExit as exc:
        return ("exit", exc.code)


@pytest.mark.parametrize(
    "argv",
    [list(itertools.chain(*c)) for n in (0, 1, 2) for c in itertools.permutations(_PIECES, n)]
    + [_BROKER_LINE, [*_BROKER_LINE, "--sandbox", "--curve-file", "/run/c"], _BROKER_LINE[:-1]],
    ids=lambda argv: " ".join(argv) or "none",
)
def test_the_options_parse_as_argparse_parses_them(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert _outcome(_parse, argv) == _outcome(_parser().parse_args, argv), argv
    capsys.readouterr()  # argparse's help and complaints
