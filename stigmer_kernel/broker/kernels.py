"""The kernel registry: which kernels exist, who serves them, who uses them.

A *kernel* is a named, warm shell session. Its *incarnation* (``kernel.id``) changes each time a
fresh agent is started for it (after the previous one died); the name stays. Each incarnation has
its own signing key, so an agent can only ever speak for the kernel it was started for.
"""

from __future__ import annotations

import collections
import os
import re
import time
from dataclasses import dataclass, field
from typing import Any

from ..protocol import KernelState, Session
from ..provisioners import AgentHandle

#: Kernel names: safe as file names and labels, short enough to type.
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


@dataclass
class Pending:
    """A request forwarded (or about to be forwarded) to a kernel's agent."""

    client: bytes
    msg_id: str
    header: dict[str, Any]  # the request's header, parent of any reply the broker makes
    frames: list[bytes]  # message frames after the delimiter, signed for the agent
    forwarded: bool = False
    lost: int = 0  # output messages dropped because the client was not reading


@dataclass
class Kernel:
    name: str
    mode: str
    ttl: float
    cwd: str
    id: str = ""
    state: KernelState = KernelState.STARTING
    session: Session | None = None  # signs and verifies traffic with this incarnation's agent
    handle: AgentHandle | None = None
    agent_identity: bytes | None = None
    agent_pid: int | None = None
    shell_pgid: int | None = None
    started_at: float = 0.0
    created_wall: float = field(default_factory=time.time)
    last_activity: float = field(default_factory=time.monotonic)
    last_beat: float = field(default_factory=time.monotonic)
    pending: collections.OrderedDict[str, Pending] = field(default_factory=collections.OrderedDict)
    clients: dict[bytes, float] = field(default_factory=dict)
    restarts: int = 0
    executions: int = 0
    death_reason: str | None = None
    notices: list[dict[str, Any]] = field(default_factory=list)  # for the next requester

    def new_incarnation(self, key: bytes) -> None:
        self.id = f"{self.name}-{os.urandom(4).hex()}"
        self.session = Session(key)
        self.state = KernelState.STARTING
        self.agent_identity = None
        self.agent_pid = None
        self.shell_pgid = None
        self.handle = None
        self.started_at = time.monotonic()
        self.last_beat = time.monotonic()

    @property
    def busy(self) -> bool:
        return bool(self.pending)

    def refresh_state(self) -> None:
        if self.state in (KernelState.IDLE, KernelState.BUSY):
            self.state = KernelState.BUSY if self.pending else KernelState.IDLE

    def to_json(self, now: float) -> dict[str, Any]:
        info: dict[str, Any] = {
            "name": self.name,
            "id": self.id,
            "mode": self.mode,
            "state": self.state.value,
            "idle_seconds": 0.0 if self.busy else round(now - self.last_activity, 3),
            "ttl": self.ttl,
            "clients": len(self.clients),
            "pid": self.agent_pid,
            "cwd": self.cwd,
            "executions": self.executions,
            "pending": len(self.pending),
            "restarts": self.restarts,
            "created": self.created_wall,
        }
        if self.handle is not None:
            for key, value in self.handle.describe().items():
                info.setdefault(key, value)
                if info[key] is None:
                    info[key] = value
        if self.death_reason:
            info["death_reason"] = self.death_reason
        return info


class Registry:
    """Kernels by name and by incarnation id, plus a short memory of removed ones."""

    def __init__(self) -> None:
        self.by_name: dict[str, Kernel] = {}
        self.by_id: dict[str, Kernel] = {}
        self.gone: collections.OrderedDict[str, dict[str, Any]] = collections.OrderedDict()

    def __iter__(self) -> Any:
        return iter(list(self.by_name.values()))

    def __len__(self) -> int:
        return len(self.by_name)

    def add(self, kernel: Kernel) -> None:
        self.by_name[kernel.name] = kernel
        self.gone.pop(kernel.name, None)

    def index(self, kernel: Kernel) -> None:
        self.by_id[kernel.id] = kernel

    def unindex(self, kernel: Kernel) -> None:
        self.by_id.pop(kernel.id, None)

    def remove(self, kernel: Kernel, event: dict[str, Any]) -> None:
        self.by_name.pop(kernel.name, None)
        self.unindex(kernel)
        self.gone[kernel.name] = event
        while len(self.gone) > 1000:
            self.gone.popitem(last=False)
