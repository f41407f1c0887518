"""Image pulls and builds show a progress bar on a terminal, plain lines elsewhere; rich is
loaded only when a bar is drawn."""

from __future__ import annotations

import fcntl
import io
import os
import re
import select
import struct
import subprocess
import sys
import termios
import time
import uuid
from pathlib import Path
from typing import Any

from stigmer_kernel.cli.progress import ProgressDisplay
from stigmer_kernel.provisioners.progress import (
    build_report,
    parse_report,
    pull_report,
    pull_totals,
)
from tests.cli.conftest import stigmer
from tests.conftest import ROOT, Server
from tests.sandbox.conftest import TEST_IMAGE, sandbox_workspace
from tests.sandbox.conftest import docker_client as docker_client  # the fixtures
from tests.sandbox.conftest import sandbox as sandbox
from tests.sandbox.conftest import sandbox_factory as sandbox_factory

#: Cursor movement and erasing: what a bar draws and a log must never get.
CONTROL = re.compile(rb"\x1b\[")
RICH_LOADED = "import sys, atexit; atexit.register(lambda: print('rich' in sys.modules))"


def on_a_terminal(
    argv: list[str], env: dict[str, str], cwd: str | Path = ROOT, timeout: float = 120
) -> tuple[int, str, str]:
    """Run ``argv`` with its stderr on a pseudo-terminal (120 columns): its exit code, what the
    terminal received, and its stdout (a pipe)."""
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    proc = subprocess.Popen(
        argv,
        env={**env, "TERM": "xterm-256color", "COLUMNS": "120"},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=slave,
        cwd=cwd,
    )
    os.close(slave)
    received = bytearray()
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            readable, _, _ = select.select([master], [], [], 0.1)
            if readable:
                try:
                    received += os.read(master, 65536)
                except OSError:  # EIO: no writer is left
                    break
            elif proc.poll() is not None:  # exited, and all it wrote has been read
                break
        else:
            proc.kill()
        out, _ = proc.communicate(timeout=10)
        return proc.returncode, received.decode(errors="replace"), out.decode()
    finally:
        os.close(master)


def _context(tmp: Path, marker: str) -> str:
    """A tiny build context on the offline image: three RUN steps, the first unique (no cache)."""
    (tmp / "Dockerfile").write_text(
        f"FROM {TEST_IMAGE}\n"
        f"RUN echo {marker}\n"
        "RUN for i in 1 2 3; do echo counting $i; sleep 0.5; done\n"
        "RUN echo last-step\n"
    )
    return str(tmp)


def _build_code(context: str, tag: str) -> str:
    return (
        f"{RICH_LOADED}\n"
        "import docker\n"
        "from stigmer_kernel.cli.sandbox import _stream_build\n"
        f"_stream_build(docker.from_env(), {context!r}, 'Dockerfile', {tag!r}, {{}})\n"
    )


# -- rich stays out of what draws nothing ---------------------------------------------------------
def test_rich_is_not_loaded_by_the_cli_or_a_plain_run(env: dict[str, str]) -> None:
    code = f"{RICH_LOADED}\nimport stigmer_kernel.cli.main"
    loaded = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )
    assert loaded.stdout == "False\n", loaded.stderr
    run = f"{RICH_LOADED}\nfrom stigmer_kernel.cli.main import main\nmain(['run', '--', 'true'])"
    status, seen, out = on_a_terminal([sys.executable, "-c", run], env)
    assert status == 0, seen
    assert out == "False\n", seen


def test_a_failed_pull_on_a_terminal_is_one_clear_line(docker_client: Any) -> None:
    image = "localhost:1/stigmer/nope:1"
    code, seen, _ = on_a_terminal(
        [sys.executable, "-m", "stigmer_kernel", "sandbox", "pull", image], {**os.environ}
    )
    assert code == 125, seen
    last = seen.strip().splitlines()[-1]
    assert last.startswith(f"stigmer: error: pull of {image} failed"), seen


