"""File operations in the kernel's world: the agent's side of ``file_request``.

The agent hands each request's content to :meth:`Files.handle`; replies go out through the
``reply`` callback it was given (content, parent). Paths are the kernel's: relative ones are
resolved against bash's current directory (``/proc/PID/cwd``, so a ``cd`` counts at once, even
inside a running command), a leading ``~`` is the agent's home, and everything happens with the
agent's own uid, which is the kernel's (in a sandbox, the sandbox uid, in its filesystem).

Every operation runs on the agent's loop, so none takes long: a read or a write moves one chunk
of at most :data:`MAX_CHUNK` bytes, and what must touch a whole file or tree (``sha256``, a
recursive ``remove``, checking an upload that arrived out of order) is a job that does a slice
of work per loop turn (:meth:`Files.tick`) while other requests are served. An upload is
written to a temporary file beside its target and renamed onto it only once its checksum
matched, so a failed or abandoned one leaves the old file as it was (agent/uploads.py). No
zmq here.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import hashlib
import os
import stat
import time
from collections.abc import Callable, Mapping
from typing import Any

from ..protocol import ErrorName
from ..protocol.constants import FILE_CHUNK_MAX
from .file_checks import (
    Job,
    Refused,
    bad,
    bool_field,
    error_reply,
    int_field,
    permissions_field,
    refused,
    str_field,
)
from .uploads import Uploads

#: Bytes of ``data`` in one read reply or write_chunk request, at most. With its envelope
#: (< 1 KiB) it fits the agent sockets' frame limit (16 MiB, broker/connections.py
#: AGENT_LIMITS) and the native clients' (``max_message_bytes``, 32 MiB) many times over.
MAX_CHUNK = FILE_CHUNK_MAX
#: Entries in one ``list`` reply, at most (the rest: ask again with ``after``).
MAX_ENTRIES = 10000
#: Bytes a job hashes, or entries it removes, per loop turn.
_HASH_SLICE = 8 * 1024 * 1024
_REMOVE_SLICE = 256

Reply = Callable[[dict[str, Any], Any], None]


def shell_cwd(pid: int, fallback: str) -> str:
    """bash's current directory (``pid`` is bash's), else ``fallback`` (its last reported)."""
    if pid > 0:
        with contextlib.suppress(OSError):
            cwd = os.readlink(f"/proc/{pid}/cwd")
            if os.path.isabs(cwd) and not cwd.endswith(" (deleted)"):
                return cwd
    return fallback


def _umask() -> int:
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return 0o022


def _kind(mode: int) -> str:
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISDIR(mode):
        return "dir"
    if stat.S_ISLNK(mode):
        return "symlink"
    return "other"


def _info(name: str, st: os.stat_result) -> dict[str, Any]:
    return {
        "name": name,
        "type": _kind(st.st_mode),
        "size": st.st_size,
        "mode": stat.S_IMODE(st.st_mode),
        "mtime": st.st_mtime,
    }


class Files:
    """The file operations of one agent: the open uploads and the jobs that take several turns.

    ``cwd()`` gives the directory relative paths are resolved against; ``clock`` is monotonic
    (a test can pass its own)."""

    def __init__(
        self,
        reply: Reply,
        cwd: Callable[[], str],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._reply = reply
        self._cwd = cwd
        self._clock = clock
        self._umask = _umask()
        self.uploads = Uploads(clock, self._umask)
        self._jobs: collections.deque[tuple[Any, Job]] = collections.deque()
        self._ops: dict[str, Callable[[Mapping[str, Any]], dict[str, Any] | Job]] = {
            "stat": self._stat,
            "list": self._list,
            "read": self._read,
            "write_open": lambda content: self.uploads.open(self._path(content), content),
            "write_chunk": self.uploads.chunk,
            "write_close": self.uploads.close,
            "remove": self._remove,
            "mkdir": self._mkdir,
            "sha256": self._sha256,
        }

    @property
    def busy(self) -> bool:
        """A job has work left: the agent's loop should come back at once."""
        return bool(self._jobs)

    def handle(self, content: Mapping[str, Any], parent: Any) -> None:
        """Do one file_request and reply (a job replies when its last slice is done)."""
        op = content.get("op")
        handler = self._ops.get(op) if isinstance(op, str) else None
        try:
            if handler is None:
                known = ", ".join(self._ops)
                raise bad(f"unknown file operation {op!r} (known: {known})")
            result = handler(content)
        except Refused as exc:
            self._reply(error_reply(exc), parent)
            return
        if isinstance(result, dict):
            self._reply({"status": "ok", **result}, parent)
        else:
            self._jobs.append((parent, result))
            self._step()

    def tick(self) -> None:
        """One loop turn: a slice of the oldest job; abandoned uploads removed."""
        if self._jobs:
            self._step()
        self.uploads.expire()

    def close(self) -> None:
        """The agent ends: uploads not closed are removed (their targets keep their old data)."""
        self.uploads.close_all()
        for _, job in self._jobs:
            job.close()
        self._jobs.clear()

    def _step(self) -> None:
        parent, job = self._jobs[0]
        try:
            next(job)
            return
        except StopIteration as done:
            reply = {"status": "ok", **done.value}
        except Refused as exc:
            reply = error_reply(exc)
        self._jobs.popleft()
        self._reply(reply, parent)

    # -- paths --------------------------------------------------------------------------------
    def _path(self, content: Mapping[str, Any], name: str = "path") -> str:
        """The request's path, absolute in the kernel's world (not resolved further)."""
        path = str_field(content, name)
        if "\0" in path:
            raise bad(f"'{name}' must not contain a NUL character")
        if path.startswith("~"):
            path = os.path.expanduser(path)
        return os.path.join(self._cwd(), path)

    # -- operations ---------------------------------------------------------------------------
    def _stat(self, content: Mapping[str, Any]) -> dict[str, Any]:
        path = self._path(content)
        try:
            st = os.stat(path)
        except OSError as exc:
            raise refused(exc, path, "stat") from None
        return {"path": path, **_info(os.path.basename(path.rstrip("/")) or "/", st)}

    def _list(self, content: Mapping[str, Any]) -> dict[str, Any]:
        path = self._path({"path": ".", **content})
        after = content.get("after")
        if after is not None and not isinstance(after, str):
            raise bad(f"'after' must be a string, not {after!r}")
        limit = int_field(content, "limit", MAX_ENTRIES, 1, MAX_ENTRIES)
        try:
            with os.scandir(path) as scan:
                names = [e.name for e in scan if after is None or e.name > after]
        except OSError as exc:
            raise refused(exc, path, "list") from None
        names.sort()
        entries = []
        for name in names[:limit]:
            with contextlib.suppress(FileNotFoundError):  # removed meanwhile
                entries.append(_info(name, os.lstat(os.path.join(path, name))))
        for entry in entries:
            if entry["type"] == "symlink":
                with contextlib.suppress(OSError):
                    entry["target"] = os.readlink(os.path.join(path, entry["name"]))
        return {"path": path, "entries": entries, "more": len(names) > limit}

    def _open_regular(self, path: str, doing: str) -> tuple[int, os.stat_result]:
        """A descriptor of the regular file ``path`` (never blocks: a FIFO is refused)."""
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as exc:
            raise refused(exc, path, doing) from None
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            if stat.S_ISDIR(st.st_mode):
                raise Refused(ErrorName.IS_A_DIRECTORY, f"cannot {doing} {path}: is a directory")
            raise Refused(ErrorName.FILE_ERROR, f"cannot {doing} {path}: not a regular file")
        return fd, st

    def _read(self, content: Mapping[str, Any]) -> dict[str, Any]:
        path = self._path(content)
        offset = int_field(content, "offset", 0, 0, 2**63 - 1)
        length = int_field(content, "length", MAX_CHUNK, 0, MAX_CHUNK)
        fd, st = self._open_regular(path, "read")
        try:
            data = os.pread(fd, length, offset)
        except OSError as exc:
            raise refused(exc, path, "read") from None
        finally:
            os.close(fd)
        end = offset + len(data)
        eof = len(data) < length or (st.st_size > 0 and end >= st.st_size)
        reply: dict[str, Any] = {"path": path, "data": data, "size": st.st_size, "eof": eof}
        if offset == 0 and eof:  # the whole file in one read: its digest comes along
            reply["sha256"] = hashlib.sha256(data).hexdigest()
        return reply

    def _remove(self, content: Mapping[str, Any]) -> dict[str, Any] | Job:
        path = self._path(content)
        recursive = bool_field(content, "recursive")
        try:
            st = os.lstat(path)
            if not stat.S_ISDIR(st.st_mode):
                os.unlink(path)
                return {"path": path}
            if not recursive:
                os.rmdir(path)
                return {"path": path}
        except OSError as exc:
            hint = " — pass recursive to remove it and all it holds"
            raise refused(
                exc, path, "remove", hint if exc.errno == errno.ENOTEMPTY else ""
            ) from None
        return self._remove_tree(path)

    def _remove_tree(self, path: str) -> Job:
        """``rm -r``, a slice per turn; it stops at the first error (what went stays gone)."""
        done = 0
        failed: list[OSError] = []
        for top, dirs, files in os.walk(path, topdown=False, onerror=failed.append):
            if failed:
                break
            for name in files + [d for d in dirs if os.path.islink(os.path.join(top, d))]:
                where = os.path.join(top, name)
                try:
                    os.unlink(where)
                except FileNotFoundError:
                    pass
                except OSError as exc:
                    raise refused(exc, where, "remove") from None
                done += 1
                if done % _REMOVE_SLICE == 0:
                    yield
            for name in dirs:
                where = os.path.join(top, name)
                if os.path.islink(where):
                    continue
                try:
                    os.rmdir(where)
                except FileNotFoundError:
                    pass
                except OSError as exc:
                    raise refused(exc, where, "remove") from None
        if failed:
            first = failed[0]
            raise refused(first, first.filename or path, "remove") from None
        try:
            os.rmdir(path)
        except OSError as exc:
            raise refused(exc, path, "remove") from None
        return {"path": path}

    def _mkdir(self, content: Mapping[str, Any]) -> dict[str, Any]:
        path = self._path(content)
        parents = bool_field(content, "parents")
        permissions = permissions_field(content)
        mode = 0o777 if permissions is None else permissions
        try:
            if parents:
                os.makedirs(path, mode, exist_ok=True)
            else:
                os.mkdir(path, mode)
        except FileExistsError:  # makedirs: a file is there
            raise Refused(ErrorName.FILE_EXISTS, f"cannot make {path}: file exists") from None
        except OSError as exc:
            raise refused(exc, path, "make") from None
        if permissions is not None:  # exactly these, whatever the umask
            with contextlib.suppress(OSError):
                os.chmod(path, permissions)
        return {"path": path}

    def _sha256(self, content: Mapping[str, Any]) -> Job:
        path = self._path(content)
        fd, _ = self._open_regular(path, "read")
        return self._hash_file(path, fd)

    def _hash_file(self, path: str, fd: int) -> Job:
        hasher = hashlib.sha256()
        size = 0
        try:
            while chunk := os.pread(fd, _HASH_SLICE, size):
                hasher.update(chunk)
                size += len(chunk)
                yield
        except OSError as exc:
            raise refused(exc, path, "read") from None
        finally:
            os.close(fd)
        return {"path": path, "sha256": hasher.hexdigest(), "size": size}


__all__ = ["MAX_CHUNK", "Files", "Refused", "shell_cwd"]
