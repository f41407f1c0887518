"""The runtime directory: where a server keeps its sockets, key, lock, info and log.

Layout (all owner-only; docs/architecture.md, "The runtime directory", says who makes what)::

    RUNTIME_DIR/                0700, must be owned by you and be new, empty or stigmer's
                                (:meth:`RuntimeDir.ensure` checks)
        .stigmer-runtime        0600, marks a directory stigmer made
        server.lock             0600, flock held by the running server for its whole life
        server.json             0600, pid, version, endpoints of the running server
        key                     0600, HMAC key of this server's clients (new at every start
                                unless a crashed server's key is still there)
        server.log              0600, log of a server started in the background
        clients.sock            0600, ipc ROUTER for clients
        images.json             images known to run the agent (sandbox)
        pools.json, pools.prom  0600, the agent pools' figures (broker/pools.py)
        agents/                 0700, mounted read-only at /run/stigmer in sandbox containers;
                                0755 once a root server started a sandbox running as another
                                uid (reached only through that mount: RUNTIME_DIR stays 0700)
            agents.sock         0600, ipc ROUTER for execution agents; a root server gives it
                                to the sandbox uid
        kernels/                0700, emptied at a clean stop
            <name>-<8 hex>/     0700, one kernel incarnation's agent files (bashrc, exit.sh,
                                late.sh, state.sh and traps.sh briefly, stdin, stdin.fifo,
                                agent.log; a sandbox's kernel_id, and its key until read);
                                mounted at /run/stigmer-kernel in its container; a root
                                server gives a sandbox's, files and all, to the sandbox uid
        records/                0700, never mounted: <kernel_id>.json (0600), re-adoption records
        curve/                  0700, kept across restarts: server.key, server.key_secret (0600)
            authorized/         0700, public keys of the TCP peers allowed in (NAME.key)
        jupyter/                0700, recreated empty at every server start
            kernel-<name>.json  0600, connection file of a kernel with Jupyter channels
            <6 hex>-1 .. -5     0600, ipc sockets of a kernel's Jupyter channels (the default)

Clients find their server through this directory alone: ``STIGMER_RUNTIME_DIR`` picks it.
"""

from __future__ import annotations

import _json  # json's C scanner: see _json_loads
import fcntl
import os
import stat

from .errors import RuntimeDirError

TYPE_CHECKING = False  # not typing's: see stigmer_kernel/__init__.py
if TYPE_CHECKING:
    from pathlib import Path
    from typing import Any

#: Longest path an ipc:// endpoint may have (sun_path is 108 bytes with the NUL).
MAX_IPC_PATH = 107

#: Written in every runtime directory stigmer made: only such a directory (or a new or empty
#: one) is taken, since a server empties parts of it and owns its mode and ``key``.
MARKER = ".stigmer-runtime"

#: What a runtime directory of a version without :data:`MARKER` could hold.
_OURS = {
    "server.lock", "server.json", "key", "server.log", "clients.sock", "images.json",
    "sandbox-agent.port", "agents", "kernels", "records", "curve", "jupyter",
    "key.tmp", "server.tmp", "images.tmp",  # left by a crash mid-write
}  # fmt: skip


