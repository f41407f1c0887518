"""How an execution agent comes to exist: the provisioner interface.

The broker asks a provisioner to start an agent for a kernel and gets an :class:`AgentHandle`
it can poll and kill. Local processes, Docker containers (and later Kubernetes pods or cloud
sandboxes) all fit behind this interface; the broker never knows which one it is talking to.

The whole contract, for a backend to implement (the hooks with a default have nothing to do in
a backend that lacks the concept):

- :meth:`Provisioner.check_available`: can this mode start agents now (else a mode-unavailable
  :class:`~stigmer_kernel.errors.RequestError`)?
- :meth:`Provisioner.start`: start an agent for a kernel incarnation.
- :meth:`Provisioner.workspace_root`: where its agents see a host workspace.
- :meth:`Provisioner.can_pool`: can an agent started ahead of need serve a given kernel?
- :meth:`Provisioner.adopt`: a handle on an agent a previous broker started (from the kernel's
  re-adoption record, which :meth:`AgentHandle.record` and :attr:`AgentHandle.resource_id` fed).
- :meth:`Provisioner.reap_leftovers`: remove what dead servers left (containers, networks).
- :meth:`Provisioner.set_tcp_host`: where agents that dial the broker over TCP find it.
- :meth:`Provisioner.close`: release everything at broker shutdown.

and, per agent, :class:`AgentHandle`: poll, kill, cleanup, its work directory, bash's process
group, the resource that makes it (a container), what ``kernels list`` shows, and when its
registration is due (``due_from``: a kernel waiting for a pool member is not overdue).
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..curve import ClientKeys


@dataclass(frozen=True)
class AgentSpec:
    """Everything an agent needs to start and find its broker."""

    kernel_id: str
    kernel_name: str
    key: bytes
    endpoint: str
    cwd: str
    workdir: Path
    shell: str
    heartbeat_interval: float
    orphan_timeout: float
    command_timeout: float | None
    output_limit: int
    journal_bytes: int = 4 * 1024 * 1024  # kept per stream of a background process
    image: str | None = None  # sandbox image (default: the configured one)
    requirements: str | None = None  # pip requirements baked into a derived image
    workspace: str | None = None  # host directory mounted at /workspace (default: cwd)
    on_progress: Callable[[str], None] | None = None  # thread-safe progress reports
    #: A host kernel's environment as its creator sent it (None: the server's); provisioners of
    #: sandboxes never read it (see stigmer_kernel/environment.py).
    env: Mapping[str, str] | None = None
    #: CurveZMQ for an agent that reaches ``endpoint`` over TCP: the server's public key, the
    #: agent's public and secret key, z85.
    curve: ClientKeys | None = None
    #: The agent pool whose member serves it (None: the backend starts the agent itself).
    pool: str | None = None


class AgentHandle(abc.ABC):
    """A started agent, owned by the broker's kernel record."""

    @property
    @abc.abstractmethod
    def pid(self) -> int | None:
        """Process id on the host, if the agent is a host process."""

    @abc.abstractmethod
    def poll(self) -> str | None:
        """None while the agent runs, else how it ended (for error messages)."""

    @abc.abstractmethod
    def kill(self) -> None:
        """End the agent and everything it started, at once."""

    @property
    def workdir(self) -> Path | None:
        """The kernel's directory on the host, if the handle knows it (it may differ from the
        broker's ``kernels/<id>``: a restarted sandbox container keeps its first mounts)."""
        return None

    @property
    def shell_pgid(self) -> int | None:
        """Bash's process group on the host, if the agent's bash is a host process."""
        return None

    @shell_pgid.setter  # noqa: B027 - optional hook
    def shell_pgid(self, pgid: int | None) -> None:
        """Bash's pid as the agent reports it (registration, heartbeats); ignored by a handle
        whose bash the host cannot signal."""

    @property
    def resource_id(self) -> str | None:
        """The backend's id of what runs the agent (a container id), kept in the re-adoption
        record so that :meth:`Provisioner.adopt` finds that very one again; None if none."""
        return None

    @property
    def due_from(self) -> float | None:
        """When (monotonic) the agent's registration starts to be due, if later than its start;
        None while the backend itself bounds the wait (a kernel waiting for a pool member:
        :meth:`poll` says when it gave up)."""
        return 0.0

    def renamed(self, kernel_name: str) -> None:  # noqa: B027 - optional hook
        """A named kernel took this (pooled) agent over."""

    def exit_hint(self, since: float, oom_killed: bool = False) -> str | None:
        """Why a command that ended by SIGKILL after ``since`` (monotonic) was killed, if known
        (e.g. the sandbox's memory limit)."""
        return None

    def release(self) -> None:  # noqa: B027 - optional hook
        """The broker asked the agent to end (agent_shutdown) and will wait for it; a handle
        whose agent is not the broker's to wait for (one on another host) lets go now."""

    def cleanup(self) -> None:  # noqa: B027 - optional hook
        """Remove what the agent left behind once it has ended (files, containers)."""

    def record(self) -> dict[str, Any]:
        """What a restarted server needs to find this agent's host processes again and prove
        they are still the same (saved in the kernel's re-adoption record)."""
        return {}

    def describe(self) -> dict[str, Any]:
        """Extra fields for ``stigmer kernels list --json``."""
        return {"pid": self.pid}


class Provisioner(abc.ABC):
    """Starts agents of one execution mode."""

    mode: str

    def check_available(self) -> None:  # noqa: B027 - optional hook
        """Raise a :class:`~stigmer_kernel.errors.RequestError` named ``MODE_UNAVAILABLE``, with
        what to do next, if this mode cannot start agents now (no engine). Called on the event
        loop before a kernel of this mode is created or restarted: it must not wait long."""

    @abc.abstractmethod
    def start(self, spec: AgentSpec) -> AgentHandle:
        """Start an agent; it registers with the broker on its own."""

    def can_pool(self, image: str | None, requirements: str | None) -> bool:
        """Whether an agent started ahead of need, with the default image and no requirements,
        can serve a kernel asking for ``image`` and ``requirements``. False: this backend keeps
        no such agents."""
        return False

    def workspace_root(self, workspace: str) -> str:
        """Where this backend's agents see the host directory ``workspace`` (auto mode carries
        a cwd across sides through it). The host path itself, unless agents run elsewhere."""
        return workspace

    def adopt(self, record: Mapping[str, Any], workdir: Path) -> AgentHandle | None:
        """A handle on the agent a previous broker started for the kernel of ``record`` (its
        re-adoption record), whose directory is ``workdir``; its agent re-attaches by heartbeat.
        None: this backend cannot re-adopt, and the broker forgets the kernel."""
        return None

    def reap_leftovers(self, keep: set[str], before: float) -> int | None:
        """Remove what servers that are not running left behind, except the kernels (ids, or
        :attr:`AgentHandle.resource_id`) in ``keep`` and what was created at or after
        ``before`` (wall clock: this server's own start). Returns how many went, or None if
        the backend could not be asked (the broker tries again later). Runs on a thread."""
        return 0

    def set_tcp_host(self, address: str) -> None:  # noqa: B027 - optional hook
        """Agents of this mode that dial the broker over TCP reach it at ``address``."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release what the provisioner holds (called once at broker shutdown)."""
