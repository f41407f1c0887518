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
    │   └── ModeUnavailable         the requested execution mode cannot run here
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


class ClientTimeout(StigmerError):
    """The broker did not answer in time."""
