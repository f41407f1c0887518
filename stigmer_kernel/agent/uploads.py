"""Uploads: the ``write_open``, ``write_chunk`` and ``write_close`` file operations.

Each upload writes to a temporary file beside its target (``.NAME.XXXXXXXX.stigmer``), hashing
the chunks as they arrive in order, and renames it onto the target (``os.replace``: readers see
the old file or the new one) only once its sha256 matched, after an fsync and with its
permissions set. Any failure, an abort (``commit`` false), an upload abandoned for
:data:`UPLOAD_IDLE` or the agent's end removes the temporary file: the target keeps its old data.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
from collections.abc import Callable, Mapping
from typing import Any

from ..protocol import ErrorName
from ..protocol.constants import FILE_CHUNK_MAX
from .file_checks import (
    Job,
    Refused,
    bad,
    bool_field,
    int_field,
    permissions_field,
    refused,
)

MAX_CHUNK = FILE_CHUNK_MAX
#: An upload that gets no request for this long is abandoned: its temporary file is removed.
UPLOAD_IDLE = 60.0
#: Uploads open at once; one more is refused (each holds a file descriptor).
MAX_UPLOADS = 64
#: Bytes hashed per loop turn when an upload must be hashed from its file.
_HASH_SLICE = 8 * 1024 * 1024


class Upload:
    """A write in progress: its temporary file, what arrived, the hash of what arrived in order."""

    # A plain class, not a dataclass: an agent's start imports no dataclasses (inspect, ast).

    token: str
    target: str
    temp: str
    fd: int
    permissions: int
    used: float
    size: int  # the end of the furthest chunk written
    hashed: int  # bytes hashed: the chunks that arrived in order
    in_order: bool
    hasher: Any

    def __init__(
        self,
        token: str,
        target: str,
        temp: str,
        fd: int,
        permissions: int,
        used: float,
        size: int = 0,
        hashed: int = 0,
        in_order: bool = True,
        hasher: Any | None = None,
    ) -> None:
        self.token = token
        self.target = target
        self.temp = temp
        self.fd = fd
        self.permissions = permissions
        self.used = used
        self.size = size
        self.hashed = hashed
        self.in_order = in_order
        self.hasher = hashlib.sha256() if hasher is None else hasher


class Uploads:
    """The uploads open in one agent, by token. ``clock`` is monotonic; ``umask`` the agent's."""

    def __init__(self, clock: Callable[[], float], umask: int) -> None:
        self._clock = clock
        self._umask = umask
        self.open_ones: dict[str, Upload] = {}

    def open(self, path: str, content: Mapping[str, Any]) -> dict[str, Any]:
        permissions = permissions_field(content)
        if len(self.open_ones) >= MAX_UPLOADS:
            raise Refused(
                ErrorName.FILE_ERROR,
                f"cannot write {path}: {MAX_UPLOADS} uploads are open in this kernel — close "
                "some (write_close) or wait a minute for abandoned ones to expire",
            )
        if os.path.islink(path):  # written through: the file the link names gets the data
            path = os.path.realpath(path)
        try:
            st: os.stat_result | None = os.stat(path)
        except FileNotFoundError:
            st = None
        except OSError as exc:
            raise refused(exc, path, "write") from None
        if st is not None and stat.S_ISDIR(st.st_mode):
            raise Refused(ErrorName.IS_A_DIRECTORY, f"cannot write {path}: is a directory")
        if st is not None and not stat.S_ISREG(st.st_mode):
            raise Refused(ErrorName.FILE_ERROR, f"cannot write {path}: not a regular file")
        if st is not None and not os.access(path, os.W_OK):
            raise Refused(ErrorName.PERMISSION_DENIED, f"cannot write {path}: permission denied")
        if path.endswith("/"):
            raise Refused(ErrorName.IS_A_DIRECTORY, f"cannot write {path}: names a directory")
        if permissions is None:
            permissions = stat.S_IMODE(st.st_mode) if st else 0o666 & ~self._umask
        directory, name = os.path.split(path)
        try:
            import tempfile  # only a file upload needs it: not imported at an agent's start

            fd, temp = tempfile.mkstemp(prefix=f".{name[:200]}.", suffix=".stigmer", dir=directory)
        except OSError as exc:
            raise refused(exc, path, "write") from None
        token = os.urandom(16).hex()
        self.open_ones[token] = Upload(token, path, temp, fd, permissions, self._clock())
        return {"path": path, "token": token, "chunk": MAX_CHUNK}

    def _find(self, content: Mapping[str, Any]) -> Upload:
        token = content.get("token")
        upload = self.open_ones.get(token) if isinstance(token, str) else None
        if upload is None:
            raise Refused(
                ErrorName.FILE_ERROR,
                f"no upload with token {token!r} in this kernel: it was closed, failed, or "
                f"abandoned (no request for {UPLOAD_IDLE:g}s) — start again with write_open",
            )
        upload.used = self._clock()
        return upload

    def chunk(self, content: Mapping[str, Any]) -> dict[str, Any]:
        upload = self._find(content)
        offset = int_field(content, "offset", upload.size, 0, 2**63 - 1)
        data = content.get("data")
        if not isinstance(data, bytes) or len(data) > MAX_CHUNK:
            self.drop(upload)
            raise bad(f"'data' must be bytes, at most {MAX_CHUNK}; the upload was abandoned")
        view = memoryview(data)
        at = offset
        try:
            while view:
                written = os.pwrite(upload.fd, view, at)
                view, at = view[written:], at + written
        except OSError as exc:
            self.drop(upload)
            raise refused(
                exc, upload.target, "write", f" ({at} bytes written); the old file is untouched"
            ) from None
        if upload.in_order and offset == upload.hashed:
            upload.hasher.update(data)
            upload.hashed += len(data)
        elif data:
            upload.in_order = False  # hashed from the file at write_close
        upload.size = max(upload.size, offset + len(data))
        return {"written": upload.size}

    def close(self, content: Mapping[str, Any]) -> dict[str, Any] | Job:
        upload = self._find(content)
        if not bool_field(content, "commit", True):
            self.drop(upload)
            return {"path": upload.target, "committed": False}
        expected = content.get("sha256")
        if expected is not None and not isinstance(expected, str):
            self.drop(upload)
            raise bad(f"'sha256' must be a hex string, not {expected!r}")
        del self.open_ones[upload.token]  # no more chunks: this close owns it now
        return self._commit(upload, expected)

    def _commit(self, upload: Upload, expected: str | None) -> Job:
        try:
            if not upload.in_order or upload.hashed != upload.size:
                upload.hasher = hashlib.sha256()
                offset = 0
                while chunk := os.pread(upload.fd, _HASH_SLICE, offset):
                    upload.hasher.update(chunk)
                    offset += len(chunk)
                    yield
            digest = upload.hasher.hexdigest()
            if expected is not None and digest != expected.lower():
                raise Refused(
                    ErrorName.CHECKSUM_MISMATCH,
                    f"cannot write {upload.target}: the {upload.size} bytes received have "
                    f"sha256 {digest}, not {expected}; the old file is untouched",
                )
            os.fchmod(upload.fd, upload.permissions)
            os.fsync(upload.fd)
            os.close(upload.fd)
            upload.fd = -1
            os.replace(upload.temp, upload.target)
        except OSError as exc:
            self.drop(upload)
            raise refused(exc, upload.target, "write", "; the old file is untouched") from None
        except BaseException:
            self.drop(upload)
            raise
        with contextlib.suppress(OSError):  # the rename itself made durable
            dir_fd = os.open(os.path.dirname(upload.target), os.O_RDONLY | os.O_CLOEXEC)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        return {"path": upload.target, "size": upload.size, "sha256": digest, "committed": True}

    def drop(self, upload: Upload) -> None:
        """An upload ends without its rename: the temporary file goes."""
        self.open_ones.pop(upload.token, None)
        if upload.fd >= 0:
            with contextlib.suppress(OSError):
                os.close(upload.fd)
            upload.fd = -1
        with contextlib.suppress(OSError):
            os.unlink(upload.temp)

    def expire(self) -> None:
        """Remove the uploads that got no request for :data:`UPLOAD_IDLE`."""
        now = self._clock()
        for upload in [u for u in self.open_ones.values() if now - u.used > UPLOAD_IDLE]:
            self.drop(upload)

    def close_all(self) -> None:
        for upload in list(self.open_ones.values()):
            self.drop(upload)