# -- the CLI's own builds --------------------------------------------------------------------------
def test_a_build_on_a_terminal_draws_its_steps(docker_client: Any, tmp_path: Path) -> None:
    marker = f"progress-{uuid.uuid4().hex[:12]}"
    tag = f"stigmer-test-bare:{marker}"
    try:
        code, seen, out = on_a_terminal(
            [sys.executable, "-c", _build_code(_context(tmp_path, marker), tag)], dict(os.environ)
        )
        assert code == 0, seen
        assert CONTROL.search(seen.encode()), seen  # drawn, not printed
        assert f"building {tag}" in seen
        assert "step 3/4" in seen and "step 4/4" in seen, seen  # the bar's step count
        assert "counting" in seen  # the current step's latest line
        assert "Step 3/4 : RUN" not in seen  # the builder's own log is not dumped
        assert out == "True\n"  # rich drew it
    finally:
        docker_client.images.remove(tag, force=True)


def test_a_build_into_a_file_writes_plain_lines(docker_client: Any, tmp_path: Path) -> None:
    marker = f"progress-{uuid.uuid4().hex[:12]}"
    tag = f"stigmer-test-bare:{marker}"
    (tmp_path / "ctx").mkdir()
    log = tmp_path / "stderr.log"
    try:
        with log.open("wb") as stderr:
            r = subprocess.run(
                [sys.executable, "-c", _build_code(_context(tmp_path / "ctx", marker), tag)],
                env={**os.environ, "TERM": "xterm-256color"},
                stdout=subprocess.PIPE,
                stderr=stderr,
                timeout=120,
                cwd=ROOT,
            )
        text = log.read_bytes()
        assert r.returncode == 0, text
        assert not CONTROL.search(text), text
        lines = text.decode().splitlines()
        assert "Step 3/4 : RUN for i in 1 2 3; do echo counting $i; sleep 0.5; done" in lines
        assert "Step 4/4 : RUN echo last-step" in lines
        assert "counting 3" in lines and "last-step" in lines
        assert r.stdout == b"False\n"  # no bar, no rich
    finally:
        docker_client.images.remove(tag, force=True)


# -- a build the server does, drawn by `stigmer run` -----------------------------------------------
def test_run_draws_the_servers_requirements_build(
    sandbox: Server, docker_client: Any, tmp_path: Path
) -> None:
    requirements = tmp_path / "requirements.txt"
    # pip is in the offline image already: the layer builds without a network; the comment
    # makes the layer new (its tag is a hash of the requirements).
    requirements.write_text(f"# progress test {uuid.uuid4().hex}\npip\n")
    argv = [sys.executable, "-m", "stigmer_kernel", "run", "--mode", "sandbox", "--kernel"]
    argv += ["progress", "--requirements", str(requirements), "--", "echo ran-after"]
    tag = ""
    try:
        code, seen, out = on_a_terminal(argv, sandbox.env, cwd=sandbox_workspace())
        found = re.search(r"installing requirements into (stigmer-requirements:\w+)", seen)
        tag = found[1] if found else ""
        assert code == 0, seen
        assert tag, seen
        assert CONTROL.search(seen.encode()), seen
        assert re.search(r"step (\d+)/\1 ", seen), seen  # the server's steps, drawn as a bar
        assert not re.search(r"Step \d+/\d+ :", seen), seen  # ... not printed as lines
        assert seen.endswith("\x1b[?25h\r\x1b[1A\x1b[2K"), seen  # and erased at the end
        assert out == "ran-after\n"
    finally:
        if tag:
            stigmer(sandbox.env, "kernels", "shutdown", "progress")
            docker_client.images.remove(tag, force=True)


