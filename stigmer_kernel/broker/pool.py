"""The warm pool: sandbox containers started ahead of need (``STIGMER_SANDBOX_WARM=N``).

A new sandbox kernel that asks for the default image, no requirements and the pool's workspace
takes a pooled container whose agent is already registered, instead of waiting for a container
to start; the pool then starts a replacement, once that kernel has answered its first request
(or after :data:`REFILL_DELAY` at the latest): a container start holds the broker's GIL for part
of its Docker calls, on the provisioner's threads, and would slow that very answer. The pool's
workspace is ``STIGMER_SANDBOX_WORKSPACE`` when set, else the workspace of the latest sandbox
kernel (a container's mounts are fixed when it is created, so the pool can only serve one
workspace at a time).
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import TYPE_CHECKING

from .model import Kernel, Pending

if TYPE_CHECKING:
    from .service import Hub

#: Seconds a replacement waits at most for the kernel that took a pooled sandbox to answer.
REFILL_DELAY = 0.5


class WarmPool:
    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.size = hub.config.sandbox_warm
        self.workspace: str | None = hub.config.sandbox_workspace
        self.kernels: list[Kernel] = []
        self.paused_until = 0.0  # after a pooled container failed to start: no storm of retries
        #: Names of the kernels that took a pooled sandbox and have not answered yet: the
        #: refill waits for them.
        self.taken: set[str] = set()
        self._refill_timer: asyncio.TimerHandle | None = None  # REFILL_DELAY after a take

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

    def taken_by(self, kernel: Kernel) -> None:
        """``kernel`` took a pooled sandbox: refill once it has answered its first request
        (:meth:`answered`), or :data:`REFILL_DELAY` seconds from now, whichever comes first."""
        loop = self.hub.loop
        if loop is None:
            self.refill()
            return
        self.taken.add(kernel.name)
        if self._refill_timer is None:
            self._refill_timer = loop.call_later(REFILL_DELAY, self._deferred_refill)

    def answered(self, kernel: Kernel, _pending: Pending) -> None:
        """A request was answered (the scheduler's hook, before the reply goes out): the last
        taken kernel's first answer lets the refill start, once that reply is on its way."""
        if not self.taken or kernel.name not in self.taken:
            return  # (every answer passes here: the common case costs one test)
        self.taken.discard(kernel.name)
        if not self.taken and self.hub.loop is not None:
            self.hub.loop.call_soon(self._deferred_refill)

    def _deferred_refill(self) -> None:
        if self._refill_timer is not None:
            self._refill_timer.cancel()
            self._refill_timer = None
        self.taken.clear()
        if not self.hub.lifecycle.stopping:
            self.refill()

    def any_ready(self) -> bool:
        """Whether a pooled agent is registered (and may serve a new kernel at once)."""
        return any(pooled.ready for pooled in self.kernels)

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
        if self._refill_timer is not None:
            self._refill_timer.cancel()
            self._refill_timer = None
        self.taken.clear()
        for kernel in list(self.kernels):
            self.hub.lifecycle.stop_agent(kernel)
        self.kernels.clear()
