"""stigmer-kernel: the execution backend of AI agent runners.

Shell commands run in warm kernels (long-lived bash sessions) behind a ZeroMQ broker that speaks
the Jupyter message protocol::

    from stigmer_kernel import Client

    with Client() as c:
        r = c.execute("pip --version", kernel="build", timeout=60)
        print(r.exit_code, r.stdout)
"""

from __future__ import annotations

from ._version import __version__
from .client import AsyncClient, Client, ExecResult
from .config import Config, ExecutionMode, load_config
from .errors import (
    ClientTimeout,
    ConfigError,
    KernelError,
    ModeUnavailable,
    ProtocolError,
    RequestError,
    ServerError,
    ServerNotRunning,
    StigmerError,
)

__all__ = [
    "AsyncClient",
    "Client",
    "ClientTimeout",
    "Config",
    "ConfigError",
    "ExecResult",
    "ExecutionMode",
    "KernelError",
    "ModeUnavailable",
    "ProtocolError",
    "RequestError",
    "ServerError",
    "ServerNotRunning",
    "StigmerError",
    "__version__",
    "load_config",
]
