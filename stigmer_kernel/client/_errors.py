"""From a reply's ``ename`` to the exception the client raises: one table for every name.

A name the table does not hold (one from a newer server) raises :class:`RequestError`.
``execute`` raises only for :data:`EXECUTE_REFUSALS`; every other ``ename`` of an
execute_reply is the command's outcome, returned in ``ExecResult.ename``.
"""

from __future__ import annotations

from ..errors import (
    ChecksumMismatch,
    DirectoryNotEmpty,
    FileError,
    FileExists,
    FileNotFound,
    IsADirectory,
    KernelError,
    KernelMismatch,
    ModeUnavailable,
    NoSpace,
    NoSuchProcess,
    NotADirectory,
    PermissionDenied,
    RequestError,
)
from ..protocol import ErrorName

TYPE_CHECKING = False  # not typing's: see stigmer_kernel/__init__.py
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any

#: The exception raised for a reply with status ``error`` and each ``ename``.
EXCEPTION_FOR: dict[ErrorName, type[RequestError]] = {
    ErrorName.BAD_REQUEST: RequestError,
    ErrorName.UNKNOWN_MESSAGE_TYPE: RequestError,
    ErrorName.NO_SUCH_KERNEL: KernelError,
    ErrorName.MODE_UNAVAILABLE: ModeUnavailable,
    ErrorName.MODE_MISMATCH: KernelMismatch,
    ErrorName.OPTION_MISMATCH: KernelMismatch,
    ErrorName.RESTART_UNAVAILABLE: RequestError,
    ErrorName.KERNEL_BUSY: RequestError,
    ErrorName.TOO_MANY_KERNELS: RequestError,
    ErrorName.NOT_RUNNING: RequestError,
    ErrorName.NOT_OWNER: RequestError,
    ErrorName.STDIN_OVERFLOW: RequestError,
    ErrorName.NO_SUCH_PROCESS: NoSuchProcess,
    ErrorName.TOO_MANY_PROCESSES: RequestError,
    ErrorName.KERNEL_DIED: RequestError,
    ErrorName.KERNEL_SHUTDOWN: RequestError,
    ErrorName.KERNEL_RESTARTED: RequestError,
    ErrorName.ABORTED: RequestError,
    ErrorName.COMMAND_FAILED: RequestError,
    ErrorName.TIMEOUT: RequestError,
    ErrorName.INTERRUPTED: RequestError,
    ErrorName.FILE_NOT_FOUND: FileNotFound,
    ErrorName.IS_A_DIRECTORY: IsADirectory,
    ErrorName.NOT_A_DIRECTORY: NotADirectory,
    ErrorName.PERMISSION_DENIED: PermissionDenied,
    ErrorName.FILE_EXISTS: FileExists,
    ErrorName.DIRECTORY_NOT_EMPTY: DirectoryNotEmpty,
    ErrorName.NO_SPACE: NoSpace,
    ErrorName.CHECKSUM_MISMATCH: ChecksumMismatch,
    ErrorName.FILE_ERROR: FileError,
}

#: An execute_reply with one of these says the request was refused before a kernel ran it:
#: ``execute`` raises (the exception above) instead of returning an ``ExecResult``.
EXECUTE_REFUSALS = frozenset(
    {
        ErrorName.BAD_REQUEST,
        ErrorName.MODE_UNAVAILABLE,
        ErrorName.MODE_MISMATCH,
        ErrorName.OPTION_MISMATCH,
        ErrorName.KERNEL_BUSY,
        ErrorName.TOO_MANY_KERNELS,
        ErrorName.TOO_MANY_PROCESSES,
    }
)


def raise_for(content: Mapping[str, Any]) -> None:
    """Raise the exception for a reply's content if its status is ``error``."""
    if content.get("status") == "error":
        ename = str(content.get("ename", RequestError.__name__))
        try:
            error = EXCEPTION_FOR[ErrorName(ename)]
        except ValueError:
            error = RequestError
        raise error(str(content.get("evalue", "request failed")), ename)


def refused(content: Mapping[str, Any]) -> bool:
    """Whether an execute_reply's content says the request was refused (see above)."""
    ename = content.get("ename")
    return content.get("status") == "error" and isinstance(ename, str) and ename in EXECUTE_REFUSALS
