"""The wiring: builds the broker's parts and connects them; binds, serves and shuts down.

Nothing imports this module back. The parts, and where to look:

- the core, which imports no socket code: ``model`` (kernels, incarnations, phases),
  ``scheduler`` (where a request is queued, forwarded and completed), ``creation`` (where a
  kernel comes from: a request, the warm pool, a record, a remote agent), ``lifecycle`` (where
  an agent is started, a kernel restarted, marked dead or removed, and liveness verdicts are
  applied),
  ``liveness`` (where a kernel expires and a dead agent is detected), ``auto_router``;
- adapters around it: ``reactor`` (the socket pump), ``agents`` (the agent endpoint),
  ``native`` and ``jupyter``/``jupyter_channels`` (the front ends), ``flow`` (output flow
  control), ``pool`` (warm sandboxes), ``adoption`` (records for re-adoption), ``remote`` and
  ``sandbox_tcp`` (CurveZMQ TCP sockets), ``connections`` and ``peers`` (who may connect).

docs/architecture.md has the table of who owns what.
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
from ..errors import RequestError, RuntimeDirError, ServerAlreadyRunning
from ..protocol import KernelEvent, Session, new_key
from ..provisioners import LocalProvisioner, Provisioner
from ..provisioners.docker import DockerProvisioner
from ..runtime import RuntimeDir, ServerLock
from . import adoption, liveness
from .agents import AgentEndpoint
from .auto_router import AutoRouter
from .connections import (
    AGENT_CAP_PER_KERNEL,
    AGENT_LIMITS,
    CLIENT_RCVHWM,
    CLIENT_TCP_CAP,
    SNDHWM,
    ConnectionGuard,
    Limits,
    apply_limits,
    raise_fd_limit,
)
from .creation import Creation
from .flow import OutputFlow
from .jupyter import JupyterFrontend
from .lifecycle import STOP_GRACE, Lifecycle
from .model import POOL_BACKEND, Kernel, Registry
from .native import NativeFrontend
from .peers import IPC_ZAP_DOMAIN
from .pool import WarmPool
from .pools import PoolProvisioner, Pools
from .reactor import Reactor
from .remote import RemoteEndpoints
from .sandbox_tcp import bind_sandbox_tcp
from .scheduler import Scheduler

log = logging.getLogger("stigmer.broker")


class Broker:
    def __init__(self, config: Config, provisioners: dict[str, Provisioner] | None = None) -> None:
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
        self.client_tcp_sock: zmq.Socket[Any] | None = None
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
        self.remote = RemoteEndpoints(self)
        self.flow = OutputFlow(self)
        self.pools = Pools(self)
        self.provisioners.setdefault(POOL_BACKEND, PoolProvisioner(self.pools))
        self.agents = AgentEndpoint(self, self.remote, self.flow)
        self.scheduler = Scheduler(self.agents)
        self.scheduler.on_answered.append(lambda _kernel, pending: self.flow.forget(pending))
        self.pool = WarmPool(self)
        self.scheduler.on_answered.append(self.pool.answered)
        self.records = adoption.Records(
            self.runtime.path,
            pooled=lambda kernel: kernel in self.pool.kernels,
            curve_public=self.remote.ephemeral.get,
        )
        self.lifecycle = Lifecycle(
            config,
            self.registry,
            self.provisioners,
            self.scheduler,
            link=self.agents,
            announce=self,
            records=self.records,
            workdir=lambda kernel_id: self.runtime.path / "kernels" / kernel_id,
        )
        self.lifecycle.pool = self.pool
        self.creation = Creation(self.lifecycle)
        self.creation.pool = self.pool
        self.auto = AutoRouter(config, self.scheduler, self.lifecycle, self.creation)
        self.scheduler.auto = self.auto
        self.creation.create_auto = self.auto.create
        self.native = NativeFrontend(self)
        self.frontends: list[NativeFrontend] = [self.native]
        self.jupyter = JupyterFrontend(self)
        self._maintenance: asyncio.Task[None] | None = None
        self._sweeper: asyncio.Task[None] | None = None
        # What the runtime directory and the sockets were when bound (device, inode): once one
        # is gone or replaced, no client can reach this server and its files are not its own.
        self._home: list[tuple[int, int]] = []
        self.runtime_lost = False

    @property
    def clients(self) -> Session:
        return self.native.session

    def _unindexed(self, kernel_id: str) -> None:
        """An incarnation ended: its record and its sandbox's CurveZMQ key go."""
        self.records.forget(kernel_id)
        self.agents.retired(kernel_id)

    # -- what the core announces (service.Announcer) ------------------------------------------
    def kernel_event(self, kernel: Kernel, event: KernelEvent, reason: str, **kw: Any) -> None:
        """Tell the native clients attached to ``kernel``, on whichever socket they use."""
        for frontend in self.frontends:
            frontend.kernel_event(kernel, event, reason, **kw)

    def removed(self, kernel: Kernel) -> None:
        self.jupyter.close_channels(kernel)

    # -- start and stop -----------------------------------------------------------------------
    def bind(self) -> None:
        """Take the runtime directory, bind the sockets, re-adopt what a dead server left."""
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
        # Per agent, at most 64 chunks (<= 1 MiB) wait for the broker; beyond that the agent's
        # sends block and its command waits on its pipe: backpressure, not memory. Registered
        # raw: a stream's data frame is forwarded as the zmq.Frame it came in (agents.py).
        agent_sock = self.agents.sock = self._router(self.runtime.agent_endpoint, AGENT_LIMITS)
        # Mounted in every sandbox: its connections are capped and watched (connections.py).
        agent_cap = AGENT_CAP_PER_KERNEL * self.config.max_kernels + 64
        self.connections.watch(agent_sock, "agents.sock", agent_cap)
        for path in (self.runtime.client_socket, self.runtime.agent_socket):
            os.chmod(path, 0o600)
        self.reactor.register(self.client_sock, self.native.on_frames)
        self.reactor.register(agent_sock, self.agents.receiver(agent_sock), raw=True)
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
            tcp = self.agents.tcp_sock = self.pools.sock = self.remote.tcp_router(
                self.config.agent_endpoint, limits=AGENT_LIMITS, agents=True
            )
            self.connections.watch(tcp, "agent TCP socket", agent_cap)
            if self.config.allow_plain_tcp:
                self.reactor.register(tcp, self.agents.receiver(tcp), raw=True)
            else:  # it reads each message's ZAP User-Id: pool members are told apart by it
                self.reactor.register(tcp, self.agents.receiver(tcp, curve=True), raw=True)
        if self.config.sandbox_transport == "tcp":
            sock, self.agents.sandbox_endpoint = bind_sandbox_tcp(
                self.config,
                self.runtime.path,
                self.remote,
                self.connections,
                self.provisioners.get(ExecutionMode.SANDBOX.value),
            )
            self.agents.sandbox_sock = sock
            # It reads each message's ZAP User-Id: the key that connection presented.
            self.reactor.register(sock, self.agents.receiver(sock, curve=True), raw=True)
        adoption.adopt_all(self, records)
        self._home = self._where()
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

    def _router(
        self, endpoint: str, limits: Limits, zap_domain: str | None = None
    ) -> zmq.Socket[Any]:
        sock: zmq.Socket[Any] = self.ctx.socket(zmq.ROUTER)
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        sock.setsockopt(zmq.ROUTER_HANDOVER, 1)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDHWM, SNDHWM)
        apply_limits(sock, limits)  # before bind: libzmq copies them to the listener there
        if zap_domain is not None:
            sock.setsockopt(zmq.ZAP_DOMAIN, zap_domain.encode())
        sock.bind(endpoint)
        return sock

    async def serve(self) -> None:
        """Run until :meth:`request_stop` (or a signal in the foreground)."""
        if self.client_sock is None:
            self.bind()
        self.loop = self.lifecycle.loop = asyncio.get_running_loop()
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

    def _where(self) -> list[tuple[int, int]]:
        """(device, inode) of the runtime directory and of the two sockets; [] if one is gone."""
        where = []
        for path in (self.runtime.path, self.runtime.client_socket, self.runtime.agent_socket):
            try:
                st = os.stat(path)
            except OSError:
                return []
            where.append((st.st_dev, st.st_ino))
        return where

    def check_home(self) -> None:
        """Stop if the runtime directory or a socket was removed or replaced (e.g. the directory
        deleted, or a new server started in a new directory of the same name): new clients cannot
        reach this server, and it must not remove files that are now another server's."""
        if self.runtime_lost or not self._home or self._where() == self._home:
            return
        self.runtime_lost = True
        log.warning(
            "the runtime directory %s or its sockets were removed or replaced: no client can "
            "reach this server any more; stopping (its files are left alone)",
            self.runtime.path,
        )
        self.request_stop()

    async def _shutdown(self) -> None:
        log.info("stopping: ending %d kernel(s)", len(self.registry))
        self.lifecycle.stopping = True
        if self._sweeper is not None:
            self._sweeper.cancel()
        if self._maintenance is not None:
            self._maintenance.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._maintenance
        self.pool.drain()
        for kernel in self.registry:
            self.lifecycle.remove(kernel, KernelEvent.SHUTDOWN, "the server is shutting down")
        deadline = time.monotonic() + STOP_GRACE
        while self.lifecycle.reaping and time.monotonic() < deadline:
            self.lifecycle.reap()
            await asyncio.sleep(0.05)
        for handle in self.lifecycle.reaping:
            handle.kill()
            handle.cleanup()
        self.lifecycle.reaping.clear()
        for provisioner in self.provisioners.values():
            provisioner.close()
        self.flow.close()
        self.reactor.retry_deferred()
        self.reactor.close(linger=500)  # the last replies ("server is shutting down") go out
        self.remote.close()
        self.connections.close()
        self.ctx.term()
        if self.runtime_lost:  # not ours any more (check_home)
            self.lock.release()
            log.info("stopped")
            return
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

    # -- liveness and expiry ----------------------------------------------------------------------
    async def _maintain(self) -> None:
        """Liveness and idle expiry, a few times per heartbeat interval."""
        period = min(0.25, self.config.heartbeat_interval / 4)
        turns = 0
        while True:
            await asyncio.sleep(period)
            turns += 1
            try:
                if turns % 4 == 0:
                    self.check_home()
                self.check_kernels(time.monotonic())
                self.pools.tick(time.monotonic())
                self.lifecycle.reap()
                self.reactor.retry_deferred()
                self.connections.check_memory()
            except Exception:
                log.exception("error in maintenance")

    def check_kernels(self, now: float) -> None:
        pooled = list(self.pool.kernels)
        kernels = list(self.registry)
        ended = self.lifecycle.polled([*pooled, *kernels])
        findings = liveness.check(
            kernels, pooled, ended, now, self.config.dead_after, self.config.expire_with_processes
        )
        self.lifecycle.apply(findings)


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
