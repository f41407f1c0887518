"""Liveness and idle expiry, as a pure function: kernels and the clock in, verdicts out.

:func:`check` looks at every kernel (and every warm-pool sandbox) and says what must happen to
it; it changes nothing. The lifecycle applies the verdicts (lifecycle.py). An agent counts as
dead when its process or container ended (what ``handle.poll()`` said, gathered by the caller),
when it stops heartbeating for ``dead_after`` seconds, or when it never registers: 30 s after its
start, or 600 s after the last progress report of an image pull or build. A kernel left by a
dead broker that its agent does not re-attach to within a few heartbeats is removed. A kernel
with nothing pending expires ``ttl`` seconds after its last activity; a busy kernel never does,
nor (unless ``expire_with_processes``) one whose agent reports a running background process
(an auto kernel: on either side).
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from .model import Kernel, Phase

#: Seconds an agent may take to register.
START_TIMEOUT = 30.0
#: ... counted from the last progress report while its sandbox image is prepared.
PREPARE_TIMEOUT = 600.0


class Verdict(enum.Enum):
    DIED = "died"  # its agent is gone: the kernel is marked dead (restarted on next use)
    UNADOPTABLE = "unadoptable"  # left by a dead broker, its agent did not come back: removed
    EXPIRED = "expired"  # idle past its TTL: removed
    RETRY = "retry"  # a request waits for a ready agent: hand it on again
    POOL_LOST = "pool_lost"  # a warm-pool sandbox died (or never came up): dropped, refilled


@dataclass(frozen=True)
class Finding:
    verdict: Verdict
    kernel: Kernel
    reason: str = ""
    never_registered: bool = False  # DIED/POOL_LOST: it never came up (a start that failed)


def check(
    kernels: Iterable[Kernel],
    pooled: Iterable[Kernel],
    ended: Mapping[str, str | None],
    now: float,
    dead_after: float,
    expire_with_processes: bool = False,
) -> list[Finding]:
    """What must happen to each kernel now. ``ended``: by incarnation id, why its agent's
    process or container ended (``handle.poll()``), None while it runs."""
    findings: list[Finding] = []
    for kernel in pooled:
        why = ended.get(kernel.id) if kernel.handle is not None else "no agent"
        registered = kernel.agent_identity is not None
        silent = (
            now - _last_beat(kernel) > dead_after
            if registered
            else start_overdue(kernel, now) is not None
        )
        if why is None and silent:
            why = "no heartbeat"
        if why is not None:
            findings.append(
                Finding(Verdict.POOL_LOST, kernel, why, never_registered=not registered)
            )
    for kernel in kernels:
        finding = _check_agent(kernel, ended, now, dead_after)
        if finding is not None:
            findings.append(finding)
            continue  # what else it needs is seen on the next check, in its new phase
        if kernel.queue and kernel.running is None and (kernel.ready or kernel.mode == "auto"):
            findings.append(Finding(Verdict.RETRY, kernel))
        if (
            not kernel.busy
            and kernel.phase not in (Phase.STARTING, Phase.ADOPTING)
            and now - kernel.last_activity > kernel.ttl
            and (expire_with_processes or not running_processes(kernel))
        ):
            findings.append(
                Finding(
                    Verdict.EXPIRED,
                    kernel,
                    f"idle for {now - kernel.last_activity:.0f}s (ttl {kernel.ttl:g}s)",
                )
            )
    return findings


def _check_agent(
    kernel: Kernel, ended: Mapping[str, str | None], now: float, dead_after: float
) -> Finding | None:
    if kernel.phase in (Phase.DEAD, Phase.GONE, Phase.CLOSING) or kernel.handle is None:
        return None
    why = ended.get(kernel.id)
    if kernel.phase is Phase.ADOPTING:
        grace = max(5.0, 3 * dead_after)
        if why is None and now - _started(kernel) > grace:
            why = f"its agent did not come back within {grace:g}s"
        if why is None:
            return None
        return Finding(
            Verdict.UNADOPTABLE,
            kernel,
            f"it could not be re-adopted after the server restarted ({why})",
        )
    if why is not None:
        return Finding(Verdict.DIED, kernel, why, never_registered=kernel.phase is Phase.STARTING)
    if kernel.phase is Phase.STARTING:
        overdue = start_overdue(kernel, now)
        if overdue is None:
            return None
        return Finding(Verdict.DIED, kernel, overdue, never_registered=True)
    silent = now - _last_beat(kernel)
    if silent > dead_after:
        return Finding(
            Verdict.DIED, kernel, f"agent stopped answering: no heartbeat for {silent:.1f}s"
        )
    return None


def running_processes(kernel: Kernel) -> int:
    """Background processes its agent (an auto kernel: its sides' agents) said run."""
    own = kernel.inc.processes if kernel.inc is not None and kernel.phase is Phase.READY else 0
    return own + sum(running_processes(side) for side in kernel.children.values())


def start_overdue(kernel: Kernel, now: float) -> str | None:
    """Why a starting agent counts as failed, or None while it may still register."""
    inc = kernel.inc
    if inc is None:
        return None
    due = inc.handle.due_from if inc.handle is not None else 0.0
    if due is None:
        return None  # waiting for a pool member: the handle's poll() bounds that
    started = max(inc.started_at, due)
    if inc.progress_at > started:  # its image is being pulled or built
        if now - inc.progress_at > PREPARE_TIMEOUT:
            return f"its sandbox image was being prepared, then nothing for {PREPARE_TIMEOUT:g}s"
        return None
    if now - started > START_TIMEOUT:
        return f"agent did not register in {START_TIMEOUT:g}s"
    return None


def _last_beat(kernel: Kernel) -> float:
    return kernel.inc.last_beat if kernel.inc is not None else 0.0


def _started(kernel: Kernel) -> float:
    return kernel.inc.started_at if kernel.inc is not None else 0.0
