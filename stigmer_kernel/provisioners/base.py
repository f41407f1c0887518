"""How an execution agent comes to exist: the provisioner interface.

The broker asks a provisioner to start an agent for a kernel and gets an :class:`AgentHandle`
it can poll and kill. Local processes, Docker containers (and later Kubernetes pods or cloud
sandboxes) all fit behind this interface; the broker never knows which one it is talking to.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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

    def exit_hint(self, since: float) -> str | None:
        """Why a command that ended by SIGKILL after ``since`` (monotonic) was killed, if known
        (e.g. the sandbox's memory limit)."""
        return None

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

    @abc.abstractmethod
    def start(self, spec: AgentSpec) -> AgentHandle:
        """Start an agent; it registers with the broker on its own."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release what the provisioner holds (called once at broker shutdown)."""
