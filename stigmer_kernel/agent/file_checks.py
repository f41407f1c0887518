"""What the file operations share (agent/files.py, agent/uploads.py): the :class:`Refused`
error and its names for each errno, and the checks of a request's fields."""

from __future__ import annotations

import errno
from collections.abc import Generator, Mapping
from typing import Any

from ..protocol import ErrorName

#: A job: an operation that takes several loop turns. It yields after each slice of work and
#: returns its reply's fields (raising :class:`Refused` to fail).
Job = Generator[None, None, dict[str, Any]]


class Refused(Exception):
    """An operation that cannot be done: its error name and a message that says why."""

    def __init__(self, ename: ErrorName, message: str) -> None:
        super().__init__(message)
        self.ename = ename


#: What an OSError's errno means on the wire, and how to say it.
_ERRNO: dict[int, tuple[ErrorName, str]] = {
    errno.ENOENT: (ErrorName.FILE_NOT_FOUND, "no such file or directory"),
    errno.EISDIR: (ErrorName.IS_A_DIRECTORY, "is a directory"),
    errno.ENOTDIR: (ErrorName.NOT_A_DIRECTORY, "not a directory"),
    errno.EACCES: (ErrorName.PERMISSION_DENIED, "permission denied"),
    errno.EPERM: (ErrorName.PERMISSION_DENIED, "operation not permitted"),
    errno.EROFS: (ErrorName.PERMISSION_DENIED, "read-only file system"),
    errno.EEXIST: (ErrorName.FILE_EXISTS, "file exists"),
    errno.ENOTEMPTY: (ErrorName.DIRECTORY_NOT_EMPTY, "directory not empty"),
    errno.ENOSPC: (ErrorName.NO_SPACE, "no space left on device"),
    errno.EDQUOT: (ErrorName.NO_SPACE, "disk quota exceeded"),
}


def refused(exc: OSError, path: str, doing: str, hint: str = "") -> Refused:
    """The :class:`Refused` for an OSError met while ``doing`` something to ``path``."""
    ename, text = _ERRNO.get(exc.errno or 0, (ErrorName.FILE_ERROR, exc.strerror or str(exc)))
    return Refused(ename, f"cannot {doing} {path}: {text}{hint}")


# -- checking a request's fields ------------------------------------------------------------------
def bad(message: str) -> Refused:
    return Refused(ErrorName.BAD_REQUEST, message)


def int_field(content: Mapping[str, Any], name: str, default: int, low: int, high: int) -> int:
    value = content.get(name, default)
    if value is None:
        return default
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise bad(f"'{name}' must be an integer from {low} to {high}, not {value!r}")
    return value


def bool_field(content: Mapping[str, Any], name: str, default: bool = False) -> bool:
    value = content.get(name, default)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise bad(f"'{name}' must be true or false, not {value!r}")
    return value


def str_field(content: Mapping[str, Any], name: str) -> str:
    value = content.get(name)
    if not isinstance(value, str) or not value:
        raise bad(f"'{name}' must be a non-empty string, not {value!r}")
    return value


def permissions_field(content: Mapping[str, Any]) -> int | None:
    if content.get("permissions") is None:
        return None
    return int_field(content, "permissions", 0, 0, 0o7777)


def error_reply(exc: Refused) -> dict[str, Any]:
    return {"status": "error", "ename": exc.ename.value, "evalue": str(exc)}
