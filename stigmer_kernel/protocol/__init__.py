"""The wire protocol: message types, the Jupyter envelope, signing and serialization."""

from __future__ import annotations

from .constants import (
    DELIM,
    PROTOCOL_VERSION,
    ErrorName,
    ExecStatus,
    KernelEvent,
    KernelState,
    MsgType,
)
from .session import Message, Session, Signer, new_key, split_ids

__all__ = [
    "DELIM",
    "PROTOCOL_VERSION",
    "ErrorName",
    "ExecStatus",
    "KernelEvent",
    "KernelState",
    "Message",
    "MsgType",
    "Session",
    "Signer",
    "new_key",
    "split_ids",
]
