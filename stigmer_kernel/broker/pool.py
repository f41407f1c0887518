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

from .model import Kernel

if TYPE_CHECKING:
    from .service import Hub


class WarmPool:
    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.size = hub.config.sandbox_warm
        self.workspace: str | None = hub.config.sandbox_workspace
        self.kernels: list[Kernel] = []
        self.paused_until = 0.0  # after a pooled container failed to start: no storm of retries

    def note_workspace(self, workspace: str) -> None:
        """A sandbox kernel was created for ``workspace``: keep the pool warm for it."""
        if self.size and self.workspace != workspace and not self.hub.config.sandbox_workspace:
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
            self.hub.lifecycle.start_agent(kernel)

    def take(self, workspace: str) -> Kernel | None:
        """A pooled kernel for ``workspace`` whose agent is ready, if there is one (the
        provisioner said the request can be served by a pooled agent: ``can_pool``); creation.py
        hands its incarnation to the named kernel."""
        if workspace != self.workspace:
            return None
        for pooled in self.kernels:
            if pooled.ready:
                self.kernels.remove(pooled)
                return pooled
        return None

    def forget(self, kernel: Kernel, failed_to_start: bool = False) -> None:
        if kernel in self.kernels:
            self.kernels.remove(kernel)
        if failed_to_start:
            self.paused_until = time.monotonic() + 30.0

    def drain(self) -> None:
        """Stop every pooled container (workspace change, shutdown)."""
        for kernel in list(self.kernels):
            self.hub.lifecycle.stop_agent(kernel)
        self.kernels.clear()
