"""The broker: one asyncio process between clients and execution agents.

It owns the kernel registry, routes requests to agents and outputs back to the client that asked,
watches agents' heartbeats, expires idle kernels and tells clients the truth: a request on a dead
kernel gets an error reply naming the cause, never silence. It never runs commands itself.

Socket discipline (see docs/architecture.md): both ROUTERs are plain ZeroMQ sockets read by
:meth:`Broker._pump`, which drains them without blocking and is scheduled both by the sockets'
file descriptors and after every send (ZeroMQ descriptors are edge-triggered). Every send is
non-blocking: a client that stops reading loses messages (counted), it never stalls the broker.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import errno
import logging
import os
import shutil
import signal
import time
from typing import Any

import zmq

from .._version import __version__
from ..config import Config, ExecutionMode
from ..errors import ProtocolError, ServerAlreadyRunning, StigmerError
from ..protocol import ExecStatus, KernelEvent, KernelState, Message, MsgType, Session, new_key
from ..protocol.session import split_ids
from ..provisioners import AgentHandle, AgentSpec, LocalProvisioner, Provisioner
from ..runtime import RuntimeDir, ServerLock
from .kernels import NAME_RE, Kernel, Pending, Registry

log = logging.getLogger("stigmer.broker")

_BATCH = 256  # messages handled per pump pass before yielding to the event loop
_START_TIMEOUT = 30.0  # seconds an agent may take to register
_STOP_GRACE = 2.0  # seconds an agent gets to exit after agent_shutdown
_MAX_PENDING = 10000  # requests queued on one kernel
_MAX_CODE = 1024 * 1024  # bytes of shell code in one request
_CLIENT_HWM = 1000  # messages (<= 64 KiB each) queued for one client before drops start


class _DropLog:
    """Logs dropped messages without letting a flood of garbage flood the log."""

    def __init__(self, per_second: int = 10) -> None:
        self.per_second = per_second
        self.window = 0.0
        self.count = 0
        self.suppressed = 0

    def __call__(self, where: str, reason: object) -> None:
        now = time.monotonic()
        if now - self.window >= 1.0:
            if self.suppressed:
                log.warning("%d more bad messages dropped (not logged)", self.suppressed)
            self.window, self.count, self.suppressed = now, 0, 0
        if self.count < self.per_second:
            self.count += 1
            log.warning("dropped a bad message from %s: %s", where, reason)
        else:
            self.suppressed += 1


class Broker:
    def __init__(self, config: Config, provisioners: dict[str, Provisioner] | None = None) -> None:
        self.config = config
        self.runtime = RuntimeDir(config.runtime_dir)
        self.key = new_key()
        self.clients = Session(self.key)  # verifies what clients send, signs what they get
        self.registry = Registry()
        self.provisioners: dict[str, Provisioner] = provisioners or {
            ExecutionMode.LOCAL.value: LocalProvisioner()
        }
        self.lock = ServerLock(self.runtime)
        self.ctx: zmq.Context[Any] = zmq.Context()
        self.client_sock: zmq.Socket[Any] | None = None
        self.agent_sock: zmq.Socket[Any] | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.stopping = asyncio.Event()
        self.started_wall = time.time()
        self.drop_log = _DropLog()
        self.stats = {"client_msgs": 0, "agent_msgs": 0, "dropped_bad": 0, "dropped_slow": 0}
        self._pump_scheduled = False
        self._reaping: list[AgentHandle] = []
        # Replies that met a full client queue; retried, never dropped while the client lives.
        self._deferred: dict[bytes, collections.deque[list[bytes]]] = {}
        self._maintenance: asyncio.Task[None] | None = None

    # -- start and stop -----------------------------------------------------------------------
    def bind(self) -> None:
        """Take the runtime directory and bind both ROUTERs."""
        self.runtime.ensure()
        if not self.lock.acquire():
            info = self.runtime.read_info() or {}
            raise ServerAlreadyRunning(
                f"a stigmer server (pid {info.get('pid', '?')}) already runs in "
                f"{self.runtime.path} — use it, stop it with `stigmer server stop`, or pick "
                "another STIGMER_RUNTIME_DIR"
            )
        # We hold the lock: any socket file left here belongs to a dead server.
        for path in (self.runtime.client_socket, self.runtime.agent_socket):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        shutil.rmtree(self.runtime.path / "kernels", ignore_errors=True)
        self.runtime.write_key(self.key)
        self.client_sock = self._router(self.runtime.client_endpoint, self.config.client_endpoint)
        self.agent_sock = self._router(self.runtime.agent_endpoint, self.config.agent_endpoint)
        for path in (self.runtime.client_socket, self.runtime.agent_socket):
            os.chmod(path, 0o600)
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

    def _router(self, endpoint: str, extra: str | None) -> zmq.Socket[Any]:
        sock: zmq.Socket[Any] = self.ctx.socket(zmq.ROUTER)
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDHWM, _CLIENT_HWM)
        sock.setsockopt(zmq.RCVHWM, 1000)
        sock.setsockopt(zmq.MAXMSGSIZE, self.config.max_message_bytes)
        sock.bind(endpoint)
        if extra:
            host = extra.split("://", 1)[-1].rsplit(":", 1)[0]
            if host not in ("127.0.0.1", "localhost", "[::1]"):
                sock.close(0)
                raise StigmerError(
                    f"refusing to bind {extra}: only loopback TCP endpoints are allowed until "
                    "CurveZMQ encryption is configured"
                )
            sock.bind(extra)
        return sock

    async def serve(self) -> None:
        """Run until :meth:`request_stop` (or a signal in the foreground)."""
        if self.client_sock is None:
            self.bind()
        assert self.client_sock is not None and self.agent_sock is not None
        self.loop = asyncio.get_running_loop()
        self.loop.add_reader(self.client_sock.fileno(), self._schedule_pump)
        self.loop.add_reader(self.agent_sock.fileno(), self._schedule_pump)
        self._schedule_pump()
        self._maintenance = asyncio.create_task(self._maintain(), name="stigmer-maintenance")
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

    def request_stop(self) -> None:
        self.stopping.set()

    async def _shutdown(self) -> None:
        log.info("stopping: ending %d kernel(s)", len(self.registry))
        if self._maintenance is not None:
            self._maintenance.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._maintenance
        for kernel in self.registry:
            self._remove_kernel(kernel, KernelEvent.SHUTDOWN, "the server is shutting down")
        deadline = time.monotonic() + _STOP_GRACE
        while self._reaping and time.monotonic() < deadline:
            self._reap_handles()
            await asyncio.sleep(0.05)
        for handle in self._reaping:
            handle.kill()
        self._reaping.clear()
        for provisioner in self.provisioners.values():
            provisioner.close()
        assert self.loop is not None
        for sock in (self.client_sock, self.agent_sock):
            if sock is not None:
                self.loop.remove_reader(sock.fileno())
                sock.close(0)
        self.ctx.term()
        for path in (
            self.runtime.client_socket,
            self.runtime.agent_socket,
            self.runtime.info_path,
            self.runtime.key_path,
        ):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        shutil.rmtree(self.runtime.path / "kernels", ignore_errors=True)
        self.lock.release()
        log.info("stopped")

    # -- the pump -----------------------------------------------------------------------------
    def _schedule_pump(self) -> None:
        if not self._pump_scheduled and self.loop is not None:
            self._pump_scheduled = True
            self.loop.call_soon(self._pump)

    def _pump(self) -> None:
        self._pump_scheduled = False
        client, agent = self.client_sock, self.agent_sock
        if client is None or agent is None or client.closed:
            return
        handled = 0
        progress = True
        while progress:
            progress = False
            for sock, handler in ((agent, self._on_agent_frames), (client, self._on_client_frames)):
                for _ in range(_BATCH):
                    try:
                        frames = sock.recv_multipart(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    progress = True
                    handled += 1
                    try:
                        handler(frames)
                    except Exception:  # a bug must not take the broker down
                        log.exception("error while handling a message")
            if handled >= 4 * _BATCH:
                # Let timers run; the pump continues on the next loop iteration.
                self._schedule_pump()
                return

    def _send(
        self, sock: zmq.Socket[Any] | None, frames: list[bytes], must_arrive: bool = False
    ) -> bool:
        """Non-blocking send; False if the peer is gone or not reading.

        With ``must_arrive`` (final replies), a full queue defers the message for a retry
        instead of dropping it.
        """
        if sock is None or sock.closed:
            return False
        try:
            sock.send_multipart(frames, flags=zmq.NOBLOCK, copy=False)
            return True
        except zmq.Again:
            if must_arrive and sock is self.client_sock:
                queue = self._deferred.setdefault(frames[0], collections.deque(maxlen=10000))
                queue.append(frames)
            else:
                self.stats["dropped_slow"] += 1
            return False
        except zmq.ZMQError as exc:
            if exc.errno == errno.EHOSTUNREACH:
                if sock is self.client_sock:
                    self._client_gone(frames[0])
                return False
            raise
        finally:
            self._schedule_pump()

    # -- clients ------------------------------------------------------------------------------
    def _on_client_frames(self, frames: list[bytes]) -> None:
        self.stats["client_msgs"] += 1
        try:
            ids, msg_frames = split_ids(frames)
            if len(ids) != 1:
                raise ProtocolError(f"expected one routing id, got {len(ids)}")
            self.clients.verify_frames(msg_frames)
            msg = self.clients.decode(msg_frames)
        except ProtocolError as exc:
            self.stats["dropped_bad"] += 1
            self.drop_log("a client", exc)
            return
        client = ids[0]
        handler = self._client_handlers.get(msg.msg_type)
        if handler is None:
            self._error_reply(
                client, msg, "UnknownMessageType", f"unknown message type {msg.msg_type!r}"
            )
            return
        handler(self, client, msg, msg_frames)

    def _reply(
        self,
        client: bytes,
        parent: Message,
        msg_type: MsgType,
        content: dict[str, Any],
        metadata: dict[str, Any] | None = None,
    ) -> None:
        reply = self.clients.msg(msg_type.value, content, parent, metadata)
        self._send(self.client_sock, self.clients.serialize(reply, [client]), must_arrive=True)

    def _error_reply(self, client: bytes, request: Message, ename: str, evalue: str) -> None:
        from ..protocol.constants import REPLY_FOR

        try:
            reply_type = REPLY_FOR[MsgType(request.msg_type)]
        except (ValueError, KeyError):
            reply_type = MsgType.ERROR_REPLY
        content: dict[str, Any] = {
            "status": ExecStatus.ERROR.value,
            "ename": ename,
            "evalue": evalue,
        }
        if reply_type is MsgType.EXECUTE_REPLY:
            content["exit_code"] = None
        self._reply(client, request, reply_type, content)

    def _client_gone(self, client: bytes) -> None:
        self._deferred.pop(client, None)
        for kernel in self.registry:
            kernel.clients.pop(client, None)

    def _retry_deferred(self) -> None:
        for client, queue in list(self._deferred.items()):
            while queue:
                if not self._send(self.client_sock, queue[0]):
                    break
                queue.popleft()
            if not queue:
                self._deferred.pop(client, None)

    def _kernel_event(
        self,
        kernel: Kernel,
        event: KernelEvent,
        reason: str,
        only: bytes | None = None,
        parent: Message | None = None,
    ) -> None:
        content = {
            "kernel": kernel.name,
            "event": event.value,
            "reason": reason,
            "kernel_id": kernel.id,
        }
        targets = [only] if only is not None else list(kernel.clients)
        for client in targets:
            msg = self.clients.msg(MsgType.KERNEL_EVENT.value, content, parent)
            self._send(self.client_sock, self.clients.serialize(msg, [client]))

    def _handle_execute(self, client: bytes, msg: Message, msg_frames: list[bytes]) -> None:
        content = msg.content
        name = content.get("kernel") or "default"
        code = content.get("code")
        mode = content.get("mode") or self.config.execution_mode.value
        problem = None
        if not isinstance(name, str) or not NAME_RE.match(name):
            problem = (
                "kernel names are 1-64 letters, digits, '.', '_' or '-', not starting with a symbol"
            )
        elif not isinstance(code, str):
            problem = "execute_request needs a string 'code'"
        elif len(code) > _MAX_CODE:
            problem = f"command is longer than {_MAX_CODE} bytes"
        elif mode not in {m.value for m in ExecutionMode}:
            problem = f"unknown mode {mode!r}: use local, sandbox or auto"
        if problem:
            self._error_reply(client, msg, "BadRequest", problem)
            return
        kernel = self.registry.by_name.get(name)
        if kernel is not None and kernel.mode != mode:
            self._error_reply(
                client,
                msg,
                "ModeMismatch",
                f"kernel {name!r} runs in {kernel.mode} mode, not {mode}; "
                "use another kernel name or the same mode",
            )
            return
        if kernel is None:
            provisioner = self.provisioners.get(mode)
            if provisioner is None:
                self._error_reply(
                    client,
                    msg,
                    "ModeUnavailable",
                    f"{mode} mode is not available in this version of stigmer-kernel "
                    "(only local mode is) — run with --mode local",
                )
                return
            cwd = self.config.kernel_cwd or content.get("cwd") or os.path.expanduser("~")
            if not isinstance(cwd, str) or not os.path.isabs(cwd) or not os.path.isdir(cwd):
                self._error_reply(
                    client, msg, "BadRequest", f"working directory {cwd!r} does not exist"
                )
                return
            ttl = content.get("ttl")
            kernel = Kernel(
                name=name,
                mode=mode,
                cwd=cwd,
                ttl=float(ttl)
                if isinstance(ttl, (int, float)) and ttl > 0
                else self.config.kernel_ttl,
            )
            gone = self.registry.gone.get(name)
            if gone is not None:
                kernel.notices.append(
                    {
                        "event": gone["event"],
                        "reason": f"{gone['reason']}; a new kernel was started",
                    }
                )
            self.registry.add(kernel)
            self._start_agent(kernel)
        elif kernel.state is KernelState.DEAD:
            kernel.restarts += 1
            reason = f"the previous agent died ({kernel.death_reason}); session state was reset"
            kernel.notices.append({"event": KernelEvent.RESTARTED.value, "reason": reason})
            self._start_agent(kernel)
            for other in kernel.clients:
                if other != client:
                    self._kernel_event(kernel, KernelEvent.RESTARTED, reason, only=other)
        if len(kernel.pending) >= _MAX_PENDING:
            self._error_reply(
                client,
                msg,
                "KernelBusy",
                f"kernel {name!r} has {_MAX_PENDING} requests queued; try later",
            )
            return
        if msg.msg_id in kernel.pending:
            self._error_reply(client, msg, "BadRequest", "duplicate msg_id")
            return
        now = time.monotonic()
        kernel.clients[client] = now
        kernel.last_activity = now
        kernel.executions += 1
        for notice in kernel.notices:
            self._kernel_event(
                kernel, KernelEvent(notice["event"]), notice["reason"], only=client, parent=msg
            )
        kernel.notices.clear()
        if kernel.state is KernelState.DEAD:  # the agent could not even be started
            self._error_reply(client, msg, "KernelDied", kernel.death_reason or "agent failed")
            return
        assert kernel.session is not None
        pending = Pending(client, msg.msg_id, msg.header, kernel.session.resign(msg_frames))
        kernel.pending[msg.msg_id] = pending
        if kernel.agent_identity is not None:
            self._forward(kernel, pending)
        kernel.refresh_state()

    def _handle_interrupt(self, client: bytes, msg: Message, _: list[bytes]) -> None:
        kernel = self._named_kernel(client, msg)
        if kernel is None:
            return
        if kernel.agent_identity is not None and kernel.session is not None:
            note = kernel.session.msg(MsgType.INTERRUPT_REQUEST.value, {}, msg)
            self._send(self.agent_sock, kernel.session.serialize(note, [kernel.agent_identity]))
        else:
            # The agent is still starting: nothing runs yet, so what waits is cancelled.
            waiting = [p for p in kernel.pending.values() if not p.forwarded]
            self._fail_pending(
                kernel,
                ExecStatus.INTERRUPTED,
                "Interrupted",
                "interrupted before the kernel had started",
                only=waiting,
            )
        self._reply(
            client,
            msg,
            MsgType.INTERRUPT_REPLY,
            {"status": "ok", "kernel": kernel.name, "was_busy": kernel.busy},
        )

    def _handle_kernel_info(self, client: bytes, msg: Message, _: list[bytes]) -> None:
        kernel = self._named_kernel(client, msg)
        if kernel is not None:
            self._reply(
                client,
                msg,
                MsgType.KERNEL_INFO_REPLY,
                {"status": "ok", **kernel.to_json(time.monotonic())},
            )

    def _handle_list(self, client: bytes, msg: Message, _: list[bytes]) -> None:
        now = time.monotonic()
        kernels = [k.to_json(now) for k in self.registry]
        self._reply(client, msg, MsgType.KERNEL_LIST_REPLY, {"status": "ok", "kernels": kernels})

    def _handle_shutdown_kernel(self, client: bytes, msg: Message, _: list[bytes]) -> None:
        kernel = self._named_kernel(client, msg)
        if kernel is not None:
            self._remove_kernel(kernel, KernelEvent.SHUTDOWN, "shut down by request")
            self._reply(
                client, msg, MsgType.KERNEL_SHUTDOWN_REPLY, {"status": "ok", "kernel": kernel.name}
            )

    def _handle_server_info(self, client: bytes, msg: Message, _: list[bytes]) -> None:
        self._reply(
            client,
            msg,
            MsgType.SERVER_INFO_REPLY,
            {
                "status": "ok",
                "pid": os.getpid(),
                "version": __version__,
                "runtime_dir": str(self.runtime.path),
                "client_endpoint": self.runtime.client_endpoint,
                "agent_endpoint": self.runtime.agent_endpoint,
                "execution_mode": self.config.execution_mode.value,
                "kernel_ttl": self.config.kernel_ttl,
                "kernels": len(self.registry),
                "uptime": round(time.time() - self.started_wall, 3),
                "stats": dict(self.stats),
            },
        )

    def _handle_server_shutdown(self, client: bytes, msg: Message, _: list[bytes]) -> None:
        self._reply(client, msg, MsgType.SERVER_SHUTDOWN_REPLY, {"status": "ok"})
        self.request_stop()

    def _handle_detach(self, client: bytes, msg: Message, _: list[bytes]) -> None:
        self._client_gone(client)

    def _named_kernel(self, client: bytes, msg: Message) -> Kernel | None:
        name = msg.content.get("kernel") or "default"
        kernel = self.registry.by_name.get(name) if isinstance(name, str) else None
        if kernel is None:
            gone = self.registry.gone.get(name) if isinstance(name, str) else None
            detail = f" ({gone['event']}: {gone['reason']})" if gone else ""
            self._error_reply(client, msg, "NoSuchKernel", f"no kernel named {name!r}{detail}")
            return None
        kernel.clients[client] = time.monotonic()
        return kernel

    _client_handlers: dict[str, Any] = {
        MsgType.EXECUTE_REQUEST.value: _handle_execute,
        MsgType.INTERRUPT_REQUEST.value: _handle_interrupt,
        MsgType.KERNEL_INFO_REQUEST.value: _handle_kernel_info,
        MsgType.KERNEL_LIST_REQUEST.value: _handle_list,
        MsgType.KERNEL_SHUTDOWN_REQUEST.value: _handle_shutdown_kernel,
        MsgType.SERVER_INFO_REQUEST.value: _handle_server_info,
        MsgType.SERVER_SHUTDOWN_REQUEST.value: _handle_server_shutdown,
        MsgType.DETACH_REQUEST.value: _handle_detach,
    }

    # -- agents -------------------------------------------------------------------------------
    def _start_agent(self, kernel: Kernel) -> None:
        provisioner = self.provisioners[kernel.mode]
        kernel.new_incarnation(new_key())
        self.registry.index(kernel)
        spec = AgentSpec(
            kernel_id=kernel.id,
            kernel_name=kernel.name,
            key=kernel.session.key if kernel.session else b"",
            endpoint=self.runtime.agent_endpoint,
            cwd=kernel.cwd,
            workdir=self.runtime.path / "kernels" / kernel.id,
            shell=self.config.shell,
            heartbeat_interval=self.config.heartbeat_interval,
            orphan_timeout=max(60.0, 10 * self.config.dead_after),
            command_timeout=self.config.command_timeout,
            output_limit=self.config.output_limit,
        )
        try:
            kernel.handle = provisioner.start(spec)
        except Exception as exc:  # OSError, docker errors...: the kernel cannot start
            log.error("could not start an agent for kernel %s: %s", kernel.name, exc)
            kernel.state = KernelState.DEAD
            kernel.death_reason = f"could not start an agent: {exc}"
            self.registry.unindex(kernel)
            return
        log.info("starting kernel %s (%s, %s mode)", kernel.name, kernel.id, kernel.mode)

    def _forward(self, kernel: Kernel, pending: Pending) -> None:
        assert kernel.agent_identity is not None
        if self._send(self.agent_sock, [kernel.agent_identity, *pending.frames]):
            pending.forwarded = True
        else:
            self._kernel_died(kernel, "the agent's connection is gone")

    def _on_agent_frames(self, frames: list[bytes]) -> None:
        self.stats["agent_msgs"] += 1
        try:
            ids, msg_frames = split_ids(frames)
            if len(ids) != 1:
                raise ProtocolError(f"expected one routing id, got {len(ids)}")
            identity = ids[0]
            kernel_id = identity.split(b":", 1)[0].decode("ascii", "replace")
            kernel = self.registry.by_id.get(kernel_id)
            if kernel is None or kernel.session is None:
                raise ProtocolError(f"message from an unknown agent {identity[:80]!r}")
            kernel.session.verify_frames(msg_frames)
            mtype, parent_id = kernel.session.decode_routing(msg_frames)
        except ProtocolError as exc:
            self.stats["dropped_bad"] += 1
            self.drop_log("an agent", exc)
            return
        kernel.last_beat = time.monotonic()
        if mtype == MsgType.STREAM.value or mtype == MsgType.EXECUTE_REPLY.value:
            if identity != kernel.agent_identity:
                self.drop_log("an agent", "output from an identity that did not register")
                return
            pending = kernel.pending.get(parent_id) if parent_id else None
            if pending is None:
                return  # output of a request already answered (e.g. after a shutdown)
            if mtype == MsgType.STREAM.value:
                out = [pending.client, *self.clients.resign(msg_frames)]
                if not self._send(self.client_sock, out):
                    pending.lost += 1
                return
            del kernel.pending[pending.msg_id]
            kernel.last_activity = time.monotonic()
            kernel.refresh_state()
            reply = kernel.session.decode(msg_frames)
            cwd = reply.content.get("cwd")
            if isinstance(cwd, str):
                kernel.cwd = cwd
            if pending.lost:
                reply.content["lost_messages"] = pending.lost
                fresh = self.clients.msg(
                    reply.msg_type, reply.content, pending.header, reply.metadata
                )
                out = self.clients.serialize(fresh, [pending.client])
            else:
                out = [pending.client, *self.clients.resign(msg_frames)]
            self._send(self.client_sock, out, must_arrive=True)
            return
        try:
            msg = kernel.session.decode(msg_frames)
        except ProtocolError as exc:
            self.drop_log("an agent", exc)
            return
        if mtype == MsgType.AGENT_HEARTBEAT.value:
            pgid = msg.content.get("shell_pgid")
            if isinstance(pgid, int) and pgid > 0:
                self._set_shell_pgid(kernel, pgid)
            ack = kernel.session.msg(MsgType.AGENT_HEARTBEAT.value, {}, msg)
            self._send(self.agent_sock, kernel.session.serialize(ack, [identity]))
        elif mtype == MsgType.AGENT_REGISTER.value:
            self._on_register(kernel, identity, msg)
        elif mtype == MsgType.AGENT_GOODBYE.value:
            pass
        else:
            self.drop_log("an agent", f"unknown message type {mtype!r}")

    def _set_shell_pgid(self, kernel: Kernel, pgid: int) -> None:
        kernel.shell_pgid = pgid
        if kernel.handle is not None and hasattr(kernel.handle, "shell_pgid"):
            kernel.handle.shell_pgid = pgid

    def _on_register(self, kernel: Kernel, identity: bytes, msg: Message) -> None:
        if kernel.state is not KernelState.STARTING or kernel.agent_identity is not None:
            self.drop_log("an agent", f"second registration for kernel {kernel.id} refused")
            return
        assert kernel.session is not None
        kernel.agent_identity = identity
        pid = msg.content.get("pid")
        kernel.agent_pid = pid if isinstance(pid, int) else None
        pgid = msg.content.get("shell_pgid")
        if isinstance(pgid, int) and pgid > 0:
            self._set_shell_pgid(kernel, pgid)
        kernel.state = KernelState.IDLE
        kernel.last_beat = time.monotonic()
        welcome = kernel.session.msg(MsgType.AGENT_WELCOME.value, {"kernel": kernel.name}, msg)
        self._send(self.agent_sock, kernel.session.serialize(welcome, [identity]))
        log.info(
            "kernel %s ready (agent pid %s, %.0f ms)",
            kernel.name,
            pid,
            (time.monotonic() - kernel.started_at) * 1000,
        )
        for pending in list(kernel.pending.values()):
            if not pending.forwarded:
                self._forward(kernel, pending)
        kernel.refresh_state()

    # -- liveness, expiry, removal --------------------------------------------------------------
    def _fail_pending(
        self,
        kernel: Kernel,
        status: ExecStatus,
        ename: str,
        reason: str,
        only: list[Pending] | None = None,
    ) -> None:
        """Answer pending requests (all, or ``only`` these) with an error reply."""
        for pending in list(kernel.pending.values()) if only is None else only:
            kernel.pending.pop(pending.msg_id, None)
            reply = self.clients.msg(
                MsgType.EXECUTE_REPLY.value,
                {
                    "status": status.value,
                    "exit_code": None,
                    "ename": ename,
                    "evalue": reason,
                    "kernel": kernel.name,
                },
                pending.header,
            )
            self._send(
                self.client_sock, self.clients.serialize(reply, [pending.client]), must_arrive=True
            )
        kernel.refresh_state()

    def _kernel_died(self, kernel: Kernel, reason: str) -> None:
        if kernel.state is KernelState.DEAD:
            return
        log.warning("kernel %s died: %s", kernel.name, reason)
        kernel.state = KernelState.DEAD
        kernel.death_reason = reason
        if kernel.handle is not None:
            kernel.handle.kill()
            self._reaping.append(kernel.handle)
        self.registry.unindex(kernel)
        self._fail_pending(
            kernel, ExecStatus.ERROR, "KernelDied", f"kernel {kernel.name!r} died: {reason}"
        )
        self._kernel_event(kernel, KernelEvent.DIED, reason)

    def _remove_kernel(self, kernel: Kernel, event: KernelEvent, reason: str) -> None:
        log.info("kernel %s %s: %s", kernel.name, event.value, reason)
        self._fail_pending(
            kernel,
            ExecStatus.ABORTED,
            "KernelShutdown",
            f"kernel {kernel.name!r} was {event.value}: {reason}",
        )
        self._kernel_event(kernel, event, reason)
        self._stop_agent(kernel)
        self.registry.remove(kernel, {"event": event.value, "reason": reason, "at": time.time()})
        kernel.state = KernelState.DEAD

    def _stop_agent(self, kernel: Kernel) -> None:
        if kernel.agent_identity is not None and kernel.session is not None:
            bye = kernel.session.msg(MsgType.AGENT_SHUTDOWN.value, {})
            self._send(self.agent_sock, kernel.session.serialize(bye, [kernel.agent_identity]))
        if kernel.handle is not None:
            handle = kernel.handle
            self._reaping.append(handle)
            if self.loop is not None and not self.stopping.is_set():
                self.loop.call_later(_STOP_GRACE, self._force_kill, handle)
            elif kernel.agent_identity is None:
                handle.kill()

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

    async def _maintain(self) -> None:
        """Liveness and idle expiry, a few times per heartbeat interval."""
        period = min(0.25, self.config.heartbeat_interval / 4)
        while True:
            await asyncio.sleep(period)
            try:
                self._check_kernels()
                self._reap_handles()
                self._retry_deferred()
            except Exception:
                log.exception("error in maintenance")

    def _check_kernels(self) -> None:
        now = time.monotonic()
        for kernel in self.registry:
            if kernel.state is not KernelState.DEAD and kernel.handle is not None:
                ended = kernel.handle.poll()
                if ended is not None:
                    self._kernel_died(kernel, ended)
                elif kernel.state is KernelState.STARTING:
                    if now - kernel.started_at > _START_TIMEOUT:
                        self._kernel_died(kernel, f"agent did not register in {_START_TIMEOUT:g}s")
                elif now - kernel.last_beat > self.config.dead_after:
                    self._kernel_died(
                        kernel,
                        f"agent stopped answering: no heartbeat for {now - kernel.last_beat:.1f}s",
                    )
            if (
                not kernel.busy
                and kernel.state is not KernelState.STARTING
                and now - kernel.last_activity > kernel.ttl
            ):
                self._remove_kernel(
                    kernel,
                    KernelEvent.EXPIRED,
                    f"idle for {now - kernel.last_activity:.0f}s (ttl {kernel.ttl:g}s)",
                )


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
