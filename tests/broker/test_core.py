"""The broker's core in one process, without sockets: a fake agent link, a fake provisioner
and a clock passed in by the test. Each rule is checked by what the core decides, so "nothing
happened" is a fact of the state, not the outcome of a sleep."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from stigmer_kernel.broker import liveness
from stigmer_kernel.broker.creation import Creation
from stigmer_kernel.broker.lifecycle import Lifecycle
from stigmer_kernel.broker.liveness import Verdict
from stigmer_kernel.broker.model import IllegalMove, Kernel, Pending, Phase, Registry
from stigmer_kernel.broker.scheduler import Scheduler
from stigmer_kernel.config import load_config
from stigmer_kernel.errors import RequestError
from stigmer_kernel.protocol import ErrorName, KernelEvent, KernelState, Message, MsgType
from stigmer_kernel.provisioners import AgentHandle, AgentSpec, Provisioner


class FakeHandle(AgentHandle):
    def __init__(self) -> None:
        self.ended: str | None = None
        self.killed = False
        self.released = False

    @property
    def pid(self) -> int | None:
        return None

    def poll(self) -> str | None:
        return self.ended

    def kill(self) -> None:
        self.killed = True
        self.ended = self.ended or "killed"

    def release(self) -> None:
        self.released = True


class FakeProvisioner(Provisioner):
    def __init__(self) -> None:
        self.started: list[AgentSpec] = []
        self.handles: list[FakeHandle] = []
        self.fail: str | None = None

    def start(self, spec: AgentSpec) -> AgentHandle:
        if self.fail:
            raise OSError(self.fail)
        self.started.append(spec)
        self.handles.append(FakeHandle())
        return self.handles[-1]


class FakeLink:
    """The agent link: remembers what the core sent."""

    def __init__(self) -> None:
        self.forwarded: list[tuple[str, str]] = []  # (kernel, msg_id)
        self.interrupts: list[str] = []
        self.shutdowns: list[str] = []
        self.reachable = True

    def forward(self, kernel: Kernel, pending: Pending) -> bool:
        if not self.reachable:
            return False
        self.forwarded.append((kernel.name, pending.msg_id))
        return True

    def interrupt(self, kernel: Kernel, parent: Message | None) -> None:
        self.interrupts.append(kernel.name)

    def input_reply(self, kernel: Kernel, value: str, parent: Message) -> None:
        pass

    def shutdown(self, kernel: Kernel) -> None:
        self.shutdowns.append(kernel.name)

    def welcome(self, kernel: Kernel, msg: Message) -> None:
        pass

    def placement(self, kernel: Kernel) -> tuple[str, Any, Any]:
        return "ipc://agents", None, None

    def start_hint(self, kernel: Kernel) -> str:
        return ""

    def retired(self, kernel_id: str) -> None:
        pass


class FakeAnnouncer:
    def __init__(self) -> None:
        self.events: list[tuple[str, KernelEvent, str]] = []

    def kernel_event(self, kernel: Kernel, event: KernelEvent, reason: str, **kw: Any) -> None:
        self.events.append((kernel.name, event, reason))

    def removed(self, kernel: Kernel) -> None:
        pass


class FakeRecords:
    def save(self, kernel: Kernel) -> None:
        pass

    def forget(self, kernel_id: str) -> None:
        pass


class Sink:
    """A client: the replies it got, by msg_id."""

    kind = "native"

    def __init__(self) -> None:
        self.replies: dict[str, dict[str, Any]] = {}

    def stream(self, kernel: Kernel, pending: Pending, frames: list[bytes]) -> bool:
        return True

    def reply(self, kernel: Kernel, pending: Pending, content: dict[str, Any], frames: Any) -> None:
        assert pending.msg_id not in self.replies, "one reply per request"
        self.replies[pending.msg_id] = content

    def input_request(self, kernel: Kernel, pending: Pending, msg: Message) -> None:
        pass

    def stdin_ack(self, pending: Pending, msg: Message, frames: list[bytes]) -> None:
        pass


class Core:
    def __init__(self, tmp: Path, **settings: Any) -> None:
        self.config = load_config(
            overrides={"runtime_dir": str(tmp / "run"), **settings},
            env={},
            config_path=tmp / "none",
        )
        self.registry = Registry()
        self.link = FakeLink()
        self.provisioner = FakeProvisioner()
        self.announce = FakeAnnouncer()
        self.scheduler = Scheduler(self.link)
        self.lifecycle = Lifecycle(
            self.config,
            self.registry,
            {"local": self.provisioner},
            self.scheduler,
            self.link,
            self.announce,
            FakeRecords(),
            workdir=lambda kernel_id: tmp / kernel_id,
        )
        self.creation = Creation(self.lifecycle)
        self.sink = Sink()
        self.cwd = str(tmp)
        self._ids = 0

    def kernel(self, name: str = "k", ready: bool = True, **kw: Any) -> Kernel:
        kernel = self.creation.get_or_create(name, "local", self.cwd, **kw)
        if ready:
            self.register(kernel)
        return kernel

    def register(self, kernel: Kernel) -> None:
        msg = Message(header={"msg_id": "r", "msg_type": "agent_register"}, content={"pid": 7})
        self.lifecycle.registered(kernel, f"{kernel.id}:1".encode(), msg, None)

    def execute(self, kernel: Kernel, code: str = "true", **kw: Any) -> Pending:
        self._ids += 1
        header = {"msg_id": f"m{self._ids}", "msg_type": "execute_request"}
        pending = Pending(
            sink=self.sink,
            client=b"c",
            header=header,
            kind=MsgType.EXECUTE_REQUEST,
            content={"code": code},
            **kw,
        )
        self.scheduler.submit(kernel, pending)
        return pending

    def answer(self, kernel: Kernel, pending: Pending, status: str = "ok") -> None:
        content = {"status": status, "exit_code": 0 if status == "ok" else 1}
        self.scheduler.complete(kernel, pending, content, [b"frames"])

    def check(self, now: float) -> list[liveness.Finding]:
        kernels = list(self.registry)
        findings = liveness.check(
            kernels, [], self.lifecycle.polled(kernels), now, self.config.dead_after
        )
        self.lifecycle.apply(findings)
        return findings


@pytest.fixture
def core(tmp_path: Path) -> Core:
    return Core(tmp_path)


def test_requests_run_one_at_a_time_in_order(core: Core) -> None:
    kernel = core.kernel()
    first, second, third = (core.execute(kernel, f"echo {i}") for i in range(3))
    assert core.link.forwarded == [("k", first.msg_id)]
    assert kernel.state is KernelState.BUSY and list(kernel.queue) == [second, third]
    core.answer(kernel, first)
    assert core.link.forwarded[-1] == ("k", second.msg_id)
    core.answer(kernel, second)
    core.answer(kernel, third)
    assert [p.execution_count for p in (first, second, third)] == [1, 2, 3]
    assert kernel.state is KernelState.IDLE and kernel.executions == 3


def test_requests_wait_for_the_agent_to_register(core: Core) -> None:
    kernel = core.kernel(ready=False)
    pending = core.execute(kernel)
    assert kernel.state is KernelState.STARTING and core.link.forwarded == []
    core.register(kernel)
    assert core.link.forwarded == [("k", pending.msg_id)] and kernel.running is pending


def test_an_unreachable_agent_keeps_the_request_at_the_head_of_the_queue(core: Core) -> None:
    kernel = core.kernel()
    core.link.reachable = False
    pending = core.execute(kernel)
    assert list(kernel.queue) == [pending] and kernel.running is None
    core.link.reachable = True
    findings = core.check(time.monotonic())
    assert [f.verdict for f in findings] == [Verdict.RETRY]
    assert kernel.running is pending


def test_stop_on_error_aborts_what_that_client_queued(core: Core) -> None:
    kernel = core.kernel()
    failing = core.execute(kernel, "false", stop_on_error=True)
    queued = core.execute(kernel, "echo never")
    core.answer(kernel, failing, status="error")
    assert core.sink.replies[queued.msg_id]["ename"] == ErrorName.ABORTED
    assert core.link.forwarded == [("k", failing.msg_id)]


def test_interrupt_signals_the_agent_or_cancels_what_waits(core: Core) -> None:
    starting = core.kernel("s", ready=False)
    waiting = core.execute(starting)
    assert core.scheduler.interrupt(starting) is True
    assert core.sink.replies[waiting.msg_id]["ename"] == ErrorName.INTERRUPTED
    assert core.link.interrupts == []
    ready = core.kernel("r")
    assert core.scheduler.interrupt(ready) is False  # nothing runs
    core.execute(ready)
    assert core.scheduler.interrupt(ready) is True and core.link.interrupts == ["r", "r"]


def test_an_idle_kernel_expires_after_its_ttl_and_a_busy_one_never(core: Core) -> None:
    idle = core.kernel("idle", ttl=10)
    busy = core.kernel("busy", ttl=10)
    core.execute(busy, "sleep 1000")
    start = time.monotonic()

    def beating(now: float) -> float:  # both agents keep heartbeating
        for kernel in (idle, busy):
            assert kernel.inc is not None
            kernel.inc.last_beat = now
        return now

    assert core.check(beating(start + 5)) == []
    findings = core.check(beating(start + 60))
    assert [(f.verdict, f.kernel.name) for f in findings] == [(Verdict.EXPIRED, "idle")]
    assert "idle" not in core.registry.by_name and idle.phase is Phase.GONE
    assert ("idle", KernelEvent.EXPIRED, findings[0].reason) in core.announce.events
    assert busy.phase is Phase.READY and "busy" in core.registry.by_name


def test_a_kernel_with_a_running_background_process_is_not_idle(tmp_path: Path) -> None:
    core = Core(tmp_path)
    kernel = core.kernel("web", ttl=10)
    assert kernel.inc is not None
    start = time.monotonic()
    # What the agent's heartbeats say: one background process runs.
    core.lifecycle.heard(kernel, None, 1)
    kernel.inc.last_beat = start + 60
    assert core.check(start + 60) == [] and kernel.phase is Phase.READY
    assert kernel.to_json(start + 60)["processes"] == 1
    core.lifecycle.heard(kernel, None, 0)  # it exited: the kernel is idle since its last command
    kernel.inc.last_beat = start + 61
    [finding] = core.check(start + 61)
    assert (finding.verdict, finding.kernel.name) == (Verdict.EXPIRED, "web")
    # Configured so: a kernel expires at its TTL, and its processes end with it.
    (tmp_path / "other").mkdir()
    other = Core(tmp_path / "other", expire_with_processes=True)
    kernel = other.kernel("web", ttl=10)
    assert kernel.inc is not None
    other.lifecycle.heard(kernel, None, 1)
    kernel.inc.last_beat = start + 60
    [finding] = liveness.check([kernel], [], {}, start + 60, other.config.dead_after, True)
    assert finding.verdict is Verdict.EXPIRED


def test_a_silent_agent_is_dead_and_its_requests_say_why(core: Core) -> None:
    kernel = core.kernel()
    pending = core.execute(kernel)
    assert kernel.inc is not None
    now = kernel.inc.last_beat + core.config.dead_after + 0.5
    [finding] = core.check(now)
    assert finding.verdict is Verdict.DIED and "no heartbeat" in finding.reason
    reply = core.sink.replies[pending.msg_id]
    assert reply["ename"] == ErrorName.KERNEL_DIED and "no heartbeat" in reply["evalue"]
    assert kernel.phase is Phase.DEAD and core.provisioner.handles[0].killed


def test_an_agent_whose_process_ended_is_dead_and_the_next_request_restarts_it(
    core: Core,
) -> None:
    kernel = core.kernel()
    first_id = kernel.id
    core.provisioner.handles[0].ended = "exit status 9"
    [finding] = core.check(time.monotonic())
    assert (finding.verdict, finding.reason) == (Verdict.DIED, "exit status 9")
    again = core.creation.get_or_create("k", "local", core.cwd)
    assert again is kernel and kernel.phase is Phase.STARTING
    assert kernel.id != first_id and kernel.restarts == 1 and len(core.provisioner.started) == 2
    assert any(e[1] is KernelEvent.RESTARTED for e in core.announce.events)


def test_an_agent_that_never_registers_is_dead_after_the_start_timeout(core: Core) -> None:
    kernel = core.kernel(ready=False)
    assert kernel.inc is not None
    started = kernel.inc.started_at
    assert core.check(started + liveness.START_TIMEOUT - 1) == []
    kernel.inc.progress_at = started + 20  # an image pull reported progress: it waits longer
    assert core.check(started + liveness.START_TIMEOUT + 5) == []
    [finding] = core.check(started + 20 + liveness.PREPARE_TIMEOUT + 1)
    assert finding.verdict is Verdict.DIED and "being prepared" in finding.reason
    # Its very first start failed: the name is not kept bound to options that cannot run.
    assert kernel.phase is Phase.GONE and "k" not in core.registry.by_name


def test_a_kernel_whose_agent_cannot_start_is_not_kept(core: Core) -> None:
    core.provisioner.fail = "no such shell"
    kernel = core.creation.get_or_create("k", "local", core.cwd)
    assert kernel.phase is Phase.GONE and "k" not in core.registry.by_name
    with pytest.raises(RequestError, match="not kept") as refused:
        core.execute(kernel)
    assert refused.value.ename == ErrorName.KERNEL_DIED


def test_restart_aborts_what_was_pending_and_starts_a_fresh_agent(core: Core) -> None:
    kernel = core.kernel()
    running, queued = core.execute(kernel), core.execute(kernel)
    old = kernel.inc
    core.lifecycle.restart(kernel, "asked")
    for pending in (running, queued):
        assert core.sink.replies[pending.msg_id]["ename"] == ErrorName.KERNEL_RESTARTED
    assert core.link.shutdowns == ["k"] and old is not None and old.handle is None
    assert kernel.inc is not old and kernel.phase is Phase.STARTING and not kernel.pending
    assert core.link.forwarded == [("k", running.msg_id)]  # the queued one never went


def adopted(core: Core) -> Kernel:
    """A kernel as a restarted broker re-creates it from a record: its agent not back yet."""
    from stigmer_kernel.broker.model import Incarnation
    from stigmer_kernel.protocol import new_key

    inc = Incarnation.new("old", new_key())
    inc.handle = FakeHandle()
    return core.creation.adopted(
        "old", "local", inc, ttl=60, cwd=core.cwd, sandbox=(None, None, None),
        parent=None, parent_cwd=None, escalation=None,
    )  # fmt: skip


def test_a_kernel_left_by_a_dead_broker_goes_if_its_agent_does_not_come_back(
    core: Core,
) -> None:
    kernel = adopted(core)
    inc = kernel.inc
    assert inc is not None
    assert kernel.state is KernelState.STARTING and kernel.phase is Phase.ADOPTING
    grace = max(5.0, 3 * core.config.dead_after)
    assert core.check(inc.started_at + grace - 1) == []
    [finding] = core.check(inc.started_at + grace + 1)
    assert finding.verdict is Verdict.UNADOPTABLE and kernel.phase is Phase.GONE


def test_a_heartbeat_reattaches_an_adopted_agent_with_its_session(core: Core) -> None:
    kernel = adopted(core)
    pending = core.execute(kernel)
    assert core.link.forwarded == []
    core.lifecycle.reattached(kernel, f"{kernel.id}:1:hb".encode(), {"pid": 5})
    assert kernel.phase is Phase.READY and core.link.forwarded == [("old", pending.msg_id)]


def test_phases_move_only_as_allowed() -> None:
    kernel = Kernel(name="k", mode="local", ttl=1.0, cwd="/")
    kernel.move(Phase.READY)
    with pytest.raises(IllegalMove):
        kernel.move(Phase.STARTING)  # a fresh agent comes only through closing or death
    kernel.move(Phase.CLOSING)
    kernel.move(Phase.GONE)
    with pytest.raises(IllegalMove):
        kernel.move(Phase.READY)


def test_limits_refuse_one_kernel_too_many(tmp_path: Path) -> None:
    core = Core(tmp_path, max_kernels_per_client=2)
    core.creation.get_or_create("a", "local", core.cwd, client=b"c1")
    core.creation.get_or_create("b", "local", core.cwd, client=b"c1")
    with pytest.raises(RequestError) as refused:
        core.creation.get_or_create("c", "local", core.cwd, client=b"c1")
    assert refused.value.ename == ErrorName.TOO_MANY_KERNELS
    core.creation.get_or_create("c", "local", core.cwd, client=b"c2")  # another client may
