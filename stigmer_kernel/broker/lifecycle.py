"""Kernels' lives: start an agent, register it, restart, die, remove, apply liveness.

With creation.py (where kernels come from), the only writer of a kernel's phase and
incarnation (model.py). An agent is started by its mode's provisioner and registers over the
agent link (:meth:`Lifecycle.registered`); a dead agent marks the kernel dead, and the next
request for it starts a fresh one; liveness verdicts (liveness.py) are applied here
(:meth:`Lifecycle.apply`).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..config import Config, ExecutionMode
from ..errors import RequestError
from ..protocol import ErrorName, ExecStatus, KernelEvent, Message, new_key
from ..provisioners import AgentHandle, AgentSpec, Provisioner
from .liveness import Finding, Verdict
from .model import REMOTE, Incarnation, Kernel, Phase, Registry
from .scheduler import Scheduler

if TYPE_CHECKING:
    import asyncio

    from .pool import WarmPool
    from .service import AgentLink, Announcer, Records

log = logging.getLogger("stigmer.broker")

#: Seconds an agent gets to exit after agent_shutdown.
STOP_GRACE = 2.0


class Lifecycle:
    def __init__(
        self,
        config: Config,
        registry: Registry,
        provisioners: Mapping[str, Provisioner],
        scheduler: Scheduler,
        link: AgentLink,
        announce: Announcer,
        records: Records,
        workdir: Callable[[str], Path],
    ) -> None:
        self.config = config
        self.registry = registry
        self.provisioners = provisioners
        self.scheduler = scheduler
        self.link = link
        self.announce = announce
        self.records = records
        self.workdir = workdir  # a kernel incarnation's directory on the host, by id
        self.pool: WarmPool | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.stopping = False
        self.reaping: list[AgentHandle] = []  # stopped agents not yet seen to end

    # -- agents ---------------------------------------------------------------------------------
    def start_agent(self, kernel: Kernel) -> None:
        """A fresh incarnation of ``kernel``: a new key, session and agent."""
        provisioner = self.provisioners[kernel.backend]
        kernel.move(Phase.STARTING)
        inc = kernel.inc = Incarnation.new(kernel.name, new_key())
        kernel.session_id = os.urandom(16).hex()
        kernel.execution_count = 0  # a new session counts from 1 again, as Jupyter expects
        kernel.death_reason = None
        self.registry.index(kernel)
        endpoint, curve, inc.sock = self.link.placement(kernel)
        spec = AgentSpec(
            kernel_id=inc.id,
            kernel_name=kernel.name,
            key=inc.session.key,
            endpoint=endpoint,
            curve=curve,
            cwd=kernel.cwd,
            workdir=self.workdir(inc.id),
            shell=self.config.shell,
            heartbeat_interval=self.config.heartbeat_interval,
            orphan_timeout=max(60.0, 10 * self.config.dead_after),
            command_timeout=self.config.command_timeout,
            output_limit=0,  # streamed output is never cut (clients cap what they keep)
            journal_bytes=self.config.process_journal_bytes,
            image=kernel.image,
            requirements=kernel.requirements,
            workspace=kernel.workspace,
            on_progress=self._progress_reporter(kernel),
            env=kernel.env,
            pool=kernel.pool,
        )
        try:
            inc.handle = provisioner.start(spec)
        except Exception as exc:  # OSError, docker errors...: the kernel cannot start
            log.error("could not start an agent for kernel %s: %s", kernel.name, exc)
            self.died(kernel, f"could not start an agent: {exc}")
            return
        log.info("starting kernel %s (%s, %s mode)", kernel.name, inc.id, kernel.mode)
        self.records.save(kernel)
        if kernel.channels is not None and kernel.parent is None:
            kernel.channels.new_incarnation(kernel)

    def _progress_reporter(self, kernel: Kernel) -> Callable[[str], None]:
        """A thread-safe callback telling attached clients how a sandbox start goes."""
        loop = self.loop
        inc = kernel.inc
        target = kernel.parent or kernel  # an auto kernel's clients hear about its sandbox side

        def progressed(text: str) -> None:
            if inc is not None:
                inc.progress_at = time.monotonic()  # a slow pull or build is not a hung start
            self.announce.kernel_event(target, KernelEvent.PROGRESS, text)

        def report(text: str) -> None:
            log.info("kernel %s: %s", kernel.name, text)
            if loop is not None and not loop.is_closed():
                loop.call_soon_threadsafe(progressed, text)

        return report

    def registered(self, kernel: Kernel, identity: bytes, msg: Message, sock: Any) -> None:
        """An agent's registration: it now serves ``kernel`` (on ``sock``)."""
        inc = kernel.inc
        if kernel.phase is not Phase.STARTING or inc is None or inc.identity is not None:
            raise RequestError(f"second registration for kernel {kernel.id} refused")
        inc.identity = identity
        inc.sock = sock
        inc.info = dict(msg.content)
        cwd = msg.content.get("cwd")
        if kernel.pool and not kernel.cwd and isinstance(cwd, str):
            kernel.cwd = cwd  # a pool kernel without a cwd of its own starts in its member's
        pid = msg.content.get("pid")
        inc.pid = pid if isinstance(pid, int) else None
        pgid = msg.content.get("shell_pgid")
        if isinstance(pgid, int) and pgid > 0:
            inc.set_shell_pgid(pgid)
        inc.last_beat = time.monotonic()
        kernel.came_up = True
        kernel.move(Phase.READY)
        self.link.welcome(kernel, msg)
        log.info(
            "kernel %s ready (agent pid %s, %.0f ms)",
            kernel.name,
            pid,
            (time.monotonic() - inc.started_at) * 1000,
        )
        if kernel.channels is not None:
            kernel.channels.publish_status("idle", None)
        self.records.save(kernel)
        self.scheduler.advance(kernel)

    def reattached(self, kernel: Kernel, identity: bytes, content: dict[str, Any]) -> None:
        """The first heartbeat of an agent that outlived the previous broker: it serves this
        kernel again, with its session."""
        inc = kernel.inc
        assert inc is not None
        inc.identity = identity.removesuffix(b":hb")
        pid = content.get("pid")
        if kernel.mode == "local" and isinstance(pid, int):
            inc.pid = pid
        kernel.came_up = True
        kernel.move(Phase.READY)
        kernel.last_activity = time.monotonic()
        log.info("kernel %s re-adopted with its session (agent %s)", kernel.name, pid)
        if kernel.channels is not None:
            kernel.channels.publish_status("idle", None)
        self.records.save(kernel)
        self.scheduler.advance(kernel)

    def heard(self, kernel: Kernel, pgid: Any = None, processes: Any = None) -> None:
        """A verified message (or heartbeat, with bash's process group and the number of
        background processes running) from its agent."""
        inc = kernel.inc
        if inc is None:
            return
        inc.last_beat = time.monotonic()
        if isinstance(pgid, int) and pgid > 0:
            inc.set_shell_pgid(pgid)
        if isinstance(processes, int) and not isinstance(processes, bool) and processes >= 0:
            inc.processes = processes

    # -- restart, death, removal ----------------------------------------------------------------
    def restart(
        self,
        kernel: Kernel,
        reason: str,
        requester: bytes | None = None,
        requested: bool = False,
        quiet: bool = False,
        changes: Mapping[str, Any] | None = None,
    ) -> None:
        """A fresh agent (and session) for ``kernel``; everyone attached is told.

        ``requested``: a client asked for it (a Jupyter restart), rather than a dead agent
        being replaced on the next request. ``quiet``: nobody is told (a kernel whose agent
        never came up had no session to lose). ``changes``: new ``cwd``, ``workspace``,
        ``image`` or ``requirements`` for it and its sides (options.restart_changes).
        """
        self.check_restartable(kernel)
        if changes:
            for side in [kernel, *kernel.children.values()]:
                side.cwd = changes.get("cwd", side.cwd)
                side.workspace = changes.get("workspace", side.workspace)
                side.image = changes.get("image", side.image)
                side.requirements = changes.get("requirements", side.requirements)
        if kernel.mode == ExecutionMode.AUTO.value:  # no agent of its own: restart its sides
            kernel.move(Phase.CLOSING)  # what it queued is aborted, not handed to a dying side
            try:
                for child in list(kernel.children.values()):
                    self.restart(child, reason, requester, requested)
            finally:
                self.scheduler.fail_all(
                    kernel, ExecStatus.ABORTED, ErrorName.KERNEL_RESTARTED, reason
                )
                kernel.move(Phase.READY)
            kernel.execution_count = 0
            kernel.escalation = None  # a fresh sandbox holds nothing installed (sticky ends)
            if kernel.channels is not None:
                kernel.session_id = os.urandom(16).hex()
                kernel.channels.new_incarnation(kernel)
            self.announce.kernel_event(
                kernel, KernelEvent.RESTARTED, reason, exclude=requester, requested=requested
            )
            return
        if kernel.phase is not Phase.DEAD:
            kernel.move(Phase.CLOSING)  # nothing aborted here may reach the old agent meanwhile
            self.scheduler.fail_all(kernel, ExecStatus.ABORTED, ErrorName.KERNEL_RESTARTED, reason)
            self.stop_agent(kernel)
        kernel.restarts += 1
        self.start_agent(kernel)
        if quiet:
            return
        if requester is not None:  # the others are told now; the requester with its reply
            kernel.notices.append({"event": KernelEvent.RESTARTED.value, "reason": reason})
        self.announce.kernel_event(
            kernel, KernelEvent.RESTARTED, reason, exclude=requester, requested=requested
        )

    def check_restartable(self, kernel: Kernel) -> None:
        """Raise :class:`RequestError` if ``kernel`` cannot be restarted now (before anything
        is stopped, so a refused restart changes nothing)."""
        if kernel.mode == REMOTE:
            check_remote_alive(kernel)
            raise RequestError(
                f"remote kernel {kernel.name!r} cannot be restarted from here — restart its "
                "agent on its host",
                ErrorName.RESTART_UNAVAILABLE,
            )
        sides = list(kernel.children.values()) if kernel.children else [kernel]
        for side in sides:
            provisioner = self.provisioners.get(side.backend)
            if provisioner is not None:
                # No engine: say so now, rather than fail to start a container later.
                provisioner.check_available()

    def died(self, kernel: Kernel, reason: str) -> None:
        """``kernel``'s agent is gone: what it had pending fails with the reason."""
        if kernel.phase in (Phase.DEAD, Phase.GONE):
            return
        log.warning("kernel %s died: %s", kernel.name, reason)
        never_up = kernel.phase in (Phase.STARTING, Phase.ADOPTING)  # it never registered
        # A kernel whose very first start failed (a missing image...) is not kept: its name
        # must not stay bound to a mode and options that cannot run. Jupyter kernels stay (a
        # Jupyter program holds their connection), as do re-adopted and pooled ones.
        forget = (
            kernel.phase is Phase.STARTING
            and not kernel.came_up
            and kernel.restarts == 0
            and kernel.channels is None
            and not (self.pool is not None and kernel in self.pool.kernels)
        )
        kernel.move(Phase.DEAD)
        kernel.death_reason = reason
        inc = kernel.inc
        if inc is not None:
            if inc.handle is not None:
                inc.handle.kill()
                self.reaping.append(inc.handle)
                inc.handle = None
            inc.identity = None
        self.registry.unindex(kernel)
        message = f"kernel {kernel.name!r} died: {reason}"
        if forget:
            message += "; the kernel was not kept, so the next request for it starts a new one"
        elif never_up:
            message += f"; remove it with `stigmer kernels shutdown {kernel.name}`"
        self.scheduler.fail_all(kernel, ExecStatus.ERROR, ErrorName.KERNEL_DIED, message)
        if forget:
            self.remove(kernel, KernelEvent.DIED, reason, tell_successor=False)
            return
        self.announce.kernel_event(kernel, KernelEvent.DIED, reason)
        if kernel.channels is not None:
            kernel.channels.publish_status("dead", None)

    def remove(
        self, kernel: Kernel, event: KernelEvent, reason: str, tell_successor: bool = True
    ) -> None:
        """Remove ``kernel``; the next kernel of its name is told why (``tell_successor``)."""
        if kernel.phase is Phase.GONE:
            return
        log.info("kernel %s %s: %s", kernel.name, event.value, reason)
        kernel.move(Phase.CLOSING)  # an auto kernel's queue must not go to a side being removed
        for child in list(kernel.children.values()):
            self.remove(child, event, reason)
        if kernel.parent is not None and kernel.parent.children.get(kernel.mode) is kernel:
            del kernel.parent.children[kernel.mode]
        self.scheduler.fail_all(
            kernel,
            ExecStatus.ABORTED,
            ErrorName.KERNEL_SHUTDOWN,
            f"kernel {kernel.name!r} was {event.value}: {reason}",
        )
        self.announce.kernel_event(kernel, event, reason)
        self.stop_agent(kernel)
        gone = {"event": event.value, "reason": reason, "at": time.time()}
        self.registry.remove(kernel, {**gone, "tell": tell_successor})
        kernel.move(Phase.GONE)
        if kernel.channels is not None and kernel.parent is None:
            self.announce.removed(kernel)

    def stop_agent(self, kernel: Kernel) -> None:
        """Ask ``kernel``'s agent to end; it is killed if it has not within :data:`STOP_GRACE`."""
        inc = kernel.inc
        if inc is None:
            return
        if inc.identity is not None:
            self.link.shutdown(kernel)
        self.registry.unindex(kernel)
        handle, inc.handle = inc.handle, None
        if handle is not None:
            handle.release()
            self.reaping.append(handle)
            if self.loop is not None and not self.stopping:
                self.loop.call_later(STOP_GRACE, self._force_kill, handle)
            elif inc.identity is None:
                handle.kill()
        inc.identity = None

    def _force_kill(self, handle: AgentHandle) -> None:
        if handle.poll() is None:
            log.warning("agent %s did not exit in time; killing it", handle.pid)
            handle.kill()
        self.reap()

    def reap(self) -> None:
        """Clean up after stopped agents that have ended."""
        running = []
        for handle in self.reaping:
            if handle.poll() is None:
                running.append(handle)
            else:
                handle.cleanup()
        self.reaping = running

    # -- liveness -------------------------------------------------------------------------------
    def polled(self, kernels: Iterable[Kernel]) -> dict[str, str | None]:
        """How each kernel's agent process or container ended (None: it runs), by id."""
        return {k.id: k.handle.poll() for k in kernels if k.handle is not None}

    def apply(self, findings: list[Finding]) -> None:
        """Carry out liveness verdicts (liveness.py)."""
        for finding in findings:
            kernel = finding.kernel
            if finding.verdict is Verdict.POOL_LOST:
                assert self.pool is not None
                log.warning("warm sandbox %s lost: %s", kernel.id, finding.reason)
                self.pool.forget(kernel, failed_to_start=finding.never_registered)
                self.died(kernel, finding.reason)
                self.pool.refill()
            elif kernel.phase is Phase.GONE:
                continue  # removed by an earlier verdict (an auto kernel's side)
            elif finding.verdict is Verdict.DIED:
                reason = finding.reason
                handle = kernel.handle
                if finding.never_registered and handle is not None and handle.poll() is None:
                    reason += self.link.start_hint(kernel)  # overdue, not ended: where it dials
                self.died(kernel, reason)
            elif finding.verdict is Verdict.UNADOPTABLE:
                self.remove(kernel, KernelEvent.SHUTDOWN, finding.reason)
            elif finding.verdict is Verdict.EXPIRED:
                self.remove(kernel, KernelEvent.EXPIRED, finding.reason)
            elif finding.verdict is Verdict.RETRY:
                self.scheduler.advance(kernel)  # a request that could not be handed on: again


def check_remote_alive(kernel: Kernel) -> None:
    if kernel.phase is Phase.DEAD:
        raise RequestError(
            f"remote kernel {kernel.name!r} lost its agent ({kernel.death_reason}) — start "
            "the agent again on its host",
            ErrorName.KERNEL_DIED,
        )
