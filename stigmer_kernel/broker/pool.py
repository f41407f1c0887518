"""The warm pool: sandbox containers started ahead of need (``STIGMER_SANDBOX_WARM=N``).

A new sandbox kernel that asks for the default image, no requirements and the pool's workspace
takes a pooled container whose agent is already registered, instead of waiting for a container
to start; the pool then starts a replacement. The pool's workspace is ``STIGMER_SANDBOX_WORKSPACE``
when set, else the workspace of the latest sandbox kernel (a container's mounts are fixed when it
is created, so the pool can only serve one workspace at a time).
"""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING

from ..protocol import KernelState
from . import adoption
from .kernels import Kernel

if TYPE_CHECKING:
    from .server import Broker

#: Attributes that make a kernel's agent: what a named kernel takes over from a pooled one.
_AGENT_STATE = (
    "id",
    "session",
    "session_id",
    "handle",
    "agent_identity",
    "agent_pid",
    "agent_info",
    "shell_pgid",
    "state",
    "started_at",
    "last_beat",
    "agent_sock",
)


class WarmPool:
    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self.size = broker.config.sandbox_warm
        self.workspace: str | None = broker.config.sandbox_workspace
        self.kernels: list[Kernel] = []
        self.paused_until = 0.0  # after a pooled container failed to start: no storm of retries

    def note_workspace(self, workspace: str) -> None:
        """A sandbox kernel was created for ``workspace``: keep the pool warm for it."""
        if self.size and self.workspace != workspace and not self.broker.config.sandbox_workspace:
            self.drain()
            self.workspace = workspace
        self.refill()

    def refill(self) -> None:
        if time.monotonic() < self.paused_until:
            return
        while self.size and self.workspace and len(self.kernels) < self.size:
            kernel = Kernel(
                name=f"_pool-{os.urandom(4).hex()}",
                mode="sandbox",
                ttl=float("inf"),
                cwd=self.workspace,
                workspace=self.workspace,
            )
            self.kernels.append(kernel)
            self.broker.start_agent(kernel)

    def take(self, workspace: str, image: str | None, requirements: str | None) -> Kernel | None:
        """A pooled kernel whose agent is ready, if one fits; None otherwise."""
        if requirements or (image and image != self.broker.config.sandbox_image):
            return None
        if workspace != self.workspace:
            return None
        for pooled in self.kernels:
            if pooled.state is KernelState.IDLE and pooled.agent_identity is not None:
                self.kernels.remove(pooled)
                return pooled
        return None

    def adopt(self, kernel: Kernel, pooled: Kernel) -> None:
        """``kernel`` takes over ``pooled``'s container and agent."""
        for attr in _AGENT_STATE:
            setattr(kernel, attr, getattr(pooled, attr))
        kernel.last_activity = time.monotonic()
        self.broker.registry.by_id[kernel.id] = kernel
        if kernel.handle is not None:
            kernel.handle.renamed(kernel.name)
        adoption.save(self.broker, kernel)  # now a named kernel: re-adoptable after a crash
        self.refill()

    def forget(self, kernel: Kernel, failed_to_start: bool = False) -> None:
        if kernel in self.kernels:
            self.kernels.remove(kernel)
        if failed_to_start:
            self.paused_until = time.monotonic() + 30.0

    def drain(self) -> None:
        """Stop every pooled container (workspace change, shutdown)."""
        for kernel in list(self.kernels):
            self.broker.stop_agent(kernel)
        self.kernels.clear()
