"""Clients for agent runners: :class:`AsyncClient` and the blocking :class:`Client`.

Names are imported lazily, so that ``stigmer run`` (which drives the lean blocking transport of
:mod:`._blocking` itself) does not load asyncio and the asyncio client.
"""

from __future__ import annotations

import sys

TYPE_CHECKING = False  # not typing's: see stigmer_kernel/__init__.py
if TYPE_CHECKING:
    from typing import Any

    from ._async import AsyncClient
    from ._files import FileInfo, Transfer
    from ._processes import AsyncProcess, OutputChunk, Process, ProcessInfo
    from ._remote import RemoteServer
    from ._sync import Client
    from .result import ExecResult

_LAZY = {
    "AsyncClient": "._async",
    "AsyncProcess": "._processes",
    "Client": "._sync",
    "ExecResult": ".result",
    "FileInfo": "._files",
    "OutputChunk": "._processes",
    "Process": "._processes",
    "ProcessInfo": "._processes",
    "RemoteServer": "._remote",
    "Transfer": "._files",
}

__all__ = [
    "AsyncClient",
    "AsyncProcess",
    "Client",
    "ExecResult",
    "FileInfo",
    "OutputChunk",
    "Process",
    "ProcessInfo",
    "RemoteServer",
    "Transfer",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'stigmer_kernel.client' has no attribute {name!r}")
    full = __name__ + module
    __import__(full)  # as stigmer_kernel.__getattr__
    value = getattr(sys.modules[full], name)
    globals()[name] = value
    return value
