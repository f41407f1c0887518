"""Clients for agent runners: :class:`AsyncClient` and the blocking :class:`Client`."""

from __future__ import annotations

from ._async import AsyncClient
from ._files import FileInfo, Transfer
from ._processes import AsyncProcess, OutputChunk, Process, ProcessInfo
from ._remote import RemoteServer
from ._sync import Client
from .result import ExecResult

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
