"""The broker: one asyncio process between clients and execution agents.

It owns the kernel registry, queues requests per kernel and hands them to agents one at a time,
routes outputs back to the client that asked (and to Jupyter iopub subscribers), watches agents'
heartbeats, expires idle kernels and tells clients the truth: a request on a dead kernel gets an
error reply naming the cause, never silence. It never runs commands itself.

Its sockets are registered with one :class:`~.reactor.Reactor`, which pumps them without
blocking and sends without blocking (see reactor.py and docs/architecture.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import time
from typing import Any

import zmq

from .._version import __version__
from ..config import Config, ExecutionMode
from ..curve import ClientKeys, keypair
from ..errors import (
    ProtocolError,
    RequestError,
    RuntimeDirError,
    ServerAlreadyRunning,
    StigmerError,
)
from ..protocol import (
    ErrorName,
    ExecStatus,
    KernelEvent,
    KernelState,
    Message,
    MsgType,
    new_key,
)
from ..protocol.constants import OUTPUT_WINDOW
from ..protocol.session import Session, split_ids
from ..provisioners import AgentHandle, AgentSpec, LocalProvisioner, Provisioner
from ..provisioners.container import TCP_HOST
from ..provisioners.docker import DockerProvisioner
from ..provisioners.workspace import check_workspace
from ..runtime import RuntimeDir, ServerLock
from . import adoption
from . import options as options_of
from .connections import (
    AGENT_CAP_PER_KERNEL,
    AGENT_LIMITS,
    CLIENT_RCVHWM,
    CLIENT_TCP_CAP,
    ConnectionGuard,
    Limits,
    apply_limits,
    raise_fd_limit,
)
from .flow import OutputFlow
from .kernels import NAME_RE, REMOTE, Kernel, Pending, Registry
from .native import NativeFrontend
from .peers import IPC_ZAP_DOMAIN
from .pool import WarmPool
from .reactor import Reactor
from .remote import RemoteAgent, RemoteEndpoints
from .routing import AutoRouter

log = logging.getLogger("stigmer.broker")

_START_TIMEOUT = 30.0  # seconds an agent may take to register
_PREPARE_TIMEOUT = 600.0  # ... counted from the last progress report while its image is prepared
_STOP_GRACE = 2.0  # seconds an agent gets to exit after agent_shutdown
_MAX_PENDING = 10000  # requests queued on one kernel
_CLIENT_HWM = 1000  # messages (<= 64 KiB each) queued for one client before drops start


class Broker:
    def __init__(self, config: Config, provisioners: dict[str, Provisioner] | None = None) -> None:
        from .jupyter import JupyterFrontend

        self.config = config
        self.runtime = RuntimeDir(config.runtime_dir)
        self.key = new_key()
        self.registry = Registry()
        self.registry.on_unindex = self._unindexed
        self.provisioners: dict[str, Provisioner] = provisioners or {
            ExecutionMode.LOCAL.value: LocalProvisioner(),
            ExecutionMode.SANDBOX.value: DockerProvisioner(config, self.runtime),
        }
        self.lock = ServerLock(self.runtime)
        self.ctx: zmq.Context[Any] = zmq.Context()
        self.client_sock: zmq.Socket[Any] | None = None
        self.agent_sock: zmq.Socket[Any] | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.stopping = asyncio.Event()
        self.started_wall = time.time()
        self.stats = {
            "client_msgs": 0,
            "agent_msgs": 0,
            "dropped_bad": 0,
            "dropped_slow": 0,
            "connections_refused": 0,  # beyond a socket's cap
            "connections_closed": 0,  # after a bad message, or holding memory (connections.py)
        }
        self.connections = ConnectionGuard(self, config.broker_memory_mb << 20)
        self.reactor = Reactor(self.stats, guard=self.connections, on_gone=self.client_gone)
        self.native = NativeFrontend(self)
        self.frontends: list[NativeFrontend] = [self.native]
        self.client_tcp_sock: zmq.Socket[Any] | None = None
        self.agent_tcp_sock: zmq.Socket[Any] | None = None
        # STIGMER_SANDBOX_TRANSPORT=tcp: sandbox agents' CurveZMQ socket, and its address as
        # containers see it.
        self.sandbox_tcp_sock: zmq.Socket[Any] | None = None
        self.sandbox_endpoint: str | None = None
        self.remote = RemoteEndpoints(self)
        self.jupyter = JupyterFrontend(self)
        self.pool = WarmPool(self)
        self.auto = AutoRouter(self)
        self.flow = OutputFlow(self)
        self._reaping: list[AgentHandle] = []
        self._maintenance: asyncio.Task[None] | None = None
        self._sweeper: asyncio.Task[None] | None = None

    @property
    def clients(self) -> Session:
        return self.native.session

    def _unindexed(self, kernel_id: str) -> None:
        """An incarnation ended: its record and its sandbox's CurveZMQ key go."""
        adoption.forget(self.runtime.path, kernel_id)
        self.remote.ephemeral.pop(kernel_id, None)

    # -- start and stop -----------------------------------------------------------------------
    def bind(self) -> None:
        """Take the runtime directory and bind both ROUTERs."""
        self.connections.set_budget(raise_fd_limit())
        self.runtime.ensure()
        if not self.lock.acquire():
            info = self.runtime.read_info() or {}
            raise ServerAlreadyRunning(
                f"a stigmer server (pid {info.get('pid', '?')}) already runs in "
                f"{self.runtime.path} — use it, stop it with `stigmer server stop`, or pick "
                "another STIGMER_RUNTIME_DIR"
            )
        # We hold the lock: anything left here belongs to a dead server. Its key stays, so its
        # clients carry on; its kernels' records let their surviving agents be re-adopted.
        for path in (self.runtime.client_socket, self.runtime.agent_socket):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        try:
            self.key = self.runtime.read_key()
            self.native.session = Session(self.key)
        except RuntimeDirError:
            self.runtime.write_key(self.key)
        kernels_dir = self.runtime.path / "kernels"
        kernels_dir.mkdir(mode=0o700, exist_ok=True)
        records = adoption.load(self.runtime.path)
        shutil.rmtree(self.runtime.path / "jupyter", ignore_errors=True)
        (self.runtime.path / "jupyter").mkdir(mode=0o700)
        # Only processes of this server's mount namespace get through (peers.py): ZAP asks.
        self.remote.zap()
        self.client_sock = self._router(
            self.runtime.client_endpoint,
            Limits(self.config.max_message_bytes, CLIENT_RCVHWM),
            zap_domain=IPC_ZAP_DOMAIN,
        )
        # Per agent, at most ~200 chunks (<= 64 KiB) wait for the broker; beyond that the agent's
        # sends block and its command waits on its pipe: backpressure, not memory.
        self.agent_sock = self._router(self.runtime.agent_endpoint, AGENT_LIMITS)
        # Mounted in every sandbox: its connections are capped and watched (connections.py).
        agent_cap = AGENT_CAP_PER_KERNEL * self.config.max_kernels + 64
        self.connections.watch(self.agent_sock, "agents.sock", agent_cap)
        for path in (self.runtime.client_socket, self.runtime.agent_socket):
            os.chmod(path, 0o600)
        self.reactor.register(self.client_sock, self.native.on_frames)
        self.reactor.register(self.agent_sock, self._on_agent_frames)
        if self.config.client_endpoint:
            self.client_tcp_sock = self.remote.tcp_router(
                self.config.client_endpoint,
                limits=Limits(self.config.max_message_bytes, CLIENT_RCVHWM),
            )
            self.connections.watch(self.client_tcp_sock, "client TCP socket", CLIENT_TCP_CAP)
            self.native_tcp = NativeFrontend(self, "client_tcp_sock")
            self.native_tcp.session = Session(self.key)
            self.frontends.append(self.native_tcp)
            self.reactor.register(self.client_tcp_sock, self.native_tcp.on_frames)
        if self.config.agent_endpoint:
            tcp = self.agent_tcp_sock = self.remote.tcp_router(
                self.config.agent_endpoint, limits=AGENT_LIMITS
            )
            self.connections.watch(tcp, "agent TCP socket", agent_cap)
            self.reactor.register(tcp, lambda frames: self._on_agent_frames(frames, tcp))
        if self.config.sandbox_transport == "tcp":
            self._bind_sandbox_tcp()
        adoption.adopt_all(self, records)
        self.runtime.write_info(
            {
                "pid": os.getpid(),
                "version": __version__,
                "client_endpoint": self.runtime.client_endpoint,
                "agent_endpoint": self.runtime.agent_endpoint,
                "tcp_client_endpoint": self.config.client_endpoint,
                "started": self.started_wall,
            }
        )

    def _bind_sandbox_tcp(self) -> None:
        """The CurveZMQ socket sandbox agents reach over the container network, on the port a
        previous server of this runtime directory used if it is free (its containers come back
        to it after a crash)."""
        network = self.config.sandbox_network
        if network == "none" or network.startswith("container:"):
            raise StigmerError(
                f"STIGMER_SANDBOX_TRANSPORT=tcp needs a container network of its own, and "
                f"STIGMER_SANDBOX_NETWORK={network} gives the agent no way to the broker — use "
                "bridge (or a network name), or the ipc transport"
            )
        host, dial = sandbox_tcp_addresses(self.config.sandbox_agent_bind)
        port_file = self.runtime.path / "sandbox-agent.port"
        endpoints = [f"tcp://{host}:*"]
        with contextlib.suppress(OSError, ValueError):
            endpoints.insert(0, f"tcp://{host}:{int(port_file.read_text())}")
        for endpoint in endpoints:
            try:
                sock = self.remote.tcp_router(
                    endpoint, curve=True, sandbox=True, limits=AGENT_LIMITS
                )
                break
            except StigmerError as exc:
                if not endpoint.endswith(":*"):
                    log.warning(
                        "%s; sandbox containers of a previous server that used that port cannot "
                        "come back",
                        exc,
                    )
                error = exc
        else:
            raise StigmerError(f"no socket for sandbox agents over tcp: {error}")
        self.connections.watch(
            sock, "sandbox TCP socket", AGENT_CAP_PER_KERNEL * self.config.max_kernels + 64
        )
        port = int(sock.getsockopt_string(zmq.LAST_ENDPOINT).rsplit(":", 1)[1])
        port_file.write_text(str(port))
        log.info("sandbox agents reach this server at tcp://%s:%d (CurveZMQ)", host, port)
        self.sandbox_tcp_sock = sock
        self.sandbox_endpoint = f"tcp://{TCP_HOST}:{port}"
        sandbox = self.provisioners.get(ExecutionMode.SANDBOX.value)
        if sandbox is not None:
            sandbox.set_tcp_host(dial)  # what TCP_HOST names inside containers

        def on_frames(frames: list[Any]) -> None:
            user = frames[-1].get("User-Id")  # the z85 key ZAP accepted for that connection
            self._on_agent_frames([f.bytes for f in frames], sock, curve_user=str(user))

        self.reactor.register(sock, on_frames, raw=True)  # it reads each message's ZAP User-Id

    def _router(
        self, endpoint: str, limits: Limits, zap_domain: str | None = None
    ) -> zmq.Socket[Any]:
        sock: zmq.Socket[Any] = self.ctx.socket(zmq.ROUTER)
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        sock.setsockopt(zmq.ROUTER_HANDOVER, 1)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDHWM, _CLIENT_HWM)
        apply_limits(sock, limits)  # before bind: libzmq copies them to the listener there
        if zap_domain is not None:
            sock.setsockopt(zmq.ZAP_DOMAIN, zap_domain.encode())
        sock.bind(endpoint)
        return sock

    async def serve(self) -> None:
        """Run until :meth:`request_stop` (or a signal in the foreground)."""
        if self.client_sock is None:
            self.bind()
        self.loop = asyncio.get_running_loop()
        self.reactor.start(self.loop)
        self._maintenance = asyncio.create_task(self._maintain(), name="stigmer-maintenance")
        # Leftovers of dead servers go, without delaying start-up.
        self._sweeper = asyncio.create_task(self._sweep(), name="stigmer-sweep")
        sandbox = self.provisioners.get(ExecutionMode.SANDBOX.value)
        if sandbox is not None and self.pool.size and self.pool.workspace:
            with contextlib.suppress(RequestError):
                sandbox.check_available()
                self.pool.refill()
        log.info(
            "stigmer server %s ready (pid %d) on %s",
            __version__,
            os.getpid(),
            self.runtime.client_endpoint,
        )
        try:
            await self.stopping.wait()
        finally:
            await self._shutdown()

    async def _sweep(self) -> None:
        """Remove dead servers' leftovers once each backend answers: a slow or not yet started
        engine is asked again, less often each time (up to once a minute)."""
        for provisioner in self.provisioners.values():
            delay = 1.0
            while True:
                # Every kernel known now (being re-adopted, or adopted by the time of a retry).
                known = {k.id for k in self.registry} | {
                    k.handle.resource_id
                    for k in self.registry
                    if k.handle is not None and k.handle.resource_id
                }
                done = await asyncio.get_running_loop().run_in_executor(
                    None, provisioner.reap_leftovers, known, self.started_wall
                )
                if done is not None:
                    break
                await asyncio.sleep(delay)
                delay = min(delay * 2, 60.0)

    def request_stop(self) -> None:
        self.stopping.set()

    async def _shutdown(self) -> None:
        log.info("stopping: ending %d kernel(s)", len(self.registry))
        if self._sweeper is not None:
            self._sweeper.cancel()
        if self._maintenance is not None:
            self._maintenance.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._maintenance
        self.pool.drain()
        for kernel in self.registry:
            self.remove_kernel(kernel, KernelEvent.SHUTDOWN, "the server is shutting down")
        deadline = time.monotonic() + _STOP_GRACE
        while self._reaping and time.monotonic() < deadline:
            self._reap_handles()
            await asyncio.sleep(0.05)
        for handle in self._reaping:
            handle.kill()
            handle.cleanup()
        self._reaping.clear()
        for provisioner in self.provisioners.values():
            provisioner.close()
        self.flow.close()
        self.reactor.retry_deferred()
        self.reactor.close(linger=500)  # the last replies ("server is shutting down") go out
        self.remote.close()
        self.connections.close()
        self.ctx.term()
        for path in (
            self.runtime.client_socket,
            self.runtime.agent_socket,
            self.runtime.info_path,
            self.runtime.key_path,
        ):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        for directory in ("kernels", "jupyter"):
            shutil.rmtree(self.runtime.path / directory, ignore_errors=True)
        self.lock.release()
        log.info("stopped")

    def client_gone(self, client: bytes, sock: zmq.Socket[Any] | None = None) -> None:
        """A peer of ``sock`` (default: the native client socket) is gone: forget it there."""
        sock = sock or self.client_sock
        self.reactor.forget_peer(sock, client)
        self.flow.client_gone(client)
        for kernel in self.registry:
            frontend = kernel.clients.get(client)
            if frontend is not None and frontend.sock is sock:
                del kernel.clients[client]

    def kernel_event(self, kernel: Kernel, event: KernelEvent, reason: str, **kw: Any) -> None:
        """Tell the native clients attached to ``kernel``, on whichever socket they use."""
        for frontend in self.frontends:
            frontend.kernel_event(kernel, event, reason, **kw)

    def agent_socket(self, kernel: Kernel) -> zmq.Socket[Any] | None:
        return kernel.agent_sock or self.agent_sock

    # -- kernels --------------------------------------------------------------------------------
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
        existing = self.registry.by_name.get(name)
        asked = options_of.chosen(options or {})  # what the caller chose, not its defaults
        if existing is not None and existing.mode != REMOTE and "mode" not in asked:
            mode = existing.mode  # no mode chosen: the kernel's own (remote ones must be asked)
        mode = mode or self.config.execution_mode.value
        if mode != REMOTE and mode not in {m.value for m in ExecutionMode}:
            raise RequestError(
                f"unknown mode {mode!r}: use local, sandbox, auto or remote", ErrorName.BAD_REQUEST
            )
        kernel = self.registry.by_name.get(name)
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
            self._check_remote_alive(kernel)
            return kernel
        if kernel is not None:
            if kernel.mode != mode:
                raise options_of.mode_mismatch(kernel, mode)
            options_of.check_existing(kernel, options or {}, asked, self.config)
            if kernel.state is KernelState.DEAD:
                self.restart_kernel(
                    kernel,
                    f"the previous agent died ({kernel.death_reason}); session state was reset",
                    requester=client,
                    quiet=not kernel.came_up,  # no session was ever lost: nothing to announce
                )
            return kernel
        if "cwd" not in asked:  # a cwd the caller chose wins over the server's kernel_cwd
            cwd = self.config.kernel_cwd or cwd
        cwd = cwd or os.path.expanduser("~")
        if not isinstance(cwd, str) or not os.path.isabs(cwd) or not os.path.isdir(cwd):
            raise RequestError(f"working directory {cwd!r} does not exist", ErrorName.BAD_REQUEST)
        self._check_kernel_limits(client)
        kernel = self.create_kernel(name, mode, cwd, ttl, options)
        kernel.creator = client
        return kernel

    def _check_kernel_limits(self, client: bytes | None) -> None:
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
        mine = sum(1 for k in top if client is not None and k.creator == client)
        limit = self.config.max_kernels_per_client
        if client is not None and mine >= limit:
            raise RequestError(
                f"this client already created {mine} live kernels (max_kernels_per_client "
                f"{limit}) — reuse or shut down some, or raise STIGMER_MAX_KERNELS_PER_CLIENT "
                "and restart the server",
                ErrorName.TOO_MANY_KERNELS,
            )

    def create_kernel(
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
        if mode == ExecutionMode.AUTO.value:
            auto = self.auto.create(name, cwd, ttl, options or {})
            auto.ttls = ttls
            if ttls and auto.ttl_asked is None:
                auto.ttl = max(ttls.values())
            return auto
        provisioner = self.provisioners.get(mode)
        if provisioner is None:
            raise RequestError(
                f"{mode} mode is not available in this version of stigmer-kernel "
                "— run with --mode local or --mode sandbox",
                ErrorName.MODE_UNAVAILABLE,
            )
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
        if mode == "sandbox":
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
        if mode == "sandbox" and kernel.workspace:
            pooled = self.pool.take(kernel.workspace, kernel.image, kernel.requirements)
            if pooled is not None:
                self.pool.adopt(kernel, pooled)
                log.info("kernel %s took a warm sandbox (%s)", kernel.name, kernel.id)
                return kernel
            self.start_agent(kernel)
            self.pool.note_workspace(kernel.workspace)
            return kernel
        self.start_agent(kernel)
        return kernel

    def start_agent(self, kernel: Kernel) -> None:
        provisioner = self.provisioners[kernel.mode]
        kernel.new_incarnation(new_key())
        self.registry.index(kernel)
        assert kernel.session is not None
        endpoint: str | None = self.runtime.agent_endpoint
        curve = None
        kernel.agent_sock = None
        if kernel.mode == ExecutionMode.SANDBOX.value and self.sandbox_tcp_sock is not None:
            public, secret = keypair()  # this incarnation's, known to ZAP until it ends
            self.remote.ephemeral[kernel.id] = public
            curve = ClientKeys(self.remote.server_keys()[0], public, secret)
            endpoint, kernel.agent_sock = self.sandbox_endpoint, self.sandbox_tcp_sock
        spec = AgentSpec(
            kernel_id=kernel.id,
            kernel_name=kernel.name,
            key=kernel.session.key,
            endpoint=str(endpoint),
            curve=curve,
            cwd=kernel.cwd,
            workdir=self.runtime.path / "kernels" / kernel.id,
            shell=self.config.shell,
            heartbeat_interval=self.config.heartbeat_interval,
            orphan_timeout=max(60.0, 10 * self.config.dead_after),
            command_timeout=self.config.command_timeout,
            output_limit=0,  # streamed output is never cut (clients cap what they keep)
            image=kernel.image,
            requirements=kernel.requirements,
            workspace=kernel.workspace,
            on_progress=self._progress_reporter(kernel),
            env=kernel.env,
        )
        try:
            kernel.handle = provisioner.start(spec)
        except Exception as exc:  # OSError, docker errors...: the kernel cannot start
            log.error("could not start an agent for kernel %s: %s", kernel.name, exc)
            self.kernel_died(kernel, f"could not start an agent: {exc}")
            return
        log.info("starting kernel %s (%s, %s mode)", kernel.name, kernel.id, kernel.mode)
        adoption.save(self, kernel)
        if kernel.channels is not None and kernel.parent is None:
            kernel.channels.new_incarnation(kernel)

    def _progress_reporter(self, kernel: Kernel) -> Any:
        """A thread-safe callback telling attached clients how a sandbox start goes."""
        loop = self.loop

        target = kernel.parent or kernel  # an auto kernel's clients hear about its sandbox side

        def progressed(text: str) -> None:
            kernel.progress_at = time.monotonic()  # a slow pull or build is not a hung start
            self.kernel_event(target, KernelEvent.PROGRESS, text)

        def report(text: str) -> None:
            log.info("kernel %s: %s", kernel.name, text)
            if loop is not None and not loop.is_closed():
                loop.call_soon_threadsafe(progressed, text)

        return report

    def restart_kernel(
        self,
        kernel: Kernel,
        reason: str,
        requester: bytes | None = None,
        requested: bool = False,
        quiet: bool = False,
    ) -> None:
        """A fresh agent (and session) for ``kernel``; everyone attached is told.

        ``requested``: a client asked for it (a Jupyter restart), rather than a dead agent
        being replaced on the next request. ``quiet``: nobody is told (a kernel whose agent
        never came up had no session to lose).
        """
        self.check_restartable(kernel)
        if kernel.mode == ExecutionMode.AUTO.value:  # no agent of its own: restart its sides
            kernel.closing = True  # what it queued is aborted, not handed to a dying side
            try:
                for child in list(kernel.children.values()):
                    self.restart_kernel(child, reason, requester, requested)
            finally:
                self.fail_all(kernel, ExecStatus.ABORTED, ErrorName.KERNEL_RESTARTED, reason)
                kernel.closing = False
            kernel.execution_count = 0
            kernel.escalation = None  # a fresh sandbox holds nothing installed (sticky ends)
            if kernel.channels is not None:
                kernel.session_id = os.urandom(16).hex()
                kernel.channels.new_incarnation(kernel)
            self.kernel_event(
                kernel, KernelEvent.RESTARTED, reason, exclude=requester, requested=requested
            )
            return
        if kernel.state is not KernelState.DEAD:
            kernel.closing = True  # nothing aborted here may reach the old agent meanwhile
            try:
                self.fail_all(kernel, ExecStatus.ABORTED, ErrorName.KERNEL_RESTARTED, reason)
            finally:
                kernel.closing = False
            self.stop_agent(kernel)
        kernel.restarts += 1
        self.start_agent(kernel)
        if quiet:
            return
        if requester is not None:  # the others are told now; the requester with its reply
            kernel.notices.append({"event": KernelEvent.RESTARTED.value, "reason": reason})
        self.kernel_event(
            kernel, KernelEvent.RESTARTED, reason, exclude=requester, requested=requested
        )

    def check_restartable(self, kernel: Kernel) -> None:
        """Raise :class:`RequestError` if ``kernel`` cannot be restarted now (before anything
        is stopped, so a refused restart changes nothing)."""
        if kernel.mode == REMOTE:
            self._check_remote_alive(kernel)
            raise RequestError(
                f"remote kernel {kernel.name!r} cannot be restarted from here — restart its "
                "agent on its host",
                ErrorName.RESTART_UNAVAILABLE,
            )
        modes = [c.mode for c in kernel.children.values()] if kernel.children else [kernel.mode]
        for mode in modes:
            provisioner = self.provisioners.get(mode)
            if provisioner is not None:
                # No engine: say so now, rather than fail to start a container later.
                provisioner.check_available()

    @staticmethod
    def _check_remote_alive(kernel: Kernel) -> None:
        if kernel.state is KernelState.DEAD:
            raise RequestError(
                f"remote kernel {kernel.name!r} lost its agent ({kernel.death_reason}) — start "
                "the agent again on its host",
                ErrorName.KERNEL_DIED,
            )

    def kernel_died(self, kernel: Kernel, reason: str) -> None:
        if kernel.state is KernelState.DEAD:
            return
        log.warning("kernel %s died: %s", kernel.name, reason)
        never_up = kernel.state is KernelState.STARTING  # this incarnation never registered
        # A kernel whose very first start failed (a missing image...) is not kept: its name
        # must not stay bound to a mode and options that cannot run. Jupyter kernels stay (a
        # Jupyter program holds their connection), as do re-adopted and pooled ones.
        forget = (
            never_up
            and not kernel.came_up
            and kernel.restarts == 0
            and not kernel.adopting
            and kernel.channels is None
            and kernel not in self.pool.kernels
        )
        kernel.state = KernelState.DEAD
        kernel.death_reason = reason
        if kernel.handle is not None:
            kernel.handle.kill()
            self._reaping.append(kernel.handle)
            kernel.handle = None
        kernel.agent_identity = None
        self.registry.unindex(kernel)
        message = f"kernel {kernel.name!r} died: {reason}"
        if forget:
            message += "; the kernel was not kept, so the next request for it starts a new one"
        elif never_up:
            message += f"; remove it with `stigmer kernels shutdown {kernel.name}`"
        self.fail_all(kernel, ExecStatus.ERROR, ErrorName.KERNEL_DIED, message)
        if forget:
            self.remove_kernel(kernel, KernelEvent.DIED, reason, tell_successor=False)
            return
        self.kernel_event(kernel, KernelEvent.DIED, reason)
        if kernel.channels is not None:
            kernel.channels.publish_status("dead", None)

    def remove_kernel(
        self, kernel: Kernel, event: KernelEvent, reason: str, tell_successor: bool = True
    ) -> None:
        """Remove ``kernel``; the next kernel of its name is told why (``tell_successor``)."""
        log.info("kernel %s %s: %s", kernel.name, event.value, reason)
        kernel.closing = True  # an auto kernel's queue must not go to a side being removed
        for child in list(kernel.children.values()):
            self.remove_kernel(child, event, reason)
        if kernel.parent is not None and kernel.parent.children.get(kernel.mode) is kernel:
            del kernel.parent.children[kernel.mode]
        self.fail_all(
            kernel,
            ExecStatus.ABORTED,
            ErrorName.KERNEL_SHUTDOWN,
            f"kernel {kernel.name!r} was {event.value}: {reason}",
        )
        self.kernel_event(kernel, event, reason)
        self.stop_agent(kernel)
        gone = {"event": event.value, "reason": reason, "at": time.time()}
        self.registry.remove(kernel, {**gone, "tell": tell_successor})
        kernel.state = KernelState.DEAD
        if kernel.channels is not None and kernel.parent is None:
            self.jupyter.close_channels(kernel)

    def stop_agent(self, kernel: Kernel) -> None:
        if kernel.agent_identity is not None and kernel.session is not None:
            bye = kernel.session.msg(MsgType.AGENT_SHUTDOWN.value, {})
            self.reactor.send(
                self.agent_socket(kernel), kernel.session.serialize(bye, [kernel.agent_identity])
            )
        self.registry.unindex(kernel)
        if kernel.handle is not None:
            handle = kernel.handle
            kernel.handle = None
            if isinstance(handle, RemoteAgent):
                handle.kill()  # not ours to wait for: agent_shutdown ends it on its host
            self._reaping.append(handle)
            if self.loop is not None and not self.stopping.is_set():
                self.loop.call_later(_STOP_GRACE, self._force_kill, handle)
            elif kernel.agent_identity is None:
                handle.kill()
        kernel.agent_identity = None

    def _force_kill(self, handle: AgentHandle) -> None:
        if handle.poll() is None:
            log.warning("agent %s did not exit in time; killing it", handle.pid)
            handle.kill()
        self._reap_handles()

    def _reap_handles(self) -> None:
        running = []
        for handle in self._reaping:
            if handle.poll() is None:
                running.append(handle)
            else:
                handle.cleanup()
        self._reaping = running

    # -- requests -------------------------------------------------------------------------------
    def submit(self, kernel: Kernel, pending: Pending) -> None:
        """Queue a request for ``kernel``'s agent (is_complete goes at once: it needs no turn)."""
        if len(kernel.pending) >= _MAX_PENDING:
            raise RequestError(
                f"kernel {kernel.name!r} has {_MAX_PENDING} requests queued; try later",
                ErrorName.KERNEL_BUSY,
            )
        if pending.msg_id in kernel.pending:
            raise RequestError("duplicate msg_id", ErrorName.BAD_REQUEST)
        if kernel.state is KernelState.DEAD and not kernel.adopting:
            # e.g. its agent could not even start: nothing would ever take the request
            if self.registry.by_name.get(kernel.name) is not kernel:  # its first start failed
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
        if not (
            pending.kind is MsgType.IS_COMPLETE_REQUEST
            and kernel.ready
            and self._forward(kernel, pending)
        ):
            kernel.queue.append(pending)
        self.advance(kernel)
        kernel.refresh_state()

    def advance(self, kernel: Kernel) -> None:
        """Hand the next queued request to the agent if it is free."""
        if kernel.closing:
            return
        if kernel.mode == ExecutionMode.AUTO.value:
            self.auto.advance(kernel)
            return
        counter = kernel.parent or kernel  # an auto kernel numbers the runs of both sides
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
            if not self._forward(kernel, pending):
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
            if pending.kind is MsgType.IS_COMPLETE_REQUEST:
                continue  # needs no turn
            if pending.kind is MsgType.EXECUTE_REQUEST:
                kernel.executions += 1
                kernel.last_activity = time.monotonic()
            kernel.running = pending
            if kernel.channels is not None:
                kernel.channels.started(kernel, pending)

    def _forward(self, kernel: Kernel, pending: Pending) -> bool:
        """Send ``pending`` to the agent; False if its socket cannot reach it at all."""
        assert kernel.session is not None and kernel.agent_identity is not None
        if pending.kind is MsgType.EXECUTE_REQUEST:
            pending.content["window"] = OUTPUT_WINDOW  # flow control of its output (flow.py)
        msg = Message(header=pending.header, content=pending.content)
        frames = kernel.session.serialize(msg, [kernel.agent_identity])
        sock = self.agent_socket(kernel)
        # A full queue defers the request (it will arrive); an unreachable peer does not.
        sent = self.reactor.send(sock, frames, must_arrive=True)
        if not sent and not self.reactor.deferred(sock, frames[0]):
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
        self.flow.forget(pending)
        if kernel.running is pending:
            kernel.running = None
        with contextlib.suppress(ValueError):
            kernel.queue.remove(pending)
        if pending.decision is not None:
            content = {**content, "auto": pending.decision, "mode": pending.decision["mode"]}
            frames = None  # the reply changes: it is built anew, not forwarded
        elif pending.tell_mode:
            content = {**content, "mode": kernel.mode}
            frames = None
        if content.get("exit_code") == 137 and kernel.handle is not None:
            hint = kernel.handle.exit_hint(pending.run_at)
            if hint:
                content = {**content, "evalue": f"{content.get('evalue')}: {hint}"}
                frames = None
        pending.sink.reply(kernel, pending, content, frames)
        if kernel.channels is not None:
            kernel.channels.finished(kernel, pending, content)
        if pending.kind is MsgType.EXECUTE_REQUEST:
            kernel.last_activity = time.monotonic()
            if content.get("status") != ExecStatus.OK.value and pending.stop_on_error:
                self.abort_queued(kernel.parent or kernel, pending.sink.kind)
        kernel.refresh_state()
        self.advance(kernel)
        parent = kernel.parent
        if parent is not None and parent.pending.pop(pending.msg_id, None) is not None:
            if parent.running is pending:
                parent.running = None
            parent.last_activity = time.monotonic()
            parent.refresh_state()
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
        """Interrupt what runs; if the agent is still starting, cancel what waits."""
        if kernel.mode == ExecutionMode.AUTO.value:
            return self.auto.interrupt(kernel, parent)
        if kernel.agent_identity is not None and kernel.session is not None:
            note = kernel.session.msg(MsgType.INTERRUPT_REQUEST.value, {}, parent)
            self.reactor.send(
                self.agent_socket(kernel), kernel.session.serialize(note, [kernel.agent_identity])
            )
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

    # -- agents ---------------------------------------------------------------------------------
    def _on_agent_frames(
        self,
        frames: list[bytes],
        sock: zmq.Socket[Any] | None = None,
        curve_user: str | None = None,
    ) -> None:
        """An agent's message. ``curve_user``: on the sandboxes' tcp socket, the CurveZMQ key
        its connection presented, which must be the one made for the kernel it speaks for."""
        self.stats["agent_msgs"] += 1
        sock = sock or self.agent_sock
        try:
            ids, msg_frames = split_ids(frames)
            if len(ids) != 1:
                raise ProtocolError(f"expected one routing id, got {len(ids)}")
            identity = ids[0]
            kernel_id = identity.split(b":", 1)[0].decode("ascii", "replace")
            kernel = self.registry.by_id.get(kernel_id)
            if kernel is None or kernel.session is None:
                if kernel_id in self.registry.retired:
                    return  # last words of an agent we asked to stop
                if (
                    sock is not None
                    and sock is self.agent_tcp_sock  # never the sandboxes' own sockets
                    and self.remote.join(identity, msg_frames, sock)
                ):
                    return  # a remote agent (CurveZMQ-authenticated) joined
                raise ProtocolError(f"message from an unknown agent {identity[:80]!r}")
            if curve_user is not None:
                expected = self.remote.ephemeral.get(kernel_id)
                if expected is None or expected.decode() != curve_user:
                    raise ProtocolError("a sandbox agent speaking for another kernel (its key)")
            if sock is not self.agent_socket(kernel) and kernel.agent_identity is not None:
                raise ProtocolError("an agent message on another kernel's socket")
            kernel.session.verify_frames(msg_frames)
            self.connections.prove(sock)
            mtype, parent_id = kernel.session.decode_routing(msg_frames)
        except ProtocolError as exc:
            self.stats["dropped_bad"] += 1
            self.reactor.drop_log("an agent", exc)
            return
        kernel.last_beat = time.monotonic()
        pending = kernel.pending.get(parent_id) if parent_id else None
        if mtype == MsgType.STREAM.value:
            if pending is not None and identity == kernel.agent_identity:
                self.flow.output(kernel, pending, msg_frames)
                if kernel.channels is not None and not pending.silent:
                    kernel.channels.output(kernel, pending, kernel.session.decode(msg_frames))
            return
        try:
            msg = kernel.session.decode(msg_frames)
        except ProtocolError as exc:
            self.reactor.drop_log("an agent", exc)
            return
        if mtype in _REPLIES:
            if pending is None or identity != kernel.agent_identity:
                return  # a request already answered (e.g. failed when the kernel shut down)
            cwd = msg.content.get("cwd")
            if isinstance(cwd, str):
                kernel.cwd = cwd

            def finish() -> None:
                if kernel.pending.get(pending.msg_id) is not pending:
                    return  # answered meanwhile (its kernel died, ...)
                if pending.lost:
                    msg.content["lost_messages"] = pending.lost
                self.complete(kernel, pending, msg.content, None if pending.lost else msg_frames)

            if not self.flow.hold_reply(pending, finish):  # after the output it waits behind
                finish()
        elif mtype == MsgType.INPUT_REQUEST.value:
            if pending is not None:
                pending.sink.input_request(kernel, pending, msg)
        elif mtype == MsgType.STDIN_ACK.value:  # credit for streamed stdin, to its client
            sink = pending.sink if pending is not None else None
            if isinstance(sink, NativeFrontend) and identity == kernel.agent_identity:
                assert pending is not None
                sink.stdin_ack(pending, msg, msg_frames)
        elif mtype == MsgType.AGENT_HEARTBEAT.value:
            if kernel.adopting and kernel.agent_identity is None:
                adoption.attach(self, kernel, identity, msg.content)
            pgid = msg.content.get("shell_pgid")
            if isinstance(pgid, int) and pgid > 0:
                self._set_shell_pgid(kernel, pgid)
            ack = kernel.session.msg(MsgType.AGENT_HEARTBEAT.value, {}, msg)
            self.reactor.send(sock, kernel.session.serialize(ack, [identity]))
        elif mtype == MsgType.AGENT_REGISTER.value:
            self.register_agent(kernel, identity, msg, sock)
        elif mtype == MsgType.AGENT_GOODBYE.value:
            pass
        else:
            self.reactor.drop_log("an agent", f"unknown message type {mtype!r}")

    def input_reply(self, kernel: Kernel, value: str, parent: Message) -> None:
        if kernel.agent_identity is None or kernel.session is None or kernel.running is None:
            return
        msg = kernel.session.msg(MsgType.INPUT_REPLY.value, {"value": value}, parent)
        self.reactor.send(
            self.agent_socket(kernel), kernel.session.serialize(msg, [kernel.agent_identity])
        )

    def _set_shell_pgid(self, kernel: Kernel, pgid: int) -> None:
        kernel.shell_pgid = pgid
        if kernel.handle is not None:
            kernel.handle.shell_pgid = pgid

    def register_agent(
        self,
        kernel: Kernel,
        identity: bytes,
        msg: Message,
        sock: zmq.Socket[Any] | None = None,
    ) -> None:
        """An agent's registration: it now serves ``kernel`` (on ``sock``)."""
        if kernel.state is not KernelState.STARTING or kernel.agent_identity is not None:
            self.reactor.drop_log("an agent", f"second registration for kernel {kernel.id} refused")
            return
        assert kernel.session is not None
        kernel.agent_identity = identity
        kernel.came_up = True
        if sock is not None and sock is not self.agent_sock:
            kernel.agent_sock = sock
        kernel.agent_info = dict(msg.content)
        pid = msg.content.get("pid")
        kernel.agent_pid = pid if isinstance(pid, int) else None
        pgid = msg.content.get("shell_pgid")
        if isinstance(pgid, int) and pgid > 0:
            self._set_shell_pgid(kernel, pgid)
        kernel.state = KernelState.IDLE
        kernel.last_beat = time.monotonic()
        welcome = kernel.session.msg(MsgType.AGENT_WELCOME.value, {"kernel": kernel.name}, msg)
        self.reactor.send(self.agent_socket(kernel), kernel.session.serialize(welcome, [identity]))
        log.info(
            "kernel %s ready (agent pid %s, %.0f ms)",
            kernel.name,
            pid,
            (time.monotonic() - kernel.started_at) * 1000,
        )
        if kernel.channels is not None:
            kernel.channels.publish_status("idle", None)
        adoption.save(self, kernel)
        self.advance(kernel)
        kernel.refresh_state()

    # -- liveness and expiry ----------------------------------------------------------------------
    async def _maintain(self) -> None:
        """Liveness and idle expiry, a few times per heartbeat interval."""
        period = min(0.25, self.config.heartbeat_interval / 4)
        while True:
            await asyncio.sleep(period)
            try:
                self._check_kernels()
                self._reap_handles()
                self.reactor.retry_deferred()
                self.connections.check_memory()
            except Exception:
                log.exception("error in maintenance")

    def _check_kernels(self) -> None:
        now = time.monotonic()
        for pooled in list(self.pool.kernels):
            ended = pooled.handle.poll() if pooled.handle is not None else "no agent"
            stale = (
                now - pooled.last_beat > self.config.dead_after
                if pooled.agent_identity is not None
                else _start_overdue(pooled, now) is not None
            )
            if ended is not None or stale:
                log.warning("warm sandbox %s lost: %s", pooled.id, ended or "no heartbeat")
                self.pool.forget(pooled, failed_to_start=pooled.agent_identity is None)
                self.kernel_died(pooled, ended or "no heartbeat")
                self.pool.refill()
        for kernel in self.registry:
            if kernel.state is not KernelState.DEAD and kernel.handle is not None:
                ended = kernel.handle.poll()
                if kernel.adopting:
                    grace = max(5.0, 3 * self.config.dead_after)
                    if ended is not None or now - kernel.started_at > grace:
                        self.remove_kernel(
                            kernel,
                            KernelEvent.SHUTDOWN,
                            f"it could not be re-adopted after the server restarted "
                            f"({ended or f'its agent did not come back within {grace:g}s'})",
                        )
                        continue
                elif ended is not None:
                    self.kernel_died(kernel, ended)
                elif kernel.state is KernelState.STARTING:
                    overdue = _start_overdue(kernel, now)
                    if overdue is not None and kernel.agent_sock is self.sandbox_tcp_sock:
                        overdue += (
                            f" (it dials {self.sandbox_endpoint} over the container network: "
                            "does a firewall drop it, or is STIGMER_SANDBOX_AGENT_BIND wrong?)"
                        )
                    if overdue is not None:
                        self.kernel_died(kernel, overdue)
                elif now - kernel.last_beat > self.config.dead_after:
                    self.kernel_died(
                        kernel,
                        f"agent stopped answering: no heartbeat for {now - kernel.last_beat:.1f}s",
                    )
            if (
                kernel.queue
                and kernel.running is None
                and (kernel.ready or kernel.mode == ExecutionMode.AUTO.value)
            ):
                self.advance(kernel)  # a request that could not be handed on: again
            if (
                not kernel.busy
                and kernel.state is not KernelState.STARTING
                and now - kernel.last_activity > kernel.ttl
            ):
                self.remove_kernel(
                    kernel,
                    KernelEvent.EXPIRED,
                    f"idle for {now - kernel.last_activity:.0f}s (ttl {kernel.ttl:g}s)",
                )


def sandbox_tcp_addresses(bind: str | None) -> tuple[str, str]:
    """(address the broker listens on for tcp sandbox agents, what ``host.docker.internal``
    maps to in their containers), or :class:`StigmerError` when no address fits."""
    import ipaddress
    import sys

    if bind:
        try:
            address = ipaddress.IPv4Address(bind)
        except ValueError:
            raise StigmerError(
                f"STIGMER_SANDBOX_AGENT_BIND={bind!r}: give an IPv4 address (containers reach "
                "the host by IPv4), e.g. 0.0.0.0 or docker0's address"
            ) from None
        if address.is_unspecified or address.is_loopback:
            return str(address), "host-gateway"  # the engine's own route to the host
        return str(address), str(address)
    bridge = bridge_address()
    if bridge is not None:
        return bridge, "host-gateway"  # host-gateway is docker0's address
    if sys.platform in ("darwin", "win32"):
        return "127.0.0.1", "host-gateway"  # Docker Desktop forwards host.docker.internal
    raise StigmerError(
        "STIGMER_SANDBOX_TRANSPORT=tcp: this host has no docker0 bridge to listen on — set "
        "STIGMER_SANDBOX_AGENT_BIND to an address your containers reach the host by"
    )


def bridge_address(interface: str = "docker0") -> str | None:
    """The IPv4 address of Docker's bridge on this host (what host-gateway names), if any."""
    import fcntl
    import socket
    import struct

    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        packed = struct.pack("256s", interface.encode()[:15])
        answer = fcntl.ioctl(probe.fileno(), 0x8915, packed)  # SIOCGIFADDR
        return socket.inet_ntoa(answer[20:24])
    except OSError:
        return None
    finally:
        probe.close()


def _start_overdue(kernel: Kernel, now: float) -> str | None:
    """Why a starting agent counts as failed, or None while it may still register."""
    if kernel.progress_at > kernel.started_at:  # its image is being pulled or built
        if now - kernel.progress_at > _PREPARE_TIMEOUT:
            return f"its sandbox image was being prepared, then nothing for {_PREPARE_TIMEOUT:g}s"
        return None
    if now - kernel.started_at > _START_TIMEOUT:
        return f"agent did not register in {_START_TIMEOUT:g}s"
    return None


_REPLIES = {
    MsgType.EXECUTE_REPLY.value,
    MsgType.COMPLETE_REPLY.value,
    MsgType.INSPECT_REPLY.value,
    MsgType.IS_COMPLETE_REPLY.value,
}


def run_foreground(config: Config) -> int:
    """Run a broker in this process until SIGTERM or SIGINT."""
    logging.basicConfig(
        level=getattr(logging, config.log_level.upper(), logging.INFO),
        format="%(asctime)s %(name)s[%(process)d] %(levelname)s %(message)s",
    )
    broker = Broker(config)
    broker.bind()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.add_signal_handler(sig, broker.request_stop)
        await broker.serve()

    asyncio.run(main())
    return 0
