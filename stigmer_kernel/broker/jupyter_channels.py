"""The Jupyter channels of one kernel: its five sockets, its connection file, and iopub.

A kernel gets Jupyter sockets when someone asks for them (``stigmer kernels connection-file``,
or the kernelspec launcher): shell, control and stdin ROUTERs, an iopub PUB and a heartbeat
ROUTER that echoes, with the kernel's own Jupyter key. Without a connection to honour they are
ipc sockets in ``RUNTIME_DIR/jupyter/`` (0700: only the server's user reaches them); a
kernelspec-launched kernel gets the loopback TCP ports Jupyter chose. Messages are JSON, signed
with HMAC-SHA256, as ``jupyter_client`` expects.

What runs on the kernel is published on iopub (busy, execute_input, streams, error, idle),
parented to the request that caused it: everything on an ipc iopub, and on a TCP iopub (which
every local user can read) only what Jupyter clients asked, never a native client's commands or
output. Each reply goes only to the client that asked. A TCP connection from another local
user is closed as soon as it is accepted (broker/connections.py), and the ROUTERs have no
handover: a peer that learned a client's identity (its session id, on iopub) can neither take
over its route nor receive its replies.

What arrives on the channels is handed, unread, to a callback: the handlers are in
broker/jupyter.py, which imports this module (never the reverse).
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import json
import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import zmq

from ..errors import RequestError
from ..protocol import ErrorName, Message, MsgType, Session, new_key
from .connections import (
    JUPYTER_CAP,
    JUPYTER_LIMITS,
    JUPYTER_SMALL_LIMITS,
    JUPYTER_SNDHWM,
    apply_limits,
)
from .model import Kernel, Pending

if TYPE_CHECKING:
    from .service import Hub

#: What receives the frames that came over a channel: (channels, channel name, frames, the
#: connection's file descriptor if the connection guard knows it).
FrameHandler = Callable[["JupyterChannels", str, list[bytes], "int | None"], None]

CHANNELS = ("shell", "iopub", "stdin", "control", "hb")
#: Bytes of command output per iopub ``stream`` message at most (an agent's chunk is cut).
JUPYTER_STREAM_PIECE = 64 * 1024
_LOOPBACK = {"127.0.0.1", "localhost"}
#: Replies for requests the agent serves, by request kind.
_REPLY_TYPES = {
    MsgType.EXECUTE_REQUEST: MsgType.EXECUTE_REPLY,
    MsgType.COMPLETE_REQUEST: MsgType.COMPLETE_REPLY,
    MsgType.INSPECT_REQUEST: MsgType.INSPECT_REPLY,
    MsgType.IS_COMPLETE_REQUEST: MsgType.IS_COMPLETE_REPLY,
}


def check_connection(connection: dict[str, Any]) -> None:
    """Refuse a connection we would not bind, before anything is created for it."""
    scheme = connection.get("signature_scheme", "hmac-sha256")
    if scheme != "hmac-sha256":
        raise RequestError(f"unsupported signature_scheme {scheme!r}", ErrorName.BAD_REQUEST)
    transport = str(connection.get("transport", "tcp"))
    if transport not in ("tcp", "ipc"):
        raise RequestError(f"unsupported transport {transport!r}", ErrorName.BAD_REQUEST)
    ip = str(connection.get("ip", "127.0.0.1"))
    if transport == "ipc" and connection.get("ip") and not os.path.isabs(ip):
        raise RequestError(
            f"ipc path prefix {ip!r} is relative: give an absolute one (or none)",
            ErrorName.BAD_REQUEST,
        )
    if transport == "tcp" and ip not in _LOOPBACK:
        raise RequestError(
            f"refusing to bind Jupyter channels on {ip}: only loopback is allowed",
            ErrorName.BAD_REQUEST,
        )


class JupyterChannels:
    """The Jupyter sockets of one kernel, and the sink of the requests that come through them."""

    kind = "jupyter"

    def __init__(
        self,
        broker: Hub,
        kernel: Kernel,
        connection: dict[str, Any] | None,
        on_frames: FrameHandler,
    ):
        self.broker = broker
        self.on_frames = on_frames
        self.kernel = kernel
        if not connection:
            connection = {"transport": "ipc"}
        check_connection(connection)
        if connection.get("transport") == "ipc" and not connection.get("ip"):
            # Not the default "127.0.0.1", which would be a path relative to the server's cwd.
            connection = {**connection, "ip": self._ipc_base()}
        key = connection.get("key")
        self.key = key.encode() if isinstance(key, str) and key else new_key()
        self.transport = str(connection.get("transport", "tcp"))
        self.ip = str(connection.get("ip", "127.0.0.1"))
        #: A TCP iopub is readable by every local user: it carries only Jupyter clients' work.
        self.public = self.transport == "tcp"
        self.session = Session(
            self.key, packing="json", session_id=kernel.session_id, username="kernel"
        )
        self.sockets: dict[str, zmq.Socket[Any]] = {}
        self.ports: dict[str, int] = {}
        #: The shell connection (its file descriptor) each Jupyter client sent a correctly signed
        #: message on: the client counts in ``clients`` until that connection closes (the
        #: connection guard's monitor says when), and its channels' silent connections are
        #: ended then (see ``_disconnected``).
        self.client_fds: dict[bytes, int] = {}
        #: The same for control (a kernel manager may use control alone).
        self.control_fds: dict[bytes, int] = {}
        self._kick: asyncio.TimerHandle | None = None
        try:
            for index, name in enumerate(CHANNELS, start=1):
                wanted = connection.get(f"{name}_port") or 0
                self.ports[name] = self._bind(name, int(wanted), index)
        except (zmq.ZMQError, ValueError, TypeError, OverflowError) as exc:
            self.close()
            raise RequestError(
                f"cannot bind the Jupyter channels: {exc}", ErrorName.BAD_REQUEST
            ) from None
        self.connection_file = self._write_file()

    def _ipc_base(self) -> str:
        """A new ipc path prefix in ``RUNTIME_DIR/jupyter/`` (sockets ``PREFIX-1`` to ``-5``),
        short enough for the 107-character ipc limit wherever the runtime directory passed."""
        directory = self.broker.runtime.path / "jupyter"
        directory.mkdir(mode=0o700, exist_ok=True)
        while True:
            base = directory / secrets.token_hex(3)
            if not any(Path(f"{base}-{n}").exists() for n in range(1, len(CHANNELS) + 1)):
                return str(base)

    def _bind(self, name: str, port: int, index: int) -> int:
        sock: zmq.Socket[Any] = self.broker.ctx.socket(zmq.PUB if name == "iopub" else zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 500)
        if name != "iopub":
            # No ROUTER_HANDOVER: a second connection with a live client's identity is refused.
            sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        sock.setsockopt(zmq.SNDHWM, JUPYTER_SNDHWM)
        small = name in ("iopub", "hb")  # subscriptions and pings only come in there
        apply_limits(sock, JUPYTER_SMALL_LIMITS if small else JUPYTER_LIMITS)
        self.sockets[name] = sock
        if self.transport == "ipc":
            port = port or index
            path = f"{self.ip}-{port}"
            sock.bind(f"ipc://{path}")
            os.chmod(path, 0o600)
        elif port:
            sock.bind(f"tcp://{self.ip}:{port}")
        else:
            port = sock.bind_to_random_port(f"tcp://{self.ip}")
        self.broker.connections.watch(
            sock,
            f"kernel {self.kernel.name}'s Jupyter {name}",
            JUPYTER_CAP,
            self._disconnected(name) if name in ("shell", "control") else None,
            owner_only=True,  # TCP: other local users' connections are refused
        )
        if name != "iopub":
            self.broker.reactor.register(sock, self._handler(name))
        return port

    def _disconnected(self, name: str) -> Any:
        proven = self.control_fds if name == "control" else self.client_fds
        # Channels a client of this one reconnects, whose new connections may be stuck.
        kicked = ("control",) if name == "control" else ("shell", "stdin", "control")

        def on_disconnect(fd: int) -> None:
            gone = [c for c, f in proven.items() if f == fd]
            for client in gone:
                del proven[client]
            if gone and self.broker.loop is not None:
                # No ROUTER_HANDOVER: a client that reconnects while its old connection still
                # held its identity is refused it, silently. Such a new connection delivers
                # nothing: end it, and it reconnects now that the identity is free.
                if self._kick is not None:
                    self._kick.cancel()
                self._kick = self.broker.loop.call_later(_KICK_AFTER, self._kick_silent, kicked)

        return on_disconnect

    def _kick_silent(self, names: tuple[str, ...]) -> None:
        self._kick = None
        for name in names:
            sock = self.sockets.get(name)
            if sock is not None:
                self.broker.connections.kick_silent(sock)

    def _handler(self, name: str) -> Any:
        guard = self.broker.connections

        def handle(frames: list[bytes]) -> None:
            self.on_frames(self, name, frames, guard.current)

        return handle

    def attached(self, channel: str, client: bytes, fd: int) -> None:
        """``client``'s signed message came over ``channel`` connection ``fd``: it counts as
        attached there until that connection closes."""
        if not self.broker.connections.is_live(self.sockets[channel], fd):
            return  # its connection closed (or was refused) meanwhile
        seen = self.control_fds if channel == "control" else self.client_fds
        seen.pop(client, None)  # most recent last
        seen[client] = fd
        if len(seen) > _JUPYTER_CLIENTS_KEPT:  # bounded over weeks of reconnecting clients
            del seen[next(iter(seen))]

    @property
    def connection_info(self) -> dict[str, Any]:
        info: dict[str, Any] = {f"{name}_port": self.ports[name] for name in CHANNELS}
        info.update(
            ip=self.ip,
            key=self.key.decode(),
            transport=self.transport,
            signature_scheme="hmac-sha256",
            kernel_name=f"stigmer-{self.kernel.mode}",
        )
        return info

    def _write_file(self) -> str:
        directory = self.broker.runtime.path / "jupyter"
        directory.mkdir(mode=0o700, exist_ok=True)
        path = directory / f"kernel-{self.kernel.name}.json"
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump(self.connection_info, handle, indent=2)
        os.replace(tmp, path)
        return str(path)

    def same_connection(self, connection: dict[str, Any]) -> bool:
        """Does ``connection`` ask for these channels? (Only what it names counts: a bare
        ``{"transport": "tcp"}`` matches any TCP channels.)"""
        mine = self.connection_info
        return all(
            str(connection[k]) == str(mine[k])
            for k in ("key", "ip", "transport", *(f"{n}_port" for n in CHANNELS))
            if k in connection
        )

    def close(self) -> None:
        if self._kick is not None:
            self._kick.cancel()
            self._kick = None
        for sock in self.sockets.values():
            self.broker.connections.forget(sock)
        for sock in self.sockets.values():
            if self.broker.reactor.registered(sock):
                self.broker.reactor.unregister(sock)
            else:
                sock.close(500)
        self.sockets.clear()
        with contextlib.suppress(FileNotFoundError, AttributeError):
            Path(self.connection_file).unlink()

    # -- sending --------------------------------------------------------------------------------
    def send(
        self,
        channel: str,
        client: bytes,
        msg_type: MsgType,
        content: dict[str, Any],
        parent: dict[str, Any],
    ) -> None:
        msg = self.session.msg(msg_type.value, content, parent)
        self.broker.reactor.send(
            self.sockets.get(channel), self.session.serialize(msg, [client]), must_arrive=True
        )

    def publish(self, msg_type: MsgType | str, content: dict[str, Any], parent: Any) -> None:
        sock = self.sockets.get("iopub")
        if sock is None:
            return
        name = msg_type.value if isinstance(msg_type, MsgType) else msg_type
        msg = self.session.msg(name, content, parent)
        topic = f"kernel.{self.session.session_id[:8]}.{name}".encode()
        if self.public:  # refuse another user's new subscriber before it can get this
            self.broker.connections.settle(sock)
        with contextlib.suppress(zmq.Again):
            sock.send_multipart(self.session.serialize(msg, [topic]), flags=zmq.NOBLOCK)

    def publish_status(self, state: str, parent: Any) -> None:
        self.publish(MsgType.STATUS, {"execution_state": state}, parent)

    def new_incarnation(self, kernel: Kernel) -> None:
        """A restart: a new session id, announced with ``starting``."""
        self.session.session_id = kernel.session_id
        self.publish_status("starting", None)

    # -- iopub: everything that runs on the kernel ----------------------------------------------
    def _private(self, pending: Pending) -> bool:
        """A native client's request on a TCP iopub: nothing of it is published."""
        return self.public and pending.sink.kind != self.kind

    def started(self, kernel: Kernel, pending: Pending) -> None:
        pending.started = True
        if self._private(pending):
            return
        self.publish_status("busy", pending.header)
        if pending.kind is MsgType.EXECUTE_REQUEST and not pending.silent:
            self.publish(
                MsgType.EXECUTE_INPUT,
                {"code": pending.code, "execution_count": pending.execution_count},
                pending.header,
            )

    def output(self, kernel: Kernel, pending: Pending, msg: Message) -> None:
        self.output_chunk(pending, msg.content.get("name"), msg.content.get("data"))

    def output_chunk(self, pending: Pending, name: object, data: object) -> None:
        """One chunk of ``pending``'s output (a stream message's, or one of its reply's inline
        ``output``): published on iopub."""
        if self._private(pending) or name not in ("stdout", "stderr"):
            return
        if not isinstance(data, bytes):
            return
        decoder = pending.decoders.get(name)
        if decoder is None:
            decoder = pending.decoders[name] = codecs.getincrementaldecoder("utf-8")("replace")
        with memoryview(data) as view:  # in pieces: each iopub message as before the big chunks
            for at in range(0, len(data), JUPYTER_STREAM_PIECE):
                text = decoder.decode(view[at : at + JUPYTER_STREAM_PIECE])
                if text:
                    self.publish(MsgType.STREAM, {"name": name, "text": text}, pending.header)

    def finished(self, kernel: Kernel, pending: Pending, content: dict[str, Any]) -> None:
        if self._private(pending):
            pending.started = True
            return
        if not pending.started and pending.kind is not MsgType.IS_COMPLETE_REQUEST:
            pending.started = True
            self.publish_status("busy", pending.header)  # answered before it ever ran
        for name, decoder in pending.decoders.items():
            text = decoder.decode(b"", final=True)
            if text and not pending.silent:
                self.publish(MsgType.STREAM, {"name": name, "text": text}, pending.header)
        if (
            pending.kind is MsgType.EXECUTE_REQUEST
            and not pending.silent
            and content.get("status") not in ("ok", "aborted")
        ):
            self.publish(MsgType.ERROR, _error_content(content), pending.header)
        self.publish_status("idle", pending.header)

    # -- the sink of Jupyter requests -----------------------------------------------------------
    def stream(self, kernel: Kernel, pending: Pending, frames: list[bytes]) -> bool:
        return True  # Jupyter clients get outputs on iopub (see output())

    def takes_inline(self, pending: Pending) -> bool:
        return True  # (published on iopub with every other output, before the reply)

    def reply(
        self, kernel: Kernel, pending: Pending, content: dict[str, Any], frames: list[bytes] | None
    ) -> None:
        status = content.get("status")
        reply: dict[str, Any]
        if pending.kind is MsgType.EXECUTE_REQUEST:
            reply = {"status": "ok", "execution_count": pending.execution_count}
            if status == "ok":
                reply.update(user_expressions={}, payload=[])
            elif status == "aborted":
                reply["status"] = "aborted"
            else:
                reply.update(status="error", **_error_content(content))
            for key in ("exit_code", "duration", "cwd", "truncated", "session_reset"):
                if key in content:
                    reply[key] = content[key]
        elif status in ("ok", "complete", "incomplete", "invalid", "unknown"):
            reply = dict(content)
        elif pending.kind is MsgType.IS_COMPLETE_REQUEST:
            reply = {"status": "unknown"}
        else:
            reply = {"status": "error", **_error_content(content)}
        self.send(
            pending.channel, pending.client, _REPLY_TYPES[pending.kind], reply, pending.header
        )

    def stdin_ack(self, pending: Pending, msg: Message, frames: list[bytes]) -> None:
        """Jupyter clients never stream stdin: nothing to credit."""

    def input_request(self, kernel: Kernel, pending: Pending, msg: Message) -> None:
        self.send("stdin", pending.client, MsgType.INPUT_REQUEST, dict(msg.content), pending.header)


def _error_content(content: dict[str, Any]) -> dict[str, Any]:
    ename = str(content.get("ename") or ErrorName.COMMAND_FAILED)
    evalue = str(content.get("evalue") or "")
    return {"ename": ename, "evalue": evalue, "traceback": [f"\x1b[0;31m{ename}\x1b[0m: {evalue}"]}


#: Jupyter client identities remembered per kernel and channel (replies, ``clients`` count).
_JUPYTER_CLIENTS_KEPT = 256


#: Seconds after a client's connection closed before the silent connections of its channels
#: are ended (its reconnection has been refused by then, if it was).
_KICK_AFTER = 0.5
