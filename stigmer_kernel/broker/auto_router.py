"""Auto kernels: one name, two warm sessions — a local one and a sandbox one.

An auto kernel ``a1`` has no agent of its own. Its requests wait in its own queue (so they stay
in order whichever side runs them) and each goes, when its turn comes, to the child kernel
``a1~local`` or ``a1~sandbox`` chosen by :func:`stigmer_kernel.auto.decide`. The children are
ordinary kernels (listed, expired, restarted like any other) created on first use.

The workspace is the same directory on both sides (mounted at /workspace in the sandbox), so a
``cd`` inside the workspace carries across: before a command runs on the other side than the
previous one, that side changes to the translated directory. Variables, functions, aliases and
background jobs do not carry across (two shells), nor do directories outside the workspace.

Sticky escalation: the first command that changes the sandbox side (:attr:`Decision.escalates`)
is recorded as the kernel's ``escalation`` when it is handed to that side (not when it fell back
to the host), and :func:`decide` sends later commands after it (``auto_sticky``, or the request's
``sticky``). A restart of the auto kernel ends it; a side that dies or expires does not (what it
installed in the workspace, ``node_modules`` or a ``.venv``, is still there, and still runs in
the sandbox).
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ..auto import Escalation, decide
from ..errors import RequestError
from ..protocol import ErrorName, ExecStatus, Message, MsgType
from ..provisioners.container import WORKSPACE
from .model import Kernel, Pending, Phase

if TYPE_CHECKING:
    from ..config import Config
    from .creation import Creation
    from .lifecycle import Lifecycle
    from .scheduler import Scheduler


class AutoRouter:
    """Auto mode's hooks into the scheduler (:class:`~.scheduler.AutoHooks`) and into
    creation (``Creation.create_auto``)."""

    def __init__(
        self, config: Config, scheduler: Scheduler, lifecycle: Lifecycle, creation: Creation
    ) -> None:
        self.config = config
        self.scheduler = scheduler
        self.lifecycle = lifecycle
        self.creation = creation
        self.records = lifecycle.records

    def create(self, name: str, cwd: str, ttl: Any, options: dict[str, Any]) -> Kernel:
        config = self.config
        workspace = config.sandbox_workspace or options.get("workspace") or cwd
        if not isinstance(workspace, str) or not os.path.isdir(workspace):
            raise RequestError(f"workspace {workspace!r} does not exist", ErrorName.BAD_REQUEST)
        asked = isinstance(ttl, (int, float)) and not isinstance(ttl, bool) and ttl > 0
        kernel = Kernel(
            name=name,
            mode="auto",
            cwd=cwd,
            # Each side expires on its own mode's TTL unless one was asked for; the auto kernel
            # (which removes both sides when it goes) outlives either.
            ttl=float(ttl) if asked else max(config.kernel_ttl, config.sandbox_ttl),
        )
        kernel.ttl_asked = float(ttl) if asked else None
        image, requirements = options.get("sandbox_image"), options.get("requirements")
        kernel.image = image if isinstance(image, str) and image else None
        kernel.requirements = requirements if isinstance(requirements, str) else None
        kernel.workspace = os.path.realpath(workspace)
        env = options.get("kernel_env")
        kernel.env = env if isinstance(env, dict) else None  # for its local side only
        kernel.move(Phase.READY)  # no agent of its own: its sides start when first asked
        self.lifecycle.registry.add(kernel)
        return kernel

    # -- dispatch ---------------------------------------------------------------------------------
    def advance(self, kernel: Kernel) -> None:
        while kernel.running is None and kernel.queue and not kernel.closing:
            pending = kernel.queue.popleft()
            before = kernel.escalation
            if pending.kind is not MsgType.EXECUTE_REQUEST:
                side = kernel.last_side or "local"  # completion etc.: where the user last was
            else:
                sticky = self.config.auto_sticky if pending.sticky is None else pending.sticky
                decision = decide(
                    pending.code,
                    requirements=bool(kernel.requirements),
                    escalation=before,
                    sticky=sticky,
                    workspace=kernel.workspace,
                )
                pending.decision = decision.to_dict()
                side = decision.mode
                if side == "sandbox" and before is None and decision.escalates:
                    # Set first: a side taken from the warm pool saves its record (with this)
                    # as it is created, for a server that re-adopts it after a restart.
                    kernel.escalation = Escalation.of(pending.code, decision)
            try:
                child = self._child(kernel, side, pending)
                if child.mode != "sandbox":
                    kernel.escalation = before  # it fell back to the host: nothing changed there
                self._carry_cwd(kernel, child, pending)
                self.scheduler.delegate(kernel, child, pending)
                if kernel.escalation is not before:
                    self.records.save(child)  # a server restart keeps it (if it has a record)
            except RequestError as exc:
                kernel.escalation = before
                message = str(exc)
                if pending.decision is not None and exc.ename == ErrorName.MODE_UNAVAILABLE:
                    message = (
                        f"this command needs the sandbox ({pending.decision['reason']}), but "
                        f"{message.split(' — ')[0]} — start Docker, run it with --mode local, "
                        "or let auto mode fall back to the host "
                        "(stigmer config set auto_local_fallback true)"
                    )
                self.scheduler.fail(kernel, pending, ExecStatus.ERROR, exc.ename, message)
                continue
            kernel.last_side = child.mode

    def _child(self, kernel: Kernel, side: str, pending: Pending) -> Kernel:
        child = kernel.children.get(side)
        if child is not None and child.phase is Phase.DEAD:
            self.lifecycle.restart(child, f"the previous agent died ({child.death_reason})")
        if child is not None:
            return child
        options = {
            "sandbox_image": kernel.image,
            "requirements": kernel.requirements,
            "workspace": kernel.workspace,
            "kernel_env": kernel.env,
        }
        try:
            child = self.creation.create(
                f"{kernel.name}~{side}", side, kernel.cwd, kernel.ttl_asked, options, parent=kernel
            )
        except RequestError as exc:
            # Only a missing engine falls back to the host: a refused workspace (or any other
            # reason the sandbox will not take the command) never sends it there.
            fallback = self.config.auto_local_fallback and exc.ename == ErrorName.MODE_UNAVAILABLE
            if side != "sandbox" or not fallback:
                raise
            decision = pending.decision or {}
            pending.decision = {
                "mode": "local",
                "rule": decision.get("rule", "default"),
                "reason": f"{decision.get('reason')}; no sandbox ({exc}), so it ran locally "
                "(auto_local_fallback)",
            }
            return self._child(kernel, "local", pending)
        kernel.children[side] = child
        return child

    def _carry_cwd(self, kernel: Kernel, child: Kernel, pending: Pending) -> None:
        """Going to the other side: start from the same place in the workspace.

        The directory is resolved on the host (``..`` and symlinks followed) and carried only
        if it lies inside the workspace: the sandbox side reports its own cwd, and code there
        must not pick the host side's directory (``PWD=/workspace/../..``, or a symlink in the
        workspace pointing at ``/``). Otherwise the side keeps its own cwd and the reply says why.
        """
        previous = kernel.children.get(kernel.last_side or "")
        if previous is None or previous is child or not kernel.workspace:
            return
        if pending.kind is not MsgType.EXECUTE_REQUEST:
            return
        roots = {
            mode: provisioner.workspace_root(kernel.workspace)
            for mode, provisioner in self.lifecycle.provisioners.items()
        }
        target = translate(previous.cwd, previous.mode, child.mode, kernel.workspace, roots)
        if target is None:
            return  # outside the workspace on that side: nothing to carry
        if target is _ESCAPES:
            if pending.decision is not None:
                pending.decision = {
                    **pending.decision,
                    "reason": f"{pending.decision['reason']}; the {previous.mode} side's "
                    f"directory {previous.cwd!r} is outside the workspace on the host, so the "
                    f"{child.mode} side kept its own",
                }
            return
        pending.content["chdir"] = target

    def pass_through(self, kernel: Kernel, pending: Pending) -> None:
        """A file operation or process query: to the side it names (``side``: where the
        process runs, as its start's reply said), else the side the last command ran on."""
        side = pending.content.get("side")
        if side not in ("local", "sandbox"):
            side = kernel.last_side or "local"
        try:
            self.scheduler.submit(self._child(kernel, side, pending), pending)
        except RequestError as exc:
            self.scheduler.fail(kernel, pending, ExecStatus.ERROR, exc.ename, str(exc))

    def interrupt(self, kernel: Kernel, parent: Message | None) -> bool:
        running = kernel.running
        if running is None:
            return False
        for child in kernel.children.values():
            if running.msg_id in child.pending:
                return self.scheduler.interrupt(child, parent)
        return False


#: What :func:`translate` answers for a path that resolves outside the workspace on the host.
_ESCAPES = "\0escapes"


def translate(
    path: str,
    source: str,
    target: str,
    workspace: str,
    roots: Mapping[str, str] | None = None,
) -> str | None:
    """``path`` on the ``source`` side, as seen from the ``target`` side.

    ``roots``: where each mode's agents see the host directory ``workspace``
    (:meth:`Provisioner.workspace_root`; by default the sandbox's ``/workspace``, the host path
    itself for any other mode). None: it has no equivalent (it is outside the workspace on its
    side). :data:`_ESCAPES`: it names a place in the workspace that resolves, on the host,
    outside it (``..`` or a symlink). Anything else is a directory inside the workspace, with
    every symlink resolved on the host.
    """
    if source == target:
        return path
    roots = roots if roots is not None else {"sandbox": WORKSPACE}
    inside = roots.get(source, workspace)
    if not path.startswith("/"):
        return None
    path = posixpath.normpath(path)
    if path != inside and not path.startswith(inside.rstrip("/") + "/"):
        return None
    relative = path[len(inside.rstrip("/")) :].lstrip("/")
    host_root = os.path.realpath(workspace)
    host_path = os.path.realpath(os.path.join(host_root, relative))
    if host_path != host_root and not host_path.startswith(host_root.rstrip("/") + "/"):
        return _ESCAPES
    outside = roots.get(target)
    if outside is None or outside == workspace:
        return host_path
    rest = host_path[len(host_root.rstrip("/")) :].lstrip("/")
    return posixpath.join(outside, rest) if rest else outside
