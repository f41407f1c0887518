"""The wire protocol: message types, the Jupyter envelope, signing and serialization.

Names are imported lazily (as the package's own, see stigmer_kernel/__init__.py): a plain
``stigmer run`` needs :mod:`.session` but not the enums of :mod:`.enums`, whose import and
class building would be a fifth of its start.
"""

from __future__ import annotations

import sys

TYPE_CHECKING = False  # not typing's: see stigmer_kernel/__init__.py
if TYPE_CHECKING:
    from typing import Any

    from .constants import DELIM, PROTOCOL_VERSION
    from .enums import ErrorName, ExecStatus, KernelEvent, KernelState, MsgType
    from .session import Message, Session, Signer, new_key, split_ids

_LAZY = {
    "DELIM": ".constants",
    "PROTOCOL_VERSION": ".constants",
    "ErrorName": ".enums",
    "ExecStatus": ".enums",
    "KernelEvent": ".enums",
    "KernelState": ".enums",
    "MsgType": ".enums",
    "Message": ".session",
    "Session": ".session",
    "Signer": ".session",
    "new_key": ".session",
    "split_ids": ".session",
}

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


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'stigmer_kernel.protocol' has no attribute {name!r}")
    full = __name__ + module
    __import__(full)  # not importlib.import_module: see stigmer_kernel/__init__.py
    value = getattr(sys.modules[full], name)
    globals()[name] = value
    return value
