"""The kernel registry: which kernels exist, who serves them, who uses them.

A *kernel* is a named, warm shell session. Its *incarnation* (``kernel.id``) changes each time a
fresh agent is started for it (after the previous one died, or on a restart); the name stays.
Each incarnation has its own signing key, so an agent can only ever speak for the kernel it was
started for.

Requests that need the session wait in the kernel's queue and go to the agent one at a time, so
the broker always knows what runs, can abort what waits, and numbers executions in order.
"""

from __future__ import annotations

import collections
import enum
import os
import re
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from ..auto import Escalation
from ..protocol import ErrorName, KernelState, Message, MsgType, Session
from ..provisioners import AgentHandle

if TYPE_CHECKING:
    from .jupyter_channels import JupyterChannels

#: Longest shell code one execute request may carry.
MAX_CODE = 1024 * 1024


def checked_code(content: dict[str, Any]) -> str:
    """The ``code`` of an execute request, or a BadRequest saying what is wrong with it."""
    from ..errors import RequestError

    code = content.get("code")
    if not isinstance(code, str):
        raise RequestError("execute_request needs a string 'code'", ErrorName.BAD_REQUEST)
    if len(code) > MAX_CODE:
        raise RequestError(f"code is longer than {MAX_CODE:,} characters", ErrorName.BAD_REQUEST)
    return code


#: Kernel names: safe as file names and labels, short enough to type.
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")  # use fullmatch: "$" lets "x\n" in
REMOTE = "remote"  # the mode of a kernel whose agent joined from another host
#: Signatures remembered per agent against replays: one agent's traffic, so a smaller window
#: than the clients' (memory stays ~1 MB per kernel however long it runs).
AGENT_REPLAY_WINDOW = 8192
#: Executed code remembered per kernel for Jupyter history requests.
HISTORY_LIMIT = 10000


class Sink(Protocol):
    """Where a request's outputs and reply go: the client that asked, in its own protocol."""

    kind: str  # "native" | "jupyter"

    def stream(self, kernel: Kernel, pending: Pending, frames: list[bytes]) -> bool:
        """Deliver one output chunk (agent frames after the delimiter); False if dropped."""

    def takes_inline(self, pending: Pending) -> bool:
        """Whether the client of ``pending`` gets the output an execute_reply carries inline
        (its ``output``) from the reply itself; if not, it goes to :meth:`stream` first."""

    def reply(
        self, kernel: Kernel, pending: Pending, content: dict[str, Any], frames: list[bytes] | None
    ) -> None:
        """Deliver the final reply (``frames`` are the agent's, when it sent one)."""

    def input_request(self, kernel: Kernel, pending: Pending, msg: Message) -> None:
        """Ask the client for a line of stdin."""

    def stdin_ack(self, pending: Pending, msg: Message, frames: list[bytes]) -> None:
        """Credit for streamed stdin from the agent (clients that stream stdin)."""


@dataclass
class Pending:
    """A request for a kernel's agent: waiting, running, or answered out of turn."""

    sink: Sink
    client: bytes  # routing id of the client that asked
    header: dict[str, Any]  # the request's header: what the agent's outputs are parented to
    kind: MsgType
    content: dict[str, Any]  # what the agent gets
    silent: bool = False
    store_history: bool = True
    stop_on_error: bool = False
    channel: str = "shell"  # Jupyter channel the reply goes to
    execution_count: int = 0
    forwarded: bool = False
    lost: int = 0  # output messages dropped (their client was gone)
    delivered: int = 0  # stream messages that reached the client's socket (flow.py)
    acked: int = 0  # ... as last told to the agent in an output_ack
    stdin_sent: int = 0  # streamed stdin: bytes forwarded to the agent (stdin_chunk)
    stdin_written: int = 0  # ... of which the agent wrote into the command's stdin (stdin_ack)
    stdin_ended: bool = False  # ... the client sent its end (eof)
    decoders: dict[str, Any] = field(default_factory=dict)  # per-stream UTF-8 decoders (iopub)
    decision: dict[str, str] | None = None  # auto mode: where it ran and why
    sticky: bool | None = None  # auto mode: sticky escalation asked for (None: auto_sticky)
    tell_mode: bool = False  # the request named no mode: its reply says the kernel's
    run_at: float = 0.0  # monotonic time it went to the agent
    started: bool = False  # busy was published for it (Jupyter iopub)
    inline: bool = False  # its (native) client takes the reply's inline ``output`` itself

    @property
    def msg_id(self) -> str:
        return str(self.header["msg_id"])

    @property
    def code(self) -> str:
        code = self.content.get("code")
        return code if isinstance(code, str) else ""


class Phase(enum.Enum):
    """Where a kernel is in its life. The wire's idle/busy is derived from its queue, never
    stored beside the phase (:attr:`Kernel.state`)."""

    STARTING = "starting"  # an agent was started for it and has not registered yet
    ADOPTING = "adopting"  # left by a dead broker: waiting for its agent to re-attach
    READY = "ready"  # an agent serves it (auto kernels: its sides can be asked)
    CLOSING = "closing"  # being restarted or removed: nothing it queued may start now
    DEAD = "dead"  # its agent died or never came up; the next request restarts it
    GONE = "gone"  # removed from the registry