# -- the pull tally and the report texts: our own arithmetic, on a recorded event shape ------------
#: The shape of `api.pull(..., stream=True, decode=True)` events (Docker 20.10), two layers to
#: fetch (1 MB and 3 MB) and one the engine has.
PULL: list[dict[str, Any]] = [
    {"status": "Pulling from stigmer/demo", "id": "1.0"},
    {"status": "Already exists", "progressDetail": {}, "id": "aaa"},
    {"status": "Pulling fs layer", "progressDetail": {}, "id": "bbb"},
    {"status": "Pulling fs layer", "progressDetail": {}, "id": "ccc"},
    {"status": "Waiting", "progressDetail": {}, "id": "ccc"},
    {
        "status": "Downloading",
        "progressDetail": {"current": 500_000, "total": 1_000_000},
        "progress": "[=====>     ]  500kB/1MB",
        "id": "bbb",
    },
    {
        "status": "Downloading",
        "progressDetail": {"current": 1_000_000, "total": 3_000_000},
        "id": "ccc",
    },
    {"status": "Verifying Checksum", "progressDetail": {}, "id": "bbb"},
    {"status": "Download complete", "progressDetail": {}, "id": "bbb"},
    {
        "status": "Extracting",
        "progressDetail": {"current": 500_000, "total": 1_000_000},
        "id": "bbb",
    },
    {"status": "Pull complete", "progressDetail": {}, "id": "bbb"},
    {
        "status": "Downloading",
        "progressDetail": {"current": 3_000_000, "total": 3_000_000},
        "id": "ccc",
    },
    {"status": "Download complete", "progressDetail": {}, "id": "ccc"},
    {
        "status": "Extracting",
        "progressDetail": {"current": 1_500_000, "total": 3_000_000},
        "id": "ccc",
    },
    {"status": "Pull complete", "progressDetail": {}, "id": "ccc"},
    {"status": "Digest: sha256:" + "0" * 64},
    {"status": "Status: Downloaded newer image for localhost/stigmer/demo:1.0"},
]


def test_pull_tally_sums_the_layers() -> None:
    assert pull_totals(PULL[:4]).fraction is None  # no size known yet
    start = pull_totals(PULL[:7])
    assert (start.size, start.downloaded, start.count, start.finished) == (
        4_000_000,
        1_500_000,
        3,
        1,
    )
    assert start.fraction == 1_500_000 / 8_000_000  # downloaded and extracted both count
    half = pull_totals(PULL[:11])  # bbb in, ccc one third down
    assert half.downloaded == 2_000_000 and half.finished == 2
    assert half.fraction == (2_000_000 + 1_000_000) / 8_000_000
    unpacking = pull_totals(PULL[:14])
    assert unpacking.downloaded == 4_000_000 and unpacking.fraction == 6_500_000 / 8_000_000
    done = pull_totals(PULL)
    assert done.fraction == 1.0 and done.finished == done.count == 3


def test_reports_read_back_and_plain_text_says_each_tenth() -> None:
    tally = pull_totals(PULL[:11])
    said = parse_report(pull_report("localhost/stigmer/demo:1.0", tally))
    assert said.subject == "localhost/stigmer/demo:1.0" and said.fraction == 0.37
    step = parse_report(build_report("stigmer-agent-layer:ab12", "Step 3/9 : RUN make\n"))
    assert step.subject == "stigmer-agent-layer:ab12" and step.step is not None
    assert (step.step.number, step.step.count, step.step.instruction) == (3, 9, "RUN make")
    line = parse_report(build_report("stigmer-agent-layer:ab12", "Collecting six"))
    assert line.line == "Collecting six" and line.step is None
    other = parse_report("installing requirements into stigmer-requirements:ab12")
    assert not other.pull and not other.build

    stream = io.StringIO()  # not a terminal: plain lines, a pull's each tenth only
    display = ProgressDisplay(stream)
    for percent in (1, 2, 9, 10, 11, 55, 100):
        display.report(f"pulling demo:1: {percent}% of 12 MB")
    display.report("building demo:1: Step 1/2 : FROM x")
    display.close()
    assert stream.getvalue().splitlines() == [
        "stigmer: pulling demo:1: 1% of 12 MB",
        "stigmer: pulling demo:1: 10% of 12 MB",
        "stigmer: pulling demo:1: 55% of 12 MB",
        "stigmer: pulling demo:1: 100% of 12 MB",
        "stigmer: building demo:1: Step 1/2 : FROM x",
    ]


def test_a_pull_on_a_terminal_is_one_bar_of_bytes_and_layers() -> None:
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    with os.fdopen(slave, "w") as terminal:
        display = ProgressDisplay(terminal)
        assert display.bars
        for event in PULL:
            display.pull_event("localhost/stigmer/demo:1.0", event)
        display.close()
    received = bytearray()
    while select.select([master], [], [], 0)[0]:
        try:
            received += os.read(master, 65536)
        except OSError:
            break
    os.close(master)
    seen = received.decode()
    assert "pulling localhost/stigmer/demo:1.0" in seen
    assert "4/4 MB" in seen and "3/3 layers" in seen, seen  # its last state, then erased
    assert seen.count("pulling localhost/stigmer/demo:1.0") >= 1 and "Pull complete" not in seen
