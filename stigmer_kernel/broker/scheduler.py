"""The request queue of every kernel: submit, advance, complete, fail, interrupt.

Requests that need a kernel's session wait in its queue and go to its agent one at a time, so
the broker always knows what runs, can abort what waits and numbers executions in order. This is
the only writer of a kernel's queue, running request and counters. It sends nothing itself: the
agent link (agents.py) carries requests, each request's sink answers its client, and observers
(output flow control, Jupyter channels) hear when a request starts and is answered.

Auto kernels have no agent: their requests are handed to a side by the :class:`AutoHooks`
(auto_router.py), which is told when a side answers one.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from ..errors import RequestError
from ..protocol import ErrorName, ExecStatus, Message, MsgType
from ..protocol.constants import OUTPUT_WINDOW
from ..protocol.enums import NO_TURN
from .model import Kernel, Pending, Phase

if TYPE_CHECKING:
    from .service import AgentLink

#: Requests queued on one kernel.
MAX_PENDING = 10000


class AutoHooks(Protocol):
    """How auto mode plugs into the queue (auto_router.py)."""

    def advance(self, kernel: Kernel) -> None:
        """Hand the auto kernel's next queued request to one of its sides."""

    def interrupt(self, kernel: Kernel, parent: Message | None) -> bool: ...

    def pass_through(self, kernel: Kernel, pending: Pending) -> None:
        """Hand a request that needs no turn to one of the auto kernel's sides at once."""


