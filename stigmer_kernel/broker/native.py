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
from ..environment import checked_env
from ..errors import ProtocolError, RequestError
from ..protocol import ErrorName, KernelEvent, Message, MsgType, Session
from ..protocol.constants import STDIN_CHUNK_MAX, STDIN_WINDOW
from ..protocol.enums import REPLY_FOR
from ..protocol.session import split_ids
from .creation import client_owner
from .jupyter_channels import check_connection
from .model import Kernel, Pending, checked_code
from .options import restart_changes

if TYPE_CHECKING:
    from .service import Hub

log = logging.getLogger("stigmer.broker")


class NativeFrontend:
    kind = "native"

    def __init__(self, broker: Hub, sock_attr: str = "client_sock") -> None:
        self.broker = broker
        self.sock_attr = sock_attr  # the broker socket these clients use (ipc, or tcp+CURVE)
        self.session = Session(broker.key)
        self._handlers = {
            MsgType.EXECUTE_REQUEST.value: self._execute,
            MsgType.INTERRUPT_REQUEST.value: self._interrupt,
            MsgType.KERNEL_INFO_REQUEST.value: self._kernel_info,
            MsgType.KERNEL_LIST_REQUEST.value: self._list,
            MsgType.KERNEL_SHUTDOWN_REQUEST.value: self._shutdown_kernel,
            MsgType.KERNEL_RESTART_REQUEST.value: self._restart_kernel,
            MsgType.KERNEL_CONNECT_REQUEST.value: self._connect,
            MsgType.SERVER_INFO_REQUEST.value: self._server_info,
            MsgType.SERVER_SHUTDOWN_REQUEST.value: self._server_shutdown,
            MsgType.DETACH_REQUEST.value: self._detach,
            MsgType.STDIN_CHUNK.value: self._stdin_chunk,
            MsgType.FILE_REQUEST.value: self._agent_op,
            MsgType.PROCESS_REQUEST.value: self._agent_op,
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
            broker.reactor.drop_log("a client", exc)
            return
        broker.connections.prove(self.sock)  # a remote client's TCP connection: spared
        client = ids[0]
        handler = self._handlers.get(msg.msg_type)
        if handler is None:
            self.error_reply(
                client,
                msg,
                ErrorName.UNKNOWN_MESSAGE_TYPE,
                f"unknown message type {msg.msg_type!r}",
            )
            return
        try:
            handler(client, msg)
        except RequestError as exc:
            self.error_reply(client, msg, exc.ename, str(exc))
        except Exception as exc:  # signed but malformed (a field of the wrong type...)
            broker.reactor.drop_log("a client", f"malformed {msg.msg_type}: {exc!r}")
            self.error_reply(
                client, msg, ErrorName.BAD_REQUEST, f"malformed {msg.msg_type} request: {exc}"
            )

    # -- sending --------------------------------------------------------------------------------
    def reply_to(
        self,
        client: bytes,
        parent: Message | dict[str, Any],
        msg_type: MsgType,
        content: dict[str, Any],
    ) -> None:
        reply = self.session.msg(msg_type.value, content, parent)
        self.broker.reactor.send(
            self.sock, self.session.serialize(reply, [client]), must_arrive=True
        )

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
        if exclude is not None:  # the requester, told with its reply: on none of its sockets
            targets = [c for c in targets if client_owner(c) != client_owner(exclude)]
        if only is None:
            # A client's tagged socket (its blocking one: creation.client_owner) reads only
            # while its own requests wait: news for every client go to the client's own socket,
            # which reads them as they come. A notice for one request goes where it was asked.
            targets = list(dict.fromkeys(client_owner(c) for c in targets))
        for client in targets:
            msg = self.session.msg(MsgType.KERNEL_EVENT.value, content, parent)
            self.broker.reactor.send(self.sock, self.session.serialize(msg, [client]))

    # -- the sink of native requests --------------------------------------------------------------
    def stream(self, kernel: Kernel, pending: Pending, frames: list[bytes]) -> bool:
        return self.broker.reactor.send(self.sock, [pending.client, *self.session.resign(frames)])

    def takes_inline(self, pending: Pending) -> bool:
        return pending.inline

    def reply(
        self, kernel: Kernel, pending: Pending, content: dict[str, Any], frames: list[bytes] | None
    ) -> None:
        if frames is not None:
            out = [pending.client, *self.session.resign(frames)]
            self.broker.reactor.send(self.sock, out, must_arrive=True)
        else:
            self.reply_to(pending.client, pending.header, REPLY_FOR[pending.kind], content)

    def input_request(self, kernel: Kernel, pending: Pending, msg: Message) -> None:
        log.warning("kernel %s asked a native client for input; ignored", kernel.name)

    def stdin_ack(self, pending: Pending, msg: Message, frames: list[bytes]) -> None:
        """The agent's stdin_ack (credit for streamed stdin): noted, and to the client."""
        written = msg.content.get("written")
        if isinstance(written, int):
            pending.stdin_written = max(pending.stdin_written, written)
        out = [pending.client, *self.session.resign(frames)]
        self.broker.reactor.send(self.sock, out, must_arrive=True)

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
        _checked_envs(content)
        sticky = content.get("sticky")
        if sticky is not None and not isinstance(sticky, bool):
            raise RequestError("'sticky' must be true or false (auto mode)", ErrorName.BAD_REQUEST)
        streamed = content.get("stdin_stream", False)
        if not isinstance(streamed, bool) or (streamed and content.get("stdin") is not None):
            raise RequestError(
                "'stdin_stream' must be true or false, and not given with 'stdin'",
                ErrorName.BAD_REQUEST,
            )
        workdir = content.get("workdir")
        if workdir is not None and not (isinstance(workdir, str) and workdir):
            raise RequestError("'workdir' must be a non-empty string", ErrorName.BAD_REQUEST)
        if not isinstance(content.get("background", False), bool):
            raise RequestError("'background' must be true or false", ErrorName.BAD_REQUEST)
        if content.get("background") and (streamed or content.get("stdin") is not None):
            raise RequestError(
                "a background process gets its stdin through process_request op 'stdin', "
                "not 'stdin' or 'stdin_stream'",
                ErrorName.BAD_REQUEST,
            )
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
            sticky=sticky,
            inline=content.get("inline_output") is True,
        )
        self.broker.scheduler.submit(kernel, pending)

    def _agent_op(self, client: bytes, msg: Message) -> None:
        """A file operation or a process query: to the kernel's agent, which answers it at
        once, even while a command runs. A file operation creates the kernel if it does not
        exist, as an execute_request does; a process query needs the kernel that started the
        process (whatever its mode). The agent checks the operation's own fields."""
        op = msg.content.get("op")
        if not isinstance(op, str) or not op:
            raise RequestError(f"{msg.msg_type} needs an 'op'", ErrorName.BAD_REQUEST)
        if msg.msg_type == MsgType.PROCESS_REQUEST.value:
            kernel = self._named(client, msg)  # its processes were started there: no new one
        else:
            kernel = self._kernel_for(client, msg)
        content = {k: v for k, v in msg.content.items() if k not in _KERNEL_FIELDS}
        pending = Pending(
            sink=self, client=client, header=msg.header, kind=MsgType(msg.msg_type), content=content
        )
        self.broker.scheduler.submit(kernel, pending)

    def _kernel_for(self, client: bytes, msg: Message) -> Kernel:
        """The kernel a request names, created if needed, with ``client`` attached to it."""
        content = msg.content
        kernel = self.broker.creation.get_or_create(
            content.get("kernel") or "default",
            content.get("mode"),
            content.get("cwd"),
            content.get("ttl"),
            client=client,
            options=content,
        )
        self._attach(kernel, client, msg)
        return kernel

    def _named(self, client: bytes, msg: Message, attach: bool = True) -> Kernel:
        name = msg.content.get("kernel") or "default"
        kernel = self.broker.registry.by_name.get(name) if isinstance(name, str) else None
        if kernel is None:
            gone = self.broker.registry.gone.get(name) if isinstance(name, str) else None
            detail = f" ({gone['event']}: {gone['reason']})" if gone else ""
            raise RequestError(f"no kernel named {name!r}{detail}", ErrorName.NO_SUCH_KERNEL)
        if attach:
            kernel.clients[client] = self
        return kernel

    def _interrupt(self, client: bytes, msg: Message) -> None:
        kernel = self._named(client, msg)
        request = msg.content.get("request")
        if request is None:
            was_busy = self.broker.scheduler.interrupt(kernel, msg)
        elif isinstance(request, str):  # only that request of this client's, if still pending
            was_busy = self.broker.scheduler.cancel(kernel, client, request, msg)
        else:
            raise RequestError("'request' must be a msg_id", ErrorName.BAD_REQUEST)
        self.reply_to(
            client,
            msg,
            MsgType.INTERRUPT_REPLY,
            {"status": "ok", "kernel": kernel.name, "was_busy": was_busy},
        )

    def _kernel_info(self, client: bytes, msg: Message) -> None:
        kernel = self._named(client, msg, attach=False)  # looking does not count as a client
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
        self.broker.lifecycle.remove(kernel, KernelEvent.SHUTDOWN, "shut down by request")
        self.reply_to(
            client, msg, MsgType.KERNEL_SHUTDOWN_REPLY, {"status": "ok", "kernel": kernel.name}
        )

    def _restart_kernel(self, client: bytes, msg: Message) -> None:
        """A fresh session for a kernel, with its options or the new ones the request gives."""
        kernel = self._named(client, msg)
        if kernel.parent is not None:
            raise RequestError(
                f"kernel {kernel.name!r} is a side of auto kernel {kernel.parent.name!r}: "
                f"restart that one (`stigmer kernels restart {kernel.parent.name}`)",
                ErrorName.BAD_REQUEST,
            )
        self.broker.lifecycle.check_restartable(kernel)  # before anything changes
        changes, text = restart_changes(kernel, msg.content, self.broker.config)
        reason = "restarted by request" + (f" with {', '.join(text)}" if text else "")
        self.broker.lifecycle.restart(kernel, reason, changes=changes)  # all are told
        self.reply_to(
            client,
            msg,
            MsgType.KERNEL_RESTART_REPLY,
            {"status": "ok", "kernel": kernel.name, "kernel_id": kernel.id, "reason": reason},
        )

    def _connect(self, client: bytes, msg: Message) -> None:
        """Give a kernel Jupyter sockets (created if needed) and say how to reach them."""
        content = msg.content
        connection = content.get("connection")
        if isinstance(connection, dict):
            check_connection(connection)
        _checked_envs(content)
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
                "auto_sticky": broker.config.auto_sticky,
                "kernel_ttl": broker.config.kernel_ttl,
                "kernels": len(broker.registry),
                "pools": broker.pools.figures(),
                "uptime": round(time.time() - broker.started_wall, 3),
                "stats": dict(broker.stats),
            },
        )

    def _server_shutdown(self, client: bytes, msg: Message) -> None:
        self.reply_to(client, msg, MsgType.SERVER_SHUTDOWN_REPLY, {"status": "ok"})
        self.broker.request_stop()

    def _detach(self, client: bytes, msg: Message) -> None:
        self.broker.client_gone(client, self.sock)

    def _stdin_chunk(self, client: bytes, msg: Message) -> None:
        """A piece of the stdin of a command this client runs with ``stdin_stream``: to the
        agent running it. Refused unless that command runs now and is this client's, and
        unless it stays within ``2 * STDIN_WINDOW`` bytes ahead of the agent's stdin_ack."""
        data, eof = msg.content.get("data", b""), msg.content.get("eof", False)
        if not isinstance(data, bytes) or not isinstance(eof, bool):
            raise RequestError(
                "stdin_chunk needs bytes 'data' and a boolean 'eof'", ErrorName.BAD_REQUEST
            )
        if len(data) > STDIN_CHUNK_MAX:
            raise RequestError(
                f"stdin_chunk data is more than {STDIN_CHUNK_MAX:,} bytes; send smaller chunks",
                ErrorName.BAD_REQUEST,
            )
        kernel, pending = self._stdin_target(client, msg)
        if pending.stdin_ended:
            raise RequestError(
                "the command's stdin already ended (eof was sent)", ErrorName.BAD_REQUEST
            )
        if pending.stdin_sent + len(data) - pending.stdin_written > 2 * STDIN_WINDOW:
            raise RequestError(
                f"more than {2 * STDIN_WINDOW:,} bytes of stdin ahead of the agent's stdin_ack; "
                "wait for its acknowledgements",
                ErrorName.STDIN_OVERFLOW,
            )
        pending.stdin_sent += len(data)
        pending.stdin_ended = eof
        content = {"data": data, "eof": eof}
        self.broker.agents.tell(kernel, MsgType.STDIN_CHUNK, content, pending.header, True)

    def _stdin_target(self, client: bytes, msg: Message) -> tuple[Kernel, Pending]:
        """The kernel (an auto kernel's side) running the request a stdin_chunk is parented to."""
        name = msg.content.get("kernel") or "default"
        kernel = self.broker.registry.by_name.get(name) if isinstance(name, str) else None
        for candidate in [kernel, *kernel.children.values()] if kernel is not None else []:
            pending = candidate.running
            if (
                pending is None
                or pending.msg_id != msg.parent_id
                or candidate.agent_identity is None
                or candidate.session is None
            ):
                continue
            if pending.client != client:
                raise RequestError("that command belongs to another client", ErrorName.NOT_OWNER)
            if pending.content.get("stdin_stream") is not True:
                raise RequestError(
                    "that command was not started with stdin_stream: its stdin is not taken",
                    ErrorName.BAD_REQUEST,
                )
            return candidate, pending
        raise RequestError(
            f"no command of request {msg.parent_id!r} runs on kernel {name!r} (it ended, or "
            "has not started: send stdin after the agent's first stdin_ack)",
            ErrorName.NOT_RUNNING,
        )


#: Fields of a request that say which kernel it is for (and shape it if it is created): the
#: broker's, never the agent's.
_KERNEL_FIELDS = {
    "kernel",
    "mode",
    "cwd",
    "ttl",
    "explicit",
    "settings",
    "kernel_env",
    "sandbox_image",
    "requirements",
    "workspace",
    "pool",
}

#: Fields of a native execute_request the agent acts on.
_AGENT_FIELDS = {
    "code",
    "timeout",
    "stdin",
    "stdin_stream",
    "output_limit",
    "silent",
    "store_history",
    "env",
    "workdir",
    "background",
}


def _checked_envs(content: dict[str, Any]) -> None:
    """Refuse a bad ``env`` (this command's variables) or ``kernel_env`` (a new host kernel's
    environment) before anything is created; an empty or absent one is dropped."""
    for field, shell_names in (("env", True), ("kernel_env", False)):
        if content.get(field) is None:
            content.pop(field, None)
        elif checked := checked_env(content[field], field, shell_names=shell_names):
            content[field] = checked
        elif field == "env":
            del content[field]  # nothing to set: the command line stays as it always is
