"""Every exception stigmer-kernel raises on purpose.

Hierarchy::

    StigmerError                    root: catch this to catch everything below
    ├── ConfigError                 a setting has a bad value or the config file is unreadable
    ├── RuntimeDirError             the runtime directory is unusable (owner, mode, path length)
    ├── CurveKeyError               a CurveZMQ key file is missing, malformed or open to others
    ├── ServerError                 about the broker process itself
    │   ├── ServerNotRunning        no server answers for this runtime directory
    │   ├── ServerAlreadyRunning    another server holds this runtime directory's lock
    │   └── ServerStartError        a background server did not come up
    ├── ProtocolError               a message could not be built, parsed or verified
    │   └── SignatureError          missing, wrong or replayed HMAC signature
    ├── RequestError                the broker answered a request with an error
    │   ├── KernelError             the kernel could not serve it (died, expired, shut down)
    │   ├── KernelMismatch          the kernel exists with another mode or options than asked
    │   ├── NoSuchProcess           no background process of that id in the kernel
    │   ├── ModeUnavailable         the requested execution mode cannot run here
    │   └── FileError               a file operation failed in the kernel's world
    │       ├── FileNotFound        no such file or directory
    │       ├── IsADirectory        a directory where a file was meant
    │       ├── NotADirectory       a file where a directory was meant
    │       ├── PermissionDenied    the kernel's user may not do it
    │       ├── FileExists          something is already there
    │       ├── DirectoryNotEmpty   a directory removed without recursive=True
    │       ├── NoSpace             the disk filled up while writing
    │       └── ChecksumMismatch    what arrived is not what was sent
    └── ClientTimeout               no answer from the broker in the allowed time

Messages say what happened and what to do next.
"""

from __future__ import annotations


class StigmerError(Exception):
    """Root of every error raised by stigmer-kernel."""


class ConfigError(StigmerError):
    """A configuration value is invalid."""


class RuntimeDirError(StigmerError):
    """The runtime directory cannot be used safely."""


class CurveKeyError(StigmerError):
    """A CurveZMQ key file cannot be used (stigmer_kernel/curve.py)."""


class ServerError(StigmerError):
    """Something about the broker process."""


class ServerNotRunning(ServerError):
    """No broker is serving the runtime directory."""


class ServerRestarted(ServerError):
    """The broker restarted while a request was in flight: it may or may not have run (a read,
    such as a background process's output, can simply be asked again)."""


class ServerAlreadyRunning(ServerError):
    """Another broker already holds the runtime directory."""


class ServerStartError(ServerError):
    """A broker started in the background did not become ready."""


class ProtocolError(StigmerError):
    """A message is malformed."""


class SignatureError(ProtocolError):
    """A message's signature is missing, wrong or was seen before."""


class RequestError(StigmerError):
    """The broker answered a request with an error.

    ``ename`` is a short machine-readable name (for example ``KernelDied``), one of
    ``stigmer_kernel.protocol.ErrorName`` when the broker sent it; a plain string either way.
    """

    def __init__(self, message: str, ename: str = "RequestError") -> None:
        super().__init__(message)
        self.ename = str(ename)


class KernelError(RequestError):
    """The kernel could not serve the request."""


class KernelMismatch(RequestError):
    """An existing kernel was asked for with a mode or an option (cwd, sandbox image,
    requirements, workspace, ttl) it was not created with: ``ModeMismatch`` or
    ``OptionMismatch`` on the wire. The message says how to restart or remove it."""


class NoSuchProcess(RequestError):
    """A process handle names no background process of its kernel (a kernel that was
    restarted or ended has none of its earlier processes)."""


class ModeUnavailable(RequestError):
    """The requested execution mode is not available on this server."""


class FileError(RequestError):
    """A file operation (``read_file``, ``upload``...) failed in the kernel's world; the
    message names the path. A failed write leaves the old file as it was."""


class FileNotFound(FileError):
    """No such file or directory (in the kernel's world, or locally for a transfer)."""


class IsADirectory(FileError):
    """A directory where a file was meant."""


class NotADirectory(FileError):
    """A file (or nothing) where a directory was meant."""


class PermissionDenied(FileError):
    """The kernel's user may not do that (or the file system is read-only)."""


class FileExists(FileError):
    """Something is already at that path."""


class DirectoryNotEmpty(FileError):
    """A directory that holds files, removed without ``recursive=True``."""


class NoSpace(FileError):
    """The disk (a quota, a sandbox's tmpfs) filled up during a write."""


class ChecksumMismatch(FileError):
    """The sha256 of what arrived differs from that of what was sent."""


class ClientTimeout(StigmerError):
    """The broker did not answer in time."""