class Scheduler:
    def __init__(self, link: AgentLink) -> None:
        self.link = link
        self.auto: AutoHooks | None = None
        #: Called with (kernel, pending) once a request is answered, however it ended.
        self.on_answered: list[Callable[[Kernel, Pending], None]] = []

    def submit(self, kernel: Kernel, pending: Pending) -> None:
        """Queue a request for ``kernel``'s agent (what needs no turn, :data:`NO_TURN`, goes at
        once to a ready agent)."""
        if len(kernel.pending) >= MAX_PENDING:
            raise RequestError(
                f"kernel {kernel.name!r} has {MAX_PENDING} requests queued; try later",
                ErrorName.KERNEL_BUSY,
            )
        if pending.msg_id in kernel.pending:
            raise RequestError("duplicate msg_id", ErrorName.BAD_REQUEST)
        if kernel.phase in (Phase.DEAD, Phase.GONE):
            # e.g. its agent could not even start: nothing would ever take the request
            if kernel.phase is Phase.GONE:  # its first start failed
                raise RequestError(
                    f"kernel {kernel.name!r} died: {kernel.death_reason}; the kernel was not "
                    "kept, so the next request for it starts a new one",
                    ErrorName.KERNEL_DIED,
                )
            raise RequestError(
                f"kernel {kernel.name!r} is dead: {kernel.death_reason}; remove it with "
                f"`stigmer kernels shutdown {kernel.name}`",
                ErrorName.KERNEL_DIED,
            )
        kernel.pending[pending.msg_id] = pending
        if pending.kind in NO_TURN and kernel.mode == "auto" and self.auto is not None:
            self.auto.pass_through(kernel, pending)  # to a side now, not after what runs
            return
        if not (pending.kind in NO_TURN and kernel.ready and self._send(kernel, pending)):
            kernel.queue.append(pending)
        self.advance(kernel)

    def advance(self, kernel: Kernel) -> None:
        """Hand the next queued request to the agent if it is free."""
        if kernel.closing:
            return
        if kernel.mode == "auto" and self.auto is not None:
            self.auto.advance(kernel)
            return
        counter = kernel.counter
        while kernel.ready and kernel.running is None and kernel.queue:
            pending = kernel.queue.popleft()
            counted = (
                pending.kind is MsgType.EXECUTE_REQUEST
                and not pending.silent
                and pending.store_history
            )
            if pending.kind is MsgType.EXECUTE_REQUEST:
                number = counter.execution_count + (1 if counted else 0)  # taken once it is sent
                pending.execution_count = number
                pending.content["execution_count"] = number
            if not self._send(kernel, pending):
                # Its agent's socket is not connected (yet): e.g. a re-adopted agent whose main
                # socket reconnects after its heartbeat one. It waits at the head of the queue;
                # maintenance tries again, liveness ends it if the agent never comes.
                kernel.queue.appendleft(pending)
                return
            if counted:
                counter.execution_count += 1
                counter.history.append(
                    (counter.restarts + 1, counter.execution_count, pending.code)
                )
            if pending.kind in NO_TURN:
                continue
            if pending.kind is MsgType.EXECUTE_REQUEST:
                kernel.executions += 1
                kernel.last_activity = time.monotonic()
            kernel.running = pending
            if kernel.channels is not None:
                kernel.channels.started(kernel, pending)

    def delegate(self, parent: Kernel, side: Kernel, pending: Pending) -> None:
        """Auto mode: ``parent``'s request ``pending`` runs on ``side`` (it stays pending on
        both; the side's answer completes both)."""
        parent.running = pending
        try:
            self.submit(side, pending)
        except RequestError:
            parent.running = None
            raise

    def _send(self, kernel: Kernel, pending: Pending) -> bool:
        if pending.kind is MsgType.EXECUTE_REQUEST:
            pending.content["window"] = OUTPUT_WINDOW  # flow control of its output (flow.py)
            pending.content["inline_output"] = True  # its last output in its reply (agents.py)
        if not self.link.forward(kernel, pending):
            return False
        pending.run_at = time.monotonic()
        pending.forwarded = True
        return True

    def complete(
        self,
        kernel: Kernel,
        pending: Pending,
        content: dict[str, Any],
        frames: list[bytes] | None = None,
    ) -> None:
        """``pending`` is answered: tell its client and observers, then move the queue on."""
        kernel.pending.pop(pending.msg_id, None)
        for hook in self.on_answered:
            hook(kernel, pending)
        if kernel.running is pending:
            kernel.running = None
        if any(queued is pending for queued in kernel.queue):  # (a miss would repr it: slow)
            kernel.queue.remove(pending)
        cwd = content.get("cwd")
        if isinstance(cwd, str):
            kernel.cwd = cwd  # the agent's own report of where its shell is
        if pending.decision is not None:
            content = {**content, "auto": pending.decision, "mode": pending.decision["mode"]}
            frames = None  # the reply changes: it is built anew, not forwarded
        elif pending.tell_mode:
            content = {**content, "mode": kernel.mode}
            frames = None
        if content.get("exit_code") == 137 and kernel.handle is not None:
            hint = kernel.handle.exit_hint(pending.run_at, content.get("oom_killed") is True)
            if hint:
                content = {**content, "evalue": f"{content.get('evalue')}: {hint}"}
                frames = None
        pending.sink.reply(kernel, pending, content, frames)
        if kernel.channels is not None:
            kernel.channels.finished(kernel, pending, content)
        if pending.kind is MsgType.EXECUTE_REQUEST:
            kernel.last_activity = time.monotonic()
            if content.get("status") != ExecStatus.OK.value and pending.stop_on_error:
                self.abort_queued(kernel.counter, pending.sink.kind)
        self.advance(kernel)
        parent = kernel.parent
        if parent is not None and parent.pending.pop(pending.msg_id, None) is not None:
            if parent.running is pending:
                parent.running = None
            parent.last_activity = time.monotonic()
            self.advance(parent)

    def fail_all(self, kernel: Kernel, status: ExecStatus, ename: str, reason: str) -> None:
        for pending in list(kernel.pending.values()):
            self.fail(kernel, pending, status, ename, reason)

    def fail(
        self, kernel: Kernel, pending: Pending, status: ExecStatus, ename: str, reason: str
    ) -> None:
        if pending.msg_id not in kernel.pending:
            return  # answered meanwhile (e.g. aborted by stop_on_error): one reply only
        content = {
            "status": status.value,
            "exit_code": None,
            "ename": ename,
            "evalue": reason,
            "kernel": kernel.name,
        }
        self.complete(kernel, pending, content)

    def abort_queued(self, kernel: Kernel, sink_kind: str) -> None:
        """After a failed execute with stop_on_error: abort what that kind of client queued."""
        for pending in list(kernel.queue):
            if pending.kind is MsgType.EXECUTE_REQUEST and pending.sink.kind == sink_kind:
                self.fail(
                    kernel,
                    pending,
                    ExecStatus.ABORTED,
                    ErrorName.ABORTED,
                    "aborted: an earlier command failed (stop_on_error)",
                )

    def interrupt(self, kernel: Kernel, parent: Message | None = None) -> bool:
        """Interrupt what runs; if the agent is still starting, cancel what waits. True if a
        command was running (or waiting, and cancelled)."""
        if kernel.mode == "auto" and self.auto is not None:
            return self.auto.interrupt(kernel, parent)
        if kernel.agent_identity is not None and kernel.session is not None:
            self.link.interrupt(kernel, parent)
            return kernel.running is not None
        waiting = [p for p in kernel.queue if p.kind is MsgType.EXECUTE_REQUEST]
        for pending in waiting:
            self.fail(
                kernel,
                pending,
                ExecStatus.INTERRUPTED,
                ErrorName.INTERRUPTED,
                "interrupted before the kernel had started",
            )
        return bool(waiting)

    def cancel(self, kernel: Kernel, client: bytes, msg_id: str, parent: Message) -> bool:
        """Stop ``client``'s request ``msg_id`` only: interrupted if it runs, answered
        ``interrupted`` if it still waits (what runs meanwhile is someone else's, and goes on).
        False if it is not pending (answered already, or not this client's)."""
        pending = kernel.pending.get(msg_id)
        if pending is None or pending.client != client:
            return False
        if kernel.running is pending:
            self.interrupt(kernel, parent)
            return True
        if pending.forwarded:  # at the agent out of turn (a file or process request)
            return False
        self.fail(
            kernel,
            pending,
            ExecStatus.INTERRUPTED,
            ErrorName.INTERRUPTED,
            "interrupted before it started",
        )
        return True

    def input_reply(self, kernel: Kernel, value: str, parent: Message) -> None:
        """A line of stdin for the running command's ``input()``-style prompt."""
        if kernel.agent_identity is None or kernel.session is None or kernel.running is None:
            return
        self.link.input_reply(kernel, value, parent)
