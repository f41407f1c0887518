"""stigmer-kernel: the execution backend of AI agent runners.

Shell commands run in warm kernels (long-lived bash sessions) behind a ZeroMQ broker that speaks
the Jupyter message protocol::

    from stigmer_kernel import Client

    with Client() as c:
        r = c.execute("pip --version", kernel="build", timeout=60)
        print(r.exit_code, r.stdout)

Names are imported lazily, so an execution agent (``python -m stigmer_kernel.agent``) does not
pay for the client and asyncio machinery it never uses.
"""

from __future__ import annotations

import sys

from ._version import __version__

#: Not typing's, whose import would cost every ``stigmer`` command (mypy takes any
#: ``TYPE_CHECKING`` as true); the same in each module a plain ``stigmer run`` loads.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from .client import AsyncClient, Client, ExecResult
    from .config import Config, ExecutionMode, load_config
    from .errors import (
        ChecksumMismatch,
        ClientTimeout,
        ConfigError,
        DirectoryNotEmpty,
        FileError,
        FileExists,
        FileNotFound,
        IsADirectory,
        KernelError,
        ModeUnavailable,
        NoSpace,
        NoSuchProcess,
        NotADirectory,
        PermissionDenied,
        ProtocolError,
        RequestError,
        ServerError,
        ServerNotRunning,
        ServerRestarted,
        StigmerError,
    )

_LAZY = {
    "AsyncClient": ".client",
    "Client": ".client",
    "ExecResult": ".client",
    "Config": ".config",
    "ExecutionMode": ".config",
    "load_config": ".config",
    "ClientTimeout": ".errors",
    "ConfigError": ".errors",
    "KernelError": ".errors",
    "ModeUnavailable": ".errors",
    "NoSuchProcess": ".errors",
    "ProtocolError": ".errors",
    "RequestError": ".errors",
    "ServerError": ".errors",
    "ServerNotRunning": ".errors",
    "ServerRestarted": ".errors",
    "StigmerError": ".errors",
    "ChecksumMismatch": ".errors",
    "DirectoryNotEmpty": ".errors",
    "FileError": ".errors",
    "FileExists": ".errors",
    "FileNotFound": ".errors",
    "IsADirectory": ".errors",
    "NoSpace": ".errors",
    "NotADirectory": ".errors",
    "PermissionDenied": ".errors",
}

__all__ = [
    "AsyncClient",
    "ChecksumMismatch",
    "Client",
    "ClientTimeout",
    "Config",
    "ConfigError",
    "DirectoryNotEmpty",
    "ExecResult",
    "ExecutionMode",
    "FileError",
    "FileExists",
    "FileNotFound",
    "IsADirectory",
    "KernelError",
    "ModeUnavailable",
    "NoSpace",
    "NoSuchProcess",
    "NotADirectory",
    "PermissionDenied",
    "ProtocolError",
    "RequestError",
    "ServerError",
    "ServerNotRunning",
    "ServerRestarted",
    "StigmerError",
    "__version__",
    "load_config",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'stigmer_kernel' has no attribute {name!r}")
    full = __name__ + module
    __import__(full)  # not importlib.import_module: importing importlib costs one more module
    value = getattr(sys.modules[full], name)
    globals()[name] = value
    return value
