"""Shared fixtures: a real broker process on a private ipc runtime directory."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from stigmer_kernel import Client
from stigmer_kernel.config import Config, load_config
from stigmer_kernel.runtime import RuntimeDir

ROOT = Path(__file__).resolve().parent.parent


def wait_for(predicate: Callable[[], Any], timeout: float = 15.0) -> None:
    """Return once ``predicate()`` is true; fail the test if it is not within ``timeout``."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.1)


#: Every directory :func:`short_tempdir` made in this session, removed when the session ends.
_TEMPDIRS: list[str] = []


def short_tempdir(prefix: str = "stg-") -> str:
    """A temp dir short enough for ipc socket paths (pytest's tmp_path can be too long),
    removed at the end of the test session."""
    path = tempfile.mkdtemp(prefix=prefix, dir="/tmp")
    _TEMPDIRS.append(path)
    return path


def session_tempdirs() -> list[str]:
    """The directories :func:`short_tempdir` made so far (test servers' runtime dirs among them)."""
    return list(_TEMPDIRS)


@pytest.fixture(scope="session", autouse=True)
def _remove_short_tempdirs() -> Iterator[None]:
    yield
    for path in _TEMPDIRS:
        shutil.rmtree(path, ignore_errors=True)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(config_path_of(path))  # a test server's config file, beside its dir


def config_path_of(runtime_dir: str) -> str:
    """The config file of the tests using ``runtime_dir`` (beside it: a runtime directory
    holds nothing but a server's own files)."""
    return f"{runtime_dir}.config.toml"


def stigmer_env(runtime_dir: str, **settings: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STIGMER_")}
    env["STIGMER_RUNTIME_DIR"] = runtime_dir
    env["STIGMER_CONFIG"] = config_path_of(runtime_dir)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    env.update(settings)
    return env


@dataclass
class Server:
    """A broker running as a real process, as `stigmer server start --foreground` runs it."""

    runtime_dir: str
    env: dict[str, str]
    proc: subprocess.Popen[bytes] | None = None
    clients: list[Client] = field(default_factory=list)

    @property
    def runtime(self) -> RuntimeDir:
        return RuntimeDir(Path(self.runtime_dir))

    @property
    def config(self) -> Config:
        return load_config(env=self.env)

    def start(self) -> Server:
        log = open(os.path.join(self.runtime_dir, "server.log"), "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "stigmer_kernel", "server", "start", "--foreground"],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + 15
        while not (
            self.runtime.server_running()
            and self.runtime.read_info()
            and self.runtime.key_path.exists()
        ):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"test server did not start: {self.log()}")
            time.sleep(0.02)
        return self

    def start_refused(self) -> subprocess.CompletedProcess[str]:
        """Run ``server start --foreground`` for a server expected not to start; its result."""
        return subprocess.run(
            [sys.executable, "-m", "stigmer_kernel", "server", "start", "--foreground"],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=30,
        )

    def client(self, **kwargs: object) -> Client:
        c = Client(self.config, autostart=False, **kwargs)  # type: ignore[arg-type]
        self.clients.append(c)
        return c

    def log(self) -> str:
        with contextlib.suppress(OSError):
            return Path(self.runtime_dir, "server.log").read_text(errors="replace")
        return ""

    def stop(self) -> None:
        for c in self.clients:
            with contextlib.suppress(Exception):
                c.close()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


class PeakMemory:
    """The highest resident size (VmHWM, kB) a process reached, read while it runs. (Not
    wait4's ru_maxrss: for a child started with vfork it holds the parent's peak, the whole
    test session's.)"""

    def __init__(self, pid: int) -> None:
        self.path = f"/proc/{pid}/status"
        self.kb = 0
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while True:
            try:
                status = Path(self.path).read_text()
            except OSError:
                return  # it has exited
            for line in status.splitlines():
                if line.startswith("VmHWM:"):
                    self.kb = max(self.kb, int(line.split()[1]))
            time.sleep(0.02)

    def stop(self) -> int:
        self._thread.join(timeout=10)
        return self.kb


def stigmer_out(srv: Server, *args: str, timeout: float = 60) -> str:
    """``stigmer ARGS`` against ``srv``: its stdout, stripped (a non-zero exit raises)."""
    return subprocess.run(
        [sys.executable, "-m", "stigmer_kernel", *args],
        env=srv.env,
        capture_output=True,
        text=True,
        check=True,
        timeout=timeout,
    ).stdout.strip()


def make_server(**settings: str) -> Server:
    runtime_dir = short_tempdir()
    return Server(runtime_dir, stigmer_env(runtime_dir, **settings))


@pytest.fixture
def server_factory() -> Iterator[object]:
    """Start servers with custom settings: ``server_factory(STIGMER_KERNEL_TTL="1")``."""
    servers: list[Server] = []

    def factory(**settings: str) -> Server:
        srv = make_server(**settings).start()
        servers.append(srv)
        return srv

    yield factory
    for srv in servers:
        srv.stop()
        shutil.rmtree(srv.runtime_dir, ignore_errors=True)


@pytest.fixture
def server(server_factory: object) -> Server:
    """A running broker with short heartbeats, so liveness tests are quick."""
    return server_factory(STIGMER_HEARTBEAT_INTERVAL="0.3")  # type: ignore[operator, no-any-return]


@pytest.fixture
def client(server: Server) -> Client:
    return server.client()


def processes_matching(text: str) -> list[int]:
    """PIDs whose command line contains ``text`` (to prove nothing was left running)."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            cmdline = Path("/proc", name, "cmdline").read_bytes().replace(b"\0", b" ")
            stat = Path("/proc", name, "stat").read_text()
        except OSError:
            continue
        if text.encode() in cmdline and ") Z " not in stat:
            found.append(int(name))
    return found
