"""Where a kernel comes from: the first request that names it, a warm-pool sandbox taken
over, a record left by a dead broker, or a remote agent that joined.

:meth:`Creation.get_or_create` is what every front end calls: the kernel of that name (restarted
if its agent died), or a new one, checked against the server's limits, whose agent the
lifecycle starts (lifecycle.py), or which takes over a warm sandbox (pool.py).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..auto import Escalation
from ..config import ExecutionMode
from ..errors import RequestError
from ..protocol import ErrorName, Message
from ..protocol.constants import CLIENT_SOCKET_SEP
from ..provisioners.workspace import check_workspace
from . import options as options_of
from .lifecycle import Lifecycle, check_remote_alive
from .model import NAME_RE, POOL_BACKEND, REMOTE, Incarnation, Kernel, Phase

#: The modes a request may name (besides remote).
_MODES = frozenset(m.value for m in ExecutionMode)

if TYPE_CHECKING:
    from .pool import WarmPool

log = logging.getLogger("stigmer.broker")


def client_owner(identity: bytes) -> bytes:
    """The client a DEALER identity belongs to: one client may use several sockets, tagged
    after :data:`CLIENT_SOCKET_SEP` (``max_kernels_per_client`` counts them together)."""
    return identity.partition(CLIENT_SOCKET_SEP)[0]


class Creation:
    def __init__(self, lifecycle: Lifecycle) -> None:
        self.lifecycle = lifecycle
        self.config = lifecycle.config
        self.registry = lifecycle.registry
        self.provisioners = lifecycle.provisioners
        self.records = lifecycle.records
        self.pool: WarmPool | None = None
        #: Auto mode: makes an auto kernel (auto_router.py); None: no auto mode.
        self.create_auto: Callable[[str, str, Any, dict[str, Any]], Kernel] | None = None

    # -- create ---------------------------------------------------------------------------------
    def get_or_create(
        self,
        name: Any,
        mode: Any,
        cwd: Any,
        ttl: Any = None,
        client: bytes | None = None,
        options: dict[str, Any] | None = None,
    ) -> Kernel:
        """The kernel called ``name``, created (and its agent started) if needed.

        Raises :class:`RequestError` with a clear message for anything that cannot be served.
        """
        if not isinstance(name, str) or not NAME_RE.fullmatch(name):
            raise RequestError(
                "kernel names are 1-64 letters, digits, '.', '_' or '-', "
                "not starting with a symbol",
                ErrorName.BAD_REQUEST,
            )
        kernel = self.registry.by_name.get(name)
        asked = options_of.chosen(options or {})  # what the caller chose, not its defaults
        if kernel is not None and kernel.mode != REMOTE and "mode" not in asked:
            mode = kernel.mode  # no mode chosen: the kernel's own (remote ones must be asked)
        mode = mode or self.config.execution_mode.value
        if mode != REMOTE and mode not in _MODES:
            raise RequestError(
                f"unknown mode {mode!r}: use local, sandbox, auto or remote", ErrorName.BAD_REQUEST
            )
        if mode == REMOTE or (kernel is not None and kernel.mode == REMOTE):
            # Only an agent that joined serves a remote kernel, and only clients that ask for
            # one reach it: a command meant for this host never runs on another one.
            if kernel is None:
                raise RequestError(
                    f"no remote agent has joined as kernel {name!r} — start one on its host "
                    f"with `python -m stigmer_kernel.agent --join {name} ...`",
                    ErrorName.NO_SUCH_KERNEL,
                )
            if kernel.mode != mode:
                raise options_of.mode_mismatch(kernel, mode)
            options_of.check_existing(kernel, options or {}, asked, self.config)
            check_remote_alive(kernel)
            return kernel
        if kernel is not None:
            if kernel.mode != mode:
                raise options_of.mode_mismatch(kernel, mode)
            options_of.check_existing(kernel, options or {}, asked, self.config)
            if kernel.phase is Phase.DEAD:
                self.lifecycle.restart(
                    kernel,
                    f"the previous agent died ({kernel.death_reason}); session state was reset",
                    requester=client,
                    quiet=not kernel.came_up,  # no session was ever lost: nothing to announce
                )
            return kernel
        if self._pool_of(mode, options or {}) is not None:
            # The member's own directory, unless the caller chose one (on the member's host).
            cwd = cwd if "cwd" in asked else ""
            if cwd and (not isinstance(cwd, str) or not os.path.isabs(cwd)):
                raise RequestError(
                    f"working directory {cwd!r} is not absolute", ErrorName.BAD_REQUEST
                )
        else:
            if "cwd" not in asked:  # a cwd the caller chose wins over the server's kernel_cwd
                cwd = self.config.kernel_cwd or cwd
            cwd = cwd or os.path.expanduser("~")
            if not isinstance(cwd, str) or not os.path.isabs(cwd) or not os.path.isdir(cwd):
                raise RequestError(
                    f"working directory {cwd!r} does not exist", ErrorName.BAD_REQUEST
                )
        self._check_limits(client)
        kernel = self.create(name, mode, cwd, ttl, options)
        kernel.creator = client
        return kernel

    def _pool_of(self, mode: str, options: dict[str, Any]) -> str | None:
        """The agent pool a new kernel of ``mode`` comes from: the request's ``pool``, else
        the ``sandbox_pool`` setting for a sandbox kernel; None: its mode's own provisioner."""
        pool = options.get("pool")
        if pool is None:
            pool = self.config.sandbox_pool if mode == ExecutionMode.SANDBOX.value else None
            if pool is not None:
                _refuse_image_options(
                    pool,
                    options,
                    " (the sandbox_pool setting sends every new sandbox kernel there)",
                )
            return pool
        if not isinstance(pool, str) or not NAME_RE.fullmatch(pool):
            raise RequestError(
                f"bad pool name {pool!r}: 1-64 letters, digits, '.', '_' or '-'",
                ErrorName.BAD_REQUEST,
            )
        if mode != ExecutionMode.SANDBOX.value:
            raise RequestError(
                f"--pool applies to sandbox kernels, not {mode} ones — add --mode sandbox",
                ErrorName.BAD_REQUEST,
            )
        _refuse_image_options(pool, options)
        return pool

    def _check_limits(self, client: bytes | None) -> None:
        """Refuse one kernel more than ``max_kernels`` (server) or ``max_kernels_per_client``."""
        top = [k for k in self.registry if k.parent is None]
        limit = self.config.max_kernels
        if len(top) >= limit:
            raise RequestError(
                f"this server already holds {len(top)} kernels (max_kernels {limit}) — shut "
                "some down (`stigmer kernels list`, `stigmer kernels shutdown NAME`) or raise "
                "STIGMER_MAX_KERNELS and restart the server",
                ErrorName.TOO_MANY_KERNELS,
            )
        owner = client_owner(client) if client is not None else None
        mine = sum(1 for k in top if k.creator is not None and client_owner(k.creator) == owner)
        limit = self.config.max_kernels_per_client
        if client is not None and mine >= limit:
            raise RequestError(
                f"this client already created {mine} live kernels (max_kernels_per_client "
                f"{limit}) — reuse or shut down some, or raise STIGMER_MAX_KERNELS_PER_CLIENT "
                "and restart the server",
                ErrorName.TOO_MANY_KERNELS,
            )

    def create(
        self,
        name: str,
        mode: str,
        cwd: str,
        ttl: Any = None,
        options: dict[str, Any] | None = None,
        parent: Kernel | None = None,
    ) -> Kernel:
        """A new kernel (name and cwd already checked); raises RequestError if it cannot be."""
        # The creating client's kernel_ttl and sandbox_ttl, if it sent them (an auto kernel's
        # sides take its own).
        ttls = parent.ttls if parent is not None else options_of.ttls(options or {}, self.config)
        if mode == ExecutionMode.AUTO.value and self.create_auto is not None:
            auto = self.create_auto(name, cwd, ttl, options or {})
            auto.ttls = ttls
            if ttls and auto.ttl_asked is None:
                auto.ttl = max(ttls.values())
            return auto
        agent_pool = self._pool_of(mode, options or {}) if parent is None else None
        provisioner = self.provisioners.get(POOL_BACKEND if agent_pool else mode)
        if provisioner is None:
            raise RequestError(
                f"{mode} mode is not available in this version of stigmer-kernel "
                "— run with --mode local or --mode sandbox",
                ErrorName.MODE_UNAVAILABLE,
            )
        if not (mode == "sandbox" and self.pool is not None and self.pool.any_ready()):
            # A container to start: the engine must answer (a stale answer waits on a ping).
            # A warm sandbox that may serve this kernel runs already: no wait before it does.
            provisioner.check_available()
        default_ttl = self.config.sandbox_ttl if mode == "sandbox" else self.config.kernel_ttl
        if ttls:
            default_ttl = ttls.get(mode, default_ttl)
        kernel = Kernel(
            name=name,
            mode=mode,
            cwd=cwd,
            ttl=float(ttl)
            if isinstance(ttl, (int, float)) and not isinstance(ttl, bool) and ttl > 0
            else default_ttl,
            parent=parent,
        )
        if parent is not None:
            kernel.channels = parent.channels  # auto: the parent's Jupyter clients see it all
        options = options or {}
        if agent_pool is not None:
            kernel.pool = agent_pool  # no host mount: files travel through the file API
        elif mode == "sandbox":
            image, requirements = options.get("sandbox_image"), options.get("requirements")
            kernel.image = image if isinstance(image, str) and image else None
            kernel.requirements = requirements if isinstance(requirements, str) else None
            workspace = self.config.sandbox_workspace or options.get("workspace") or cwd
            kernel.workspace = check_workspace(workspace, self.config)
        elif mode == ExecutionMode.LOCAL.value and isinstance(options.get("kernel_env"), dict):
            kernel.env = options["kernel_env"]  # a host kernel only: sandboxes get none of it
        gone = self.registry.gone.get(name)
        if gone is not None and gone.get("tell", True):
            kernel.notices.append(
                {"event": gone["event"], "reason": f"{gone['reason']}; a new kernel was started"}
            )
        self.registry.add(kernel)
        pool = self.pool
        if (
            pool is not None
            and kernel.workspace
            and provisioner.can_pool(kernel.image, kernel.requirements)
        ):
            pooled = pool.take(kernel.workspace)
            if pooled is not None:
                self._take_over(kernel, pooled)
                log.info("kernel %s took a warm sandbox (%s)", kernel.name, kernel.id)
                return kernel
        self.lifecycle.start_agent(kernel)
        if pool is not None and mode == "sandbox" and kernel.workspace:
            pool.note_workspace(kernel.workspace)
        return kernel

    def _take_over(self, kernel: Kernel, pooled: Kernel) -> None:
        """``kernel`` takes over a warm-pool sandbox whose agent is registered."""
        kernel.inc, pooled.inc = pooled.inc, None
        kernel.move(Phase.READY)
        kernel.came_up = True
        kernel.last_activity = time.monotonic()
        self.registry.index(kernel)
        if kernel.handle is not None:
            kernel.handle.renamed(kernel.name)
        self.records.save(kernel)  # now a named kernel: re-adoptable after a crash
        assert self.pool is not None
        self.pool.taken_by(kernel)  # its replacement starts once this kernel has answered

    def adopted(
        self,
        name: str,
        mode: str,
        inc: Incarnation,
        ttl: float,
        cwd: str,
        sandbox: tuple[Any, Any, Any],
        parent: Any,
        parent_cwd: Any,
        escalation: Escalation | None,
    ) -> Kernel:
        """A kernel left by a dead broker, waiting for its agent (``inc``) to re-attach."""
        auto = None
        if parent:
            auto = self.registry.by_name.get(str(parent))
            if auto is None and self.create_auto is not None:
                auto = self.create_auto(
                    str(parent), str(parent_cwd or cwd), ttl, {"workspace": sandbox[2]}
                )
            if auto is not None:
                auto.escalation = auto.escalation or escalation
        kernel = Kernel(
            name=name, mode=mode, ttl=ttl, cwd=cwd, parent=auto, inc=inc, phase=Phase.ADOPTING
        )
        kernel.image, kernel.requirements, kernel.workspace = sandbox
        if auto is not None:
            auto.children[mode] = kernel
            kernel.channels = auto.channels
        self.registry.add(kernel)
        self.registry.index(kernel)
        return kernel

    def joined(
        self, name: str, cwd: str, inc: Incarnation, identity: bytes, msg: Message
    ) -> Kernel:
        """A remote agent joined as kernel ``name`` (a dead remote kernel of that name, if any,
        is replaced: its Jupyter clients carry on with the new agent, as after a restart)."""
        existing = self.registry.by_name.get(name)
        if existing is not None:  # (only a dead one: remote.py refuses a live name)
            existing.move(Phase.CLOSING)
            self.registry.remove(existing, {"event": "restarted", "reason": "a new remote agent"})
            existing.move(Phase.GONE)
        kernel = Kernel(name=name, mode=REMOTE, cwd=cwd, ttl=self.config.kernel_ttl, inc=inc)
        self.registry.add(kernel)
        self.registry.index(kernel)
        if existing is not None and existing.channels is not None:
            kernel.channels, existing.channels = existing.channels, None
            kernel.channels.kernel = kernel
            kernel.channels.new_incarnation(kernel)
        self.lifecycle.registered(kernel, identity, msg, inc.sock)
        return kernel


def _refuse_image_options(pool: str, options: dict[str, Any], why: str = "") -> None:
    """A pool kernel runs on an agent the pool started, in the pool's image: the options that
    choose a sandbox's image cannot apply to it, and are refused rather than ignored."""
    for name, flag in (("sandbox_image", "--sandbox-image"), ("requirements", "--requirements")):
        if options.get(name):
            raise RequestError(
                f"{flag} cannot apply to a kernel from agent pool {pool!r}{why}: its agents "
                f"run the pool's own image — build that image with what you need (`stigmer "
                f"sandbox build pool --from IMAGE`), or leave out {flag}",
                ErrorName.BAD_REQUEST,
            )
