"""The handle on one sandbox container: what the broker polls, kills and cleans up.

A :class:`DockerAgent` is returned by :meth:`DockerProvisioner.start` (or ``adopt``) before its
container exists; the provisioner's thread pool creates the container, and its event watcher
hands the container's ``oom`` and ``die`` events to :meth:`DockerAgent.container_event`, which
says how it ended. Removal runs on that pool too.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .base import AgentHandle, AgentSpec

if TYPE_CHECKING:
    from .docker import DockerProvisioner


class DockerAgent(AgentHandle):
    """A sandbox container (being) started for one kernel incarnation."""

    def __init__(self, provisioner: DockerProvisioner, spec: AgentSpec) -> None:
        self.provisioner = provisioner
        self.spec = spec
        self.image = spec.image or provisioner.config.sandbox_image
        self.container_id: str | None = None
        self.failure: str | None = None  # why it could not start, or how it ended
        self.removed = False
        self.future: concurrent.futures.Future[None] | None = None
        self.last_oom = 0.0  # monotonic time of the container's last out-of-memory event
        self.runnable: str | None = None  # the image the container runs (``image`` resolved)
        self._removing = threading.Lock()  # kill() and cleanup() may both queue _remove
        self.reused = False  # a stopped container of an earlier kernel of this name, restarted
        self.user: str | None = None  # uid:gid its commands run as

    @property
    def workdir(self) -> Path:
        """The kernel's directory on the host (mounted at KERNEL_DIR)."""
        return self.spec.workdir

    @property
    def pid(self) -> int | None:
        return None  # a process of another pid namespace: never signalled from the host

    @property
    def resource_id(self) -> str | None:
        return self.container_id

    def poll(self) -> str | None:
        return self.failure

    def kill(self) -> None:
        self.provisioner.submit(self._remove)

    def exit_hint(self, since: float, oom_killed: bool = False) -> str | None:
        if self.last_oom >= since or oom_killed:
            return (
                f"killed by the out-of-memory killer: the sandbox's memory limit is "
                f"{self.provisioner.config.sandbox_memory} (STIGMER_SANDBOX_MEMORY)"
            )
        return None

    def container_event(
        self, action: str | None, code: str | None, said: Callable[[], str]
    ) -> None:
        """An ``oom`` or ``die`` event of its container (``code``: the exit code). ``said``: the
        agent's last words, asked for when it exited with an error."""
        if action == "oom":
            # A process of the sandbox hit the memory limit; the kernel may live on.
            self.last_oom = time.monotonic()
            return
        if self.failure is not None or self.removed:
            return
        if time.monotonic() - self.last_oom < 5:
            self.failure = (
                f"the sandbox ran out of memory (limit {self.provisioner.config.sandbox_memory}) "
                "and its container was killed"
            )
        elif code == "137":
            self.failure = "the sandbox container was killed (SIGKILL, e.g. docker kill)"
        else:
            last_words = said() if code != "0" else ""
            self.failure = f"the sandbox container exited (code {code}){last_words}"

    def cleanup(self) -> None:
        self.provisioner.submit(self._remove)

    def _remove(self) -> None:
        with self._removing:
            self._remove_once()

    def _remove_once(self) -> None:
        if self.removed:
            return
        if self.future is not None:
            with contextlib.suppress(Exception):
                self.future.result(timeout=120)  # let a start in flight finish first
        self.removed = True
        keep = False
        if self.container_id:
            # An orderly end (the agent exited 0 when asked: expiry, shutdown, restart) leaves a
            # container worth restarting for the next kernel of this name; a crash does not.
            keep = self.failure is not None and self.failure.endswith("(code 0)")
            keep = self.provisioner.remove_container(self.container_id, reusable=keep)
        if self.failure is None:
            self.failure = "the sandbox container was removed"  # poll() now says it ended
        shutil.rmtree(self.spec.workdir, ignore_errors=True)
        if keep and self.container_id and self.runnable:
            self.provisioner.keep_stopped(self)

    def describe(self) -> dict[str, Any]:
        return {
            "pid": None,
            "container": self.container_id[:12] if self.container_id else None,
            "image": self.image,
            "container_reused": self.reused,
            "sandbox_user": self.user,
            **self.provisioner.network.describe(),
        }

    def renamed(self, kernel_name: str) -> None:
        """A named kernel took this (pooled) container over: keep it for that name."""
        self.spec = dataclasses.replace(self.spec, kernel_name=kernel_name)