class RuntimeDir:
    """A runtime directory's paths and files; immutable, equal to another of the same path.

    Not a dataclass, and given as a string it makes no ``Path`` until one is asked for: a plain
    ``stigmer run`` finds its server through one (:meth:`server_running`, :meth:`read_info`,
    :meth:`read_key` open files by name) and imports neither dataclasses nor pathlib
    (docs/performance.md). A string must be a path as ``str(Path(...))`` writes it.
    """

    __slots__ = ("_given", "_text")

    _given: Path | str
    _text: str

    def __init__(self, path: Path | str) -> None:
        object.__setattr__(self, "_given", path)
        object.__setattr__(self, "_text", str(path))

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"cannot assign to field {name!r}: a RuntimeDir is immutable")

    @property
    def path(self) -> Path:
        from pathlib import Path

        return self._given if isinstance(self._given, Path) else Path(self._given)

    def _file(self, name: str) -> str:
        """The path of ``name`` in this directory, as ``str(self.path / name)``."""
        return f"{self._text.rstrip('/')}/{name}"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, RuntimeDir):
            return NotImplemented
        return self._text == other._text

    def __hash__(self) -> int:
        return hash(self._text)

    def __repr__(self) -> str:
        return f"RuntimeDir(path={self.path!r})"

    @property
    def lock_path(self) -> Path:
        return self.path / "server.lock"

    @property
    def info_path(self) -> Path:
        return self.path / "server.json"

    @property
    def key_path(self) -> Path:
        return self.path / "key"

    @property
    def log_path(self) -> Path:
        return self.path / "server.log"

    @property
    def agents_dir(self) -> Path:
        return self.path / "agents"

    @property
    def client_socket(self) -> Path:
        return self.path / "clients.sock"

    @property
    def agent_socket(self) -> Path:
        return self.agents_dir / "agents.sock"

    @property
    def client_endpoint(self) -> str:
        return f"ipc://{self.client_socket}"

    @property
    def agent_endpoint(self) -> str:
        return f"ipc://{self.agent_socket}"

    # -- creation and checks ------------------------------------------------------------------
    def ensure(self) -> None:
        """Create the directory tree owner-only, or refuse one that is not ours."""
        self._refuse_foreign()
        longest = max(len(str(self.client_socket)), len(str(self.agent_socket)))
        if longest > MAX_IPC_PATH:  # checked before anything is made
            raise RuntimeDirError(
                f"runtime directory {self.path} is too long for ipc sockets "
                f"({longest} > {MAX_IPC_PATH} characters) — choose a shorter STIGMER_RUNTIME_DIR"
            )
        for directory in (self.path, self.agents_dir):
            try:
                directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            except OSError as exc:
                raise RuntimeDirError(
                    f"cannot create runtime directory {directory}: {exc.strerror} — "
                    "set STIGMER_RUNTIME_DIR to a writable directory"
                ) from None
            info = directory.lstat()
            if not stat.S_ISDIR(info.st_mode):
                raise RuntimeDirError(f"runtime path {directory} is not a directory")
            if info.st_uid != os.getuid():
                raise RuntimeDirError(
                    f"runtime directory {directory} belongs to uid {info.st_uid}, not to you — "
                    "set STIGMER_RUNTIME_DIR to a directory of your own"
                )
            if info.st_mode & 0o077:
                os.chmod(directory, 0o700)
        marker = self.path / MARKER
        if not marker.exists():
            marker.write_text("a stigmer-kernel runtime directory; see docs/architecture.md\n")
            os.chmod(marker, 0o600)

    def _refuse_foreign(self) -> None:
        """Refuse an existing directory that holds anything but a stigmer server's files."""
        if not self.path.is_absolute():
            raise RuntimeDirError(
                f"runtime directory {self.path} is relative — give STIGMER_RUNTIME_DIR as an "
                "absolute path"
            )
        try:
            entries = set(os.listdir(self.path))
        except (FileNotFoundError, NotADirectoryError):
            return  # made below (or refused there as not a directory)
        except OSError as exc:
            raise RuntimeDirError(
                f"cannot read runtime directory {self.path}: {exc.strerror} — set "
                "STIGMER_RUNTIME_DIR to a directory of your own"
            ) from None
        if MARKER in entries:
            return
        foreign = sorted(e for e in entries if e not in _OURS)
        if foreign:
            shown = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
            raise RuntimeDirError(
                f"{self.path} is not a stigmer runtime directory (it holds {shown}) and a "
                "server would take it over — set STIGMER_RUNTIME_DIR to a new or empty directory"
            )

    def write_key(self, key: bytes) -> None:
        """Store a new server key, readable by the owner only."""
        import contextlib  # (what only a server does imports here: see read_info)

        tmp = self.key_path.with_suffix(".tmp")
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(key)
        os.replace(tmp, self.key_path)

    def read_key(self) -> bytes:
        key_path = self._file("key")
        try:
            info = os.stat(key_path)
            if info.st_mode & 0o077:
                raise RuntimeDirError(f"key file {key_path} is readable by others; refusing it")
            with open(key_path, "rb") as handle:
                return handle.read().strip()
        except FileNotFoundError:
            raise RuntimeDirError(f"no key file in {self._text}: is a server running?") from None

    def write_info(self, info: dict[str, Any]) -> None:
        import json

        tmp = self.info_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(info, indent=2), encoding="utf-8")
        os.chmod(tmp, 0o600)
        os.replace(tmp, self.info_path)

    def read_info(self) -> dict[str, Any] | None:
        """server.json's map, or None (no such file, or not a JSON map). Read by every client,
        a plain ``stigmer run`` included: neither :mod:`json` nor :mod:`contextlib` is
        imported for it (see :func:`_json_loads`)."""
        try:
            with open(self._file("server.json"), encoding="utf-8") as handle:
                data = _json_loads(handle.read())
        except (FileNotFoundError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def lock_holder(self) -> int | None:
        """The pid of the process holding this directory's server lock, as the kernel's lock
        table says (Linux ``/proc/locks``), or None if it cannot be told: the only pid that may
        be signalled as this directory's server."""
        try:
            info = os.stat(self.lock_path)
            with open("/proc/locks", encoding="ascii", errors="replace") as handle:
                table = handle.read().splitlines()
        except OSError:
            return None
        device = f"{os.major(info.st_dev):02x}:{os.minor(info.st_dev):02x}:{info.st_ino}"
        for line in table:
            fields = line.split()
            if "FLOCK" in fields and device in fields:
                try:
                    return int(fields[fields.index(device) - 1])
                except (ValueError, IndexError):
                    continue
        return None

    def server_running(self) -> bool:
        """True while some process holds this directory's server lock."""
        try:
            fd = os.open(self._file("server.lock"), os.O_RDONLY)
        except FileNotFoundError:
            return False
        except OSError:
            return True  # someone else's directory: assume its server lives, touch nothing
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        else:
            fcntl.flock(fd, fcntl.LOCK_UN)
            return False
        finally:
            os.close(fd)


_CONSTANTS = {"-Infinity": float("-inf"), "Infinity": float("inf"), "NaN": float("nan")}


class _Decoding:
    """What json's C scanner reads of a ``json.JSONDecoder``: the defaults of ``json.loads``."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    parse_constant = _CONSTANTS.__getitem__


_scan = _json.make_scanner(_Decoding)  # type: ignore[arg-type]  # the attributes it reads
#: JSON's whitespace (what json.decoder's pattern skips around a document).
_WHITESPACE = " \t\n\r"


def _json_loads(text: str) -> Any:
    """``json.loads(text)`` (ValueError where it raises one), on json's own C scanner: without
    the import of :mod:`json`, which imports :mod:`re` and compiles its patterns, a tenth of a
    plain ``stigmer run``'s start. tests/test_runtime_json.py holds the two to the same."""
    start = len(text) - len(text.lstrip(_WHITESPACE))
    try:
        value, end = _scan(text, start)
    except StopIteration:
        raise ValueError("not a JSON document") from None
    if text[end:].strip(_WHITESPACE):
        raise ValueError("more than one JSON document")
    return value


class ServerLock:
    """The exclusive flock a server holds on its runtime directory for its whole life."""

    def __init__(self, runtime: RuntimeDir) -> None:
        self.runtime = runtime
        self._fd: int | None = None

    def acquire(self) -> bool:
        """Take the lock; False if another process holds it."""
        fd = os.open(self.runtime.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._fd = fd
        return True

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
