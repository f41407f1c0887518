"""The native front end: requests from stigmer clients (msgpack, the server key) on clients.sock.

It is also the *sink* of the requests it submits: outputs and replies go back to the client that
asked, re-signed with the client key (the agent's frames are forwarded as they are, so an output
chunk costs one HMAC here, not a re-encoding).
"""

from __future__ import annotations

import logging
import os
import time
from typing import TYPE_CHECKING, Any

from .._version import __version__
from ..errors import ProtocolError, RequestError
from ..protocol import KernelEvent, Message, MsgType, Session
from ..protocol.constants import REPLY_FOR
from ..protocol.session import split_ids
from .jupyter import check_connection
from .kernels import Kernel, Pending, checked_code

if TYPE_CHECKING:
    from .server import Broker

log = logging.getLogger("stigmer.broker")


class NativeFrontend:
    kind = "native"

    def __init__(self, broker: Broker, sock_attr: str = "client_sock") -> None:
        self.broker = broker
        self.sock_attr = sock_attr  # the broker socket these clients use (ipc, or tcp+CURVE)
        self.session = Session(broker.key)
        self._handlers = {
            MsgType.EXECUTE_REQUEST.value: self._execute,
            MsgType.INTERRUPT_REQUEST.value: self._interrupt,
            MsgType.KERNEL_INFO_REQUEST.value: self._kernel_info,
            MsgType.KERNEL_LIST_REQUEST.value: self._list,
            MsgType.KERNEL_SHUTDOWN_REQUEST.value: self._shutdown_kernel,
            MsgType.KERNEL_CONNECT_REQUEST.value: self._connect,
            MsgType.SERVER_INFO_REQUEST.value: self._server_info,
            MsgType.SERVER_SHUTDOWN_REQUEST.value: self._server_shutdown,
            MsgType.DETACH_REQUEST.value: self._detach,
        }

    @property
    def sock(self) -> Any:
        return getattr(self.broker, self.sock_attr)

    # -- receiving ------------------------------------------------------------------------------
    def on_frames(self, frames: list[bytes]) -> None:
        broker = self.broker
        broker.stats["client_msgs"] += 1
        try:
            ids, msg_frames = split_ids(frames)
            if len(ids) != 1:
                raise ProtocolError(f"expected one routing id, got {len(ids)}")
            self.session.verify_frames(msg_frames)
            msg = self.session.decode(msg_frames)
        except ProtocolError as exc:
            broker.stats["dropped_bad"] += 1
            broker.drop_log("a client", exc)
            return
        broker.connections.prove(self.sock)  # a remote client's TCP connection: spared
        client = ids[0]
        handler = self._handlers.get(msg.msg_type)
        if handler is None:
            self.error_reply(
                client, msg, "UnknownMessageType", f"unknown message type {msg.msg_type!r}"
            )
            return
        try:
            handler(client, msg)
        except RequestError as exc:
            self.error_reply(client, msg, exc.ename, str(exc))
        except Exception as exc:  # signed but malformed (a field of the wrong type...)
            broker.drop_log("a client", f"malformed {msg.msg_type}: {exc!r}")
            self.error_reply(client, msg, "BadRequest", f"malformed {msg.msg_type} request: {exc}")

    # -- sending --------------------------------------------------------------------------------
    def reply_to(
        self,
        client: bytes,
        parent: Message | dict[str, Any],
        msg_type: MsgType,
        content: dict[str, Any],
    ) -> None:
        reply = self.session.msg(msg_type.value, content, parent)
        self.broker.send(self.sock, self.session.serialize(reply, [client]), must_arrive=True)

    def error_reply(self, client: bytes, request: Message, ename: str, evalue: str) -> None:
        try:
            reply_type = REPLY_FOR[MsgType(request.msg_type)]
        except (ValueError, KeyError):
            reply_type = MsgType.ERROR_REPLY
        content: dict[str, Any] = {"status": "error", "ename": ename, "evalue": evalue}
        if reply_type is MsgType.EXECUTE_REPLY:
            content["exit_code"] = None
        self.reply_to(client, request, reply_type, content)

    def kernel_event(
        self,
        kernel: Kernel,
        event: KernelEvent,
        reason: str,
        only: bytes | None = None,
        exclude: bytes | None = None,
        parent: Message | None = None,
        requested: bool = False,
    ) -> None:
        content = {
            "kernel": kernel.name,
            "event": event.value,
            "reason": reason,
            "kernel_id": kernel.id,
            "requested": requested,
        }
        mine = [c for c, frontend in kernel.clients.items() if frontend is self]
        targets = ([only] if only in mine else []) if only is not None else mine
        targets = [c for c in targets if c != exclude]
        for client in targets:
            msg = self.session.msg(MsgType.KERNEL_EVENT.value, content, parent)
            self.broker.send(self.sock, self.session.serialize(msg, [client]))

    # -- the sink of native requests --------------------------------------------------------------
    def stream(self, kernel: Kernel, pending: Pending, frames: list[bytes]) -> bool:
        return self.broker.send(self.sock, [pending.client, *self.session.resign(frames)])

    def reply(
        self, kernel: Kernel, pending: Pending, content: dict[str, Any], frames: list[bytes] | None
    ) -> None:
        if frames is not None:
            out = [pending.client, *self.session.resign(frames)]
            self.broker.send(self.sock, out, must_arrive=True)
        else:
            self.reply_to(pending.client, pending.header, REPLY_FOR[pending.kind], content)

    def input_request(self, kernel: Kernel, pending: Pending, msg: Message) -> None:
        log.warning("kernel %s asked a native client for input; ignored", kernel.name)

    # -- handlers -------------------------------------------------------------------------------
    def _attach(self, kernel: Kernel, client: bytes, request: Message) -> None:
        kernel.clients[client] = self
        for notice in kernel.notices:
            self.kernel_event(
                kernel, KernelEvent(notice["event"]), notice["reason"], only=client, parent=request
            )
        kernel.notices.clear()

    def _execute(self, client: bytes, msg: Message) -> None:
        content = msg.content
        checked_code(content)
        kernel = self._kernel_for(client, msg)
        agent_content = {k: v for k, v in content.items() if k in _AGENT_FIELDS}
        agent_content["allow_stdin"] = False  # native clients feed stdin up front
        pending = Pending(
            sink=self,
            client=client,
            header=msg.header,
            kind=MsgType.EXECUTE_REQUEST,
            content=agent_content,
            silent=bool(content.get("silent", False)),
            store_history=bool(content.get("store_history", True)),
            stop_on_error=bool(content.get("stop_on_error", False)),
            tell_mode=not content.get("mode"),
        )
        self.broker.submit(kernel, pending)

    def _kernel_for(self, client: bytes, msg: Message) -> Kernel:
        """The kernel a request names, created if needed, with ``client`` attached to it."""
        content = msg.content
        kernel = self.broker.get_or_create(
            content.get("kernel") or "default",
            content.get("mode"),
            content.get("cwd"),
            content.get("ttl"),
            client=client,
            options=content,
        )
        self._attach(kernel, client, msg)
        return kernel

    def _named(self, client: bytes, msg: Message) -> Kernel:
        name = msg.content.get("kernel") or "default"
        kernel = self.broker.registry.by_name.get(name) if isinstance(name, str) else None
        if kernel is None:
            gone = self.broker.registry.gone.get(name) if isinstance(name, str) else None
            detail = f" ({gone['event']}: {gone['reason']})" if gone else ""
            raise RequestError(f"no kernel named {name!r}{detail}", "NoSuchKernel")
        kernel.clients[client] = self
        return kernel

    def _interrupt(self, client: bytes, msg: Message) -> None:
        kernel = self._named(client, msg)
        was_busy = self.broker.interrupt(kernel, msg)
        self.reply_to(
            client,
            msg,
            MsgType.INTERRUPT_REPLY,
            {"status": "ok", "kernel": kernel.name, "was_busy": was_busy},
        )

    def _kernel_info(self, client: bytes, msg: Message) -> None:
        kernel = self._named(client, msg)
        self.reply_to(
            client,
            msg,
            MsgType.KERNEL_INFO_REPLY,
            {"status": "ok", **kernel.to_json(time.monotonic())},
        )

    def _list(self, client: bytes, msg: Message) -> None:
        now = time.monotonic()
        kernels = [k.to_json(now) for k in self.broker.registry]
        self.reply_to(client, msg, MsgType.KERNEL_LIST_REPLY, {"status": "ok", "kernels": kernels})

    def _shutdown_kernel(self, client: bytes, msg: Message) -> None:
        kernel = self._named(client, msg)
        self.broker.remove_kernel(kernel, KernelEvent.SHUTDOWN, "shut down by request")
        self.reply_to(
            client, msg, MsgType.KERNEL_SHUTDOWN_REPLY, {"status": "ok", "kernel": kernel.name}
        )

    def _connect(self, client: bytes, msg: Message) -> None:
        """Give a kernel Jupyter sockets (created if needed) and say how to reach them."""
        content = msg.content
        connection = content.get("connection")
        if isinstance(connection, dict):
            check_connection(connection)
        kernel = self._kernel_for(client, msg)
        channels = self.broker.jupyter.open_channels(
            kernel, connection if isinstance(connection, dict) else None
        )
        self.reply_to(
            client,
            msg,
            MsgType.KERNEL_CONNECT_REPLY,
            {
                "status": "ok",
                "kernel": kernel.name,
                "kernel_id": kernel.id,
                "connection_file": channels.connection_file,
                "connection": channels.connection_info,
            },
        )

    def _server_info(self, client: bytes, msg: Message) -> None:
        broker = self.broker
        self.reply_to(
            client,
            msg,
            MsgType.SERVER_INFO_REPLY,
            {
                "status": "ok",
                "pid": os.getpid(),
                "version": __version__,
                "runtime_dir": str(broker.runtime.path),
                "client_endpoint": broker.runtime.client_endpoint,
                "agent_endpoint": broker.runtime.agent_endpoint,
                "execution_mode": broker.config.execution_mode.value,
                "kernel_ttl": broker.config.kernel_ttl,
                "kernels": len(broker.registry),
                "uptime": round(time.time() - broker.started_wall, 3),
                "stats": dict(broker.stats),
            },
        )

    def _server_shutdown(self, client: bytes, msg: Message) -> None:
        self.reply_to(client, msg, MsgType.SERVER_SHUTDOWN_REPLY, {"status": "ok"})
        self.broker.request_stop()

    def _detach(self, client: bytes, msg: Message) -> None:
        self.broker.client_gone(client, self.sock)


#: Fields of a native execute_request the agent acts on.
_AGENT_FIELDS = {"code", "timeout", "stdin", "output_limit", "silent", "store_history"}
