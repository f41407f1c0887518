"""What the broker's parts may know of each other: narrow interfaces, no implementations.

The core (``model``, ``scheduler``, ``creation``, ``lifecycle``, ``liveness``,
``auto_router``) imports no socket code; it
speaks to agents through an :class:`AgentLink` (``agents.py``) and tells clients through
:class:`Announcer` (the native front ends, and the Jupyter channels' closing). Adapters (front
ends, the agent endpoint, the pool, records) are handed a :class:`Hub`: the parts they use,
not the wiring class (``server.py``), which nothing imports back.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from ..protocol import KernelEvent, Message

if TYPE_CHECKING:
    import asyncio

    from ..config import Config
    from ..curve import ClientKeys
    from ..protocol import Session
    from ..runtime import RuntimeDir
    from .agents import AgentEndpoint
    from .connections import ConnectionGuard
    from .creation import Creation
    from .jupyter import JupyterFrontend
    from .lifecycle import Lifecycle
    from .model import Kernel, Pending, Registry
    from .pools import Pools
    from .reactor import Reactor
    from .remote import RemoteEndpoints
    from .scheduler import Scheduler


class AgentLink(Protocol):
    """How the core reaches a kernel's agent."""

    def forward(self, kernel: Kernel, pending: Pending) -> bool:
        """Send a request; False if the agent's socket cannot reach it at all (it stays
        queued)."""

    def interrupt(self, kernel: Kernel, parent: Message | None) -> None: ...

    def input_reply(self, kernel: Kernel, value: str, parent: Message) -> None: ...

    def shutdown(self, kernel: Kernel) -> None:
        """Ask the agent to end (agent_shutdown)."""

    def welcome(self, kernel: Kernel, msg: Message) -> None:
        """Answer an agent's registration."""

    def placement(self, kernel: Kernel) -> tuple[str, ClientKeys | None, Any]:
        """Where a new agent of ``kernel`` dials: (endpoint, its CurveZMQ keys or None, the
        broker socket it will speak on, None for the ipc agent socket)."""

    def start_hint(self, kernel: Kernel) -> str:
        """Words to add when ``kernel``'s agent never registered ('' if none)."""

    def retired(self, kernel_id: str) -> None:
        """An incarnation ended: what the link kept for it goes."""


class Announcer(Protocol):
    """Who hears of kernels besides the requests' own clients."""

    def kernel_event(self, kernel: Kernel, event: KernelEvent, reason: str, **kw: Any) -> None:
        """Tell the native clients attached to ``kernel``."""

    def removed(self, kernel: Kernel) -> None:
        """``kernel`` left the registry: its Jupyter channels close."""


class Records(Protocol):
    """Re-adoption records of kernel incarnations (``adoption.py``)."""

    def save(self, kernel: Kernel) -> None: ...

    def forget(self, kernel_id: str) -> None: ...


class Hub(Protocol):
    """What the adapters around the core use (the wiring class provides it)."""

    config: Config
    runtime: RuntimeDir
    registry: Registry
    reactor: Reactor
    connections: ConnectionGuard
    scheduler: Scheduler
    lifecycle: Lifecycle
    creation: Creation
    agents: AgentEndpoint
    remote: RemoteEndpoints
    pools: Pools
    jupyter: JupyterFrontend
    stats: dict[str, int]
    key: bytes
    started_wall: float
    loop: asyncio.AbstractEventLoop | None
    ctx: Any  # the zmq.Context

    @property
    def clients(self) -> Session: ...

    @property
    def records(self) -> Records: ...

    def request_stop(self) -> None: ...

    def client_gone(self, client: bytes, sock: Any = None) -> None: ...
