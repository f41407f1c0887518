"""Finding the server of a runtime directory, and starting one in the background if needed."""

from __future__ import annotations

import os
import sys
import time

from ..errors import RuntimeDirError, ServerNotRunning, ServerStartError
from ..runtime import RuntimeDir

TYPE_CHECKING = False  # not typing's: see stigmer_kernel/__init__.py
if TYPE_CHECKING:
    import subprocess
    from pathlib import Path

    from ..config import Config


class ServerAddress:
    """Where a running server takes clients, the key they sign with, its pid and runtime
    directory; immutable. Not a dataclass: ``stigmer run`` imports no dataclasses."""

    __slots__ = ("endpoint", "key", "pid", "runtime")

    endpoint: str
    key: bytes
    pid: int
    runtime: RuntimeDir

    def __init__(self, endpoint: str, key: bytes, pid: int, runtime: RuntimeDir) -> None:
        object.__setattr__(self, "endpoint", endpoint)
        object.__setattr__(self, "key", key)
        object.__setattr__(self, "pid", pid)
        object.__setattr__(self, "runtime", runtime)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"cannot assign to field {name!r}: a ServerAddress is immutable")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ServerAddress):
            return NotImplemented
        return self._fields() == other._fields()

    def __hash__(self) -> int:
        return hash(self._fields())

    def __repr__(self) -> str:
        return (
            f"ServerAddress(endpoint={self.endpoint!r}, key={self.key!r}, pid={self.pid!r}, "
            f"runtime={self.runtime!r})"
        )

    def _fields(self) -> tuple[str, bytes, int, RuntimeDir]:
        return (self.endpoint, self.key, self.pid, self.runtime)

    def of_server(self, pid: int, key: bytes) -> ServerAddress:
        """This address for server ``pid`` of the same directory, whose key is ``key``."""
        return ServerAddress(self.endpoint, key, pid, self.runtime)


def package_root() -> str:
    """Directory holding the ``stigmer_kernel`` package (for child processes' PYTHONPATH)."""
    from pathlib import Path

    return str(Path(__file__).resolve().parent.parent.parent)


def child_env(config: Config) -> dict[str, str]:
    """Environment for a child process so that it builds exactly ``config``."""
    import enum

    from ..config import FIELDS, USER_KEYS

    env = dict(os.environ)
    for key in USER_KEYS:
        value = getattr(config, key)
        var = FIELDS[key].metadata["env"]
        if value is None:
            env.pop(var, None)
            continue
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, enum.Enum):
            text = str(value.value)
        else:
            text = str(value)
        env[var] = text
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root(), env.get("PYTHONPATH")) if p)
    return env


def _read_address(runtime: RuntimeDir) -> ServerAddress | None:
    info = runtime.read_info()
    if not info:
        return None
    try:
        key = runtime.read_key()
    except RuntimeDirError:
        return None
    return ServerAddress(str(info["client_endpoint"]), key, int(info.get("pid", 0)), runtime)


def wait_for_server(
    runtime: RuntimeDir, timeout: float, proc: subprocess.Popen[bytes] | None = None
) -> ServerAddress:
    deadline = time.monotonic() + timeout
    while True:
        if runtime.server_running():
            address = _read_address(runtime)
            if address is not None and (
                proc is None or address.pid == proc.pid or proc.poll() is not None
            ):
                return address
        elif proc is not None and proc.poll() is not None:
            raise ServerStartError(
                f"the stigmer server exited with code {proc.returncode} while starting"
                f"{_log_tail(runtime)}"
            )
        if time.monotonic() > deadline:
            raise ServerStartError(
                f"no stigmer server became ready in {runtime.path} within {timeout:g}s"
                f"{_log_tail(runtime)}"
            )
        time.sleep(0.01)


def _log_tail(runtime: RuntimeDir) -> str:
    try:
        lines = runtime.log_path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return f": {lines[-1]} (see {runtime.log_path})" if lines else ""


def start_background_server(
    config: Config, timeout: float = 20.0, for_client: bool = False
) -> ServerAddress:
    """Start ``stigmer server start --foreground`` detached, logging to server.log.

    ``for_client``: started because a client found none. Its default mode is then the saved
    one (or local), not the mode this client asked for: clients that name a mode send it, and
    one client's choice must not become every later client's default.
    """
    runtime = RuntimeDir(config.runtime_dir)
    runtime.ensure()
    env = child_env(config)
    if for_client:
        from ..config import FIELDS

        env.pop(FIELDS["execution_mode"].metadata["env"], None)
    import subprocess  # here: a client that finds its server running never needs it

    with open(runtime.log_path, "ab") as log:
        os.chmod(runtime.log_path, 0o600)
        proc = subprocess.Popen(
            [sys.executable, "-m", "stigmer_kernel", "server", "start", "--foreground"],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd="/",
            start_new_session=True,
            close_fds=True,
        )
    # Whoever wins a start race, a server that holds the lock is what we wait for.
    return wait_for_server(runtime, timeout, proc)


def running_server(runtime_dir: Path | str, timeout: float = 20.0) -> ServerAddress | None:
    """The address of the server of ``runtime_dir`` if one runs, else None (a string: see
    :class:`RuntimeDir`)."""
    runtime = RuntimeDir(runtime_dir)
    return wait_for_server(runtime, timeout) if runtime.server_running() else None


def find_server(config: Config, autostart: bool = True, timeout: float = 20.0) -> ServerAddress:
    """The address of the server of ``config.runtime_dir``, starting one if allowed."""
    address = running_server(config.runtime_dir, timeout)
    if address is not None:
        return address
    runtime = RuntimeDir(config.runtime_dir)
    if not autostart:
        raise ServerNotRunning(
            f"no stigmer server runs in {runtime.path} — start one with `stigmer server start`"
        )
    return start_background_server(config, timeout, for_client=True)


__all__ = [
    "ServerAddress",
    "child_env",
    "find_server",
    "running_server",
    "start_background_server",
]