#: The moves a kernel's phase may make (anything else is a bug, raised at once).
MOVES: dict[Phase, frozenset[Phase]] = {
    Phase.STARTING: frozenset({Phase.READY, Phase.DEAD, Phase.CLOSING}),
    Phase.ADOPTING: frozenset({Phase.READY, Phase.DEAD, Phase.CLOSING}),
    Phase.READY: frozenset({Phase.CLOSING, Phase.DEAD}),
    Phase.CLOSING: frozenset({Phase.STARTING, Phase.READY, Phase.DEAD, Phase.GONE}),
    Phase.DEAD: frozenset({Phase.STARTING, Phase.CLOSING}),
    Phase.GONE: frozenset(),
}


class IllegalMove(RuntimeError):
    """A phase change :data:`MOVES` does not allow."""


#: The provisioner key of agent pools (pools.py), beside the modes'.
POOL_BACKEND = "pool"


@dataclass
class Incarnation:
    """One agent run serving a kernel: what changes when a fresh agent replaces the last one."""

    id: str  # "<name>-<random>": the agent's routing id starts with it
    session: Session  # signs and verifies traffic with this agent (its own key)
    handle: AgentHandle | None = None  # the provisioner's handle on the process or container
    identity: bytes | None = None  # the agent's routing id, once it registered
    pid: int | None = None
    info: dict[str, Any] = field(default_factory=dict)  # what it said at registration
    shell_pgid: int | None = None  # its bash's process group (what an interrupt signals)
    started_at: float = field(default_factory=time.monotonic)
    progress_at: float = 0.0  # last progress report of its start (image pull or build)
    last_beat: float = field(default_factory=time.monotonic)
    processes: int = 0  # background processes running, as its last heartbeat said
    sock: Any = None  # the socket it speaks on (None: the ipc agent socket)

    @classmethod
    def new(cls, name: str, key: bytes) -> Incarnation:
        return cls(
            id=f"{name}-{os.urandom(4).hex()}",
            session=Session(key, replay_window=AGENT_REPLAY_WINDOW),
        )

    def set_shell_pgid(self, pgid: int) -> None:
        self.shell_pgid = pgid
        if self.handle is not None:
            self.handle.shell_pgid = pgid


@dataclass
class Kernel:
    """A named, warm shell session. Its state is written by the core: creation.py and
    lifecycle.py (phase, incarnation, sides), scheduler.py (queue, requests, counters, cwd),
    auto_router.py (an auto kernel's escalation and side); adapters only attach to it (the
    Jupyter channels, native clients) and read it."""

    name: str
    mode: str
    ttl: float
    cwd: str
    phase: Phase = Phase.STARTING
    inc: Incarnation | None = None  # the current agent run (None: none yet, or auto)
    created_wall: float = field(default_factory=time.time)
    last_activity: float = field(default_factory=time.monotonic)
    queue: collections.deque[Pending] = field(default_factory=collections.deque)
    running: Pending | None = None
    pending: dict[str, Pending] = field(default_factory=dict)  # every request not yet answered
    clients: dict[bytes, Any] = field(default_factory=dict)  # native clients -> their frontend
    restarts: int = 0
    came_up: bool = False  # an agent of it ever registered (there was a session to lose)
    executions: int = 0
    execution_count: int = 0
    history: collections.deque[tuple[int, int, str]] = field(
        default_factory=lambda: collections.deque(maxlen=HISTORY_LIMIT)
    )
    death_reason: str | None = None
    notices: list[dict[str, Any]] = field(default_factory=list)  # for the next requester
    channels: JupyterChannels | None = None  # Jupyter sockets, once someone asked for them
    image: str | None = None  # sandbox image asked for (None: the configured one)
    requirements: str | None = None  # sandbox requirements file content
    workspace: str | None = None  # sandbox workspace on the host
    pool: str | None = None  # sandbox: the agent pool whose members serve it (pools.py)
    env: dict[str, str] | None = None  # host kernels: the environment its creator sent
    parent: Kernel | None = None  # the auto kernel this one is a side of
    children: dict[str, Kernel] = field(default_factory=dict)  # auto: "local"/"sandbox" sides
    last_side: str | None = None  # auto: the side the previous command ran on
    escalation: Escalation | None = None  # auto: what first changed its sandbox (sticky)
    ttl_asked: float | None = None  # auto: the TTL the request gave its sides (None: by mode)
    ttls: dict[str, float] | None = None  # TTL by mode from its creator's settings (auto sides)
    session_id: str = field(default_factory=lambda: os.urandom(16).hex())  # Jupyter's, per run
    creator: bytes | None = None  # the client connection that created it (max_kernels_per_client)

    def move(self, phase: Phase) -> None:
        """Change phase; a move :data:`MOVES` does not allow raises :class:`IllegalMove`."""
        if phase is not self.phase and phase not in MOVES[self.phase]:
            raise IllegalMove(f"kernel {self.name}: {self.phase.value} -> {phase.value}")
        self.phase = phase

    # -- read-only views of the current incarnation ----------------------------------------------
    @property
    def id(self) -> str:
        if self.inc is not None:
            return self.inc.id
        return f"{self.name}-auto" if self.mode == "auto" else ""

    @property
    def session(self) -> Session | None:
        return self.inc.session if self.inc is not None else None

    @property
    def backend(self) -> str:
        """The provisioner that starts its agents: its mode's, or ``pool`` for a pool kernel."""
        return POOL_BACKEND if self.pool else self.mode

    @property
    def handle(self) -> AgentHandle | None:
        return self.inc.handle if self.inc is not None else None

    @property
    def agent_identity(self) -> bytes | None:
        return self.inc.identity if self.inc is not None else None

    @property
    def agent_pid(self) -> int | None:
        return self.inc.pid if self.inc is not None else None

    @property
    def shell_pgid(self) -> int | None:
        return self.inc.shell_pgid if self.inc is not None else None

    @property
    def agent_info(self) -> dict[str, Any]:
        return self.inc.info if self.inc is not None else {}

    @property
    def agent_sock(self) -> Any:
        return self.inc.sock if self.inc is not None else None

    @property
    def adopting(self) -> bool:
        return self.phase is Phase.ADOPTING

    @property
    def closing(self) -> bool:
        return self.phase is Phase.CLOSING

    @property
    def busy(self) -> bool:
        """A request runs or waits for its turn (what needs no turn, a file operation or a
        process query, never makes a kernel busy)."""
        return self.running is not None or bool(self.queue)

    @property
    def ready(self) -> bool:
        """An agent is registered and can take requests (auto kernels have none of their own)."""
        return self.phase is Phase.READY and self.agent_identity is not None

    @property
    def state(self) -> KernelState:
        """What the wire says: starting, idle, busy or dead."""
        if self.phase in (Phase.STARTING, Phase.ADOPTING):
            return KernelState.STARTING
        if self.phase in (Phase.DEAD, Phase.GONE):
            return KernelState.DEAD
        return KernelState.BUSY if self.busy else KernelState.IDLE

    @property
    def counter(self) -> Kernel:
        """The kernel whose execution count numbers this one's runs (an auto kernel's sides
        share their parent's)."""
        return self.parent or self

    @property
    def jupyter_clients(self) -> int:
        """Jupyter clients connected to its shell channel (an auto kernel's sides have none of
        their own: they share its channels)."""
        channels = self.channels
        return len(channels.client_fds) if channels is not None and channels.kernel is self else 0

    def to_json(self, now: float) -> dict[str, Any]:
        info: dict[str, Any] = {
            "name": self.name,
            "id": self.id,
            "mode": self.mode,
            "state": self.state.value,
            "idle_seconds": 0.0 if self.busy else round(now - self.last_activity, 3),
            "ttl": self.ttl,
            "clients": len(self.clients) + self.jupyter_clients,
            "pid": self.agent_pid,
            "cwd": self.cwd,
            "executions": self.executions,
            "execution_count": self.execution_count,
            "pending": len(self.pending),
            "restarts": self.restarts,
            "created": self.created_wall,
            "jupyter": self.channels.connection_file if self.channels else None,
            "processes": self.inc.processes if self.inc is not None else 0,
        }
        if self.handle is not None:
            info.update(self.handle.describe())
        if self.pool:
            info["pool"] = self.pool
        if self.death_reason:
            info["death_reason"] = self.death_reason
        if self.children:
            info["sides"] = {mode: child.name for mode, child in self.children.items()}
        if self.mode == "auto":
            info["workspace"] = self.workspace
            info["escalated"] = self.escalation.to_dict() if self.escalation else None
        if self.parent is not None:
            info["auto_parent"] = self.parent.name
        return info


class Registry:
    """Kernels by name and by incarnation id, plus a short memory of removed ones."""

    def __init__(self) -> None:
        self.by_name: dict[str, Kernel] = {}
        self.by_id: dict[str, Kernel] = {}
        self.gone: collections.OrderedDict[str, dict[str, Any]] = collections.OrderedDict()
        # Incarnation ids of agents we stopped: their last messages are expected, not suspect.
        self.retired: collections.OrderedDict[str, None] = collections.OrderedDict()
        self.on_unindex: Any = None  # called with an incarnation id that is over

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
        if self.on_unindex is not None:
            self.on_unindex(kernel.id)
        if self.by_id.pop(kernel.id, None) is not None:
            self.retired[kernel.id] = None
            while len(self.retired) > 10000:
                self.retired.popitem(last=False)

    def remove(self, kernel: Kernel, event: dict[str, Any]) -> None:
        if self.by_name.get(kernel.name) is not kernel:
            self.unindex(kernel)  # a successor of that name exists already (an auto side)
            return
        del self.by_name[kernel.name]
        self.unindex(kernel)
        self.gone[kernel.name] = event
        while len(self.gone) > 1000:
            self.gone.popitem(last=False)
