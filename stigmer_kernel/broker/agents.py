"""The agent endpoint: the broker's side of every agent connection.

Incoming: an agent's frames are checked (its routing id names a live incarnation, signed with
that incarnation's key, on the socket it registered on, with the CurveZMQ key made for it) and
turned into core events — registered, re-attached, heard from, output, answered. Outgoing: the
:class:`~.service.AgentLink` the core speaks through (requests, interrupts, stdin, shutdown).

Agents reach the broker on ``agents.sock`` (ipc, local agents and sandboxes that mount it), on
the sandboxes' CurveZMQ TCP socket (``STIGMER_SANDBOX_TRANSPORT=tcp``) and on the TCP agent
socket remote agents join on (remote.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..curve import ClientKeys, keypair
from ..errors import ProtocolError, RequestError
from ..protocol import Message, MsgType
from ..protocol.constants import DELIM
from ..protocol.session import split_ids
from .model import Kernel, Pending
from .pools import MEMBER_PREFIX

if TYPE_CHECKING:
    from .flow import OutputFlow
    from .remote import RemoteEndpoints
    from .service import Hub

_REPLIES = {
    MsgType.EXECUTE_REPLY.value,
    MsgType.COMPLETE_REPLY.value,
    MsgType.INSPECT_REPLY.value,
    MsgType.IS_COMPLETE_REPLY.value,
    MsgType.FILE_REPLY.value,
    MsgType.PROCESS_REPLY.value,
}


class AgentEndpoint:
    """Implements :class:`~.service.AgentLink` over the broker's agent sockets."""

    def __init__(self, hub: Hub, remote: RemoteEndpoints, flow: OutputFlow) -> None:
        self.hub = hub
        self.remote = remote
        self.flow = flow
        self.sock: Any = None  # agents.sock, the ipc socket
        self.tcp_sock: Any = None  # where remote agents join (STIGMER_AGENT_ENDPOINT)
        self.sandbox_sock: Any = None  # sandbox agents over CurveZMQ TCP
        self.sandbox_endpoint: str | None = None  # ... its address as containers see it
        self.ipc_endpoint = hub.runtime.agent_endpoint

    def sock_for(self, kernel: Kernel) -> Any:
        return kernel.agent_sock or self.sock

    # -- the link the core speaks through -------------------------------------------------------
    def tell(
        self,
        kernel: Kernel,
        msg_type: MsgType,
        content: dict[str, Any],
        parent: Any = None,
        must_arrive: bool = False,
    ) -> bool:
        """Send one message to ``kernel``'s registered agent (False if it has none, or the
        socket cannot take it)."""
        session, identity = kernel.session, kernel.agent_identity
        if session is None or identity is None:
            return False
        msg = session.msg(msg_type.value, content, parent)
        frames = session.serialize(msg, [identity])
        return self.hub.reactor.send(self.sock_for(kernel), frames, must_arrive=must_arrive)

    def forward(self, kernel: Kernel, pending: Pending) -> bool:
        assert kernel.session is not None and kernel.agent_identity is not None
        msg = Message(header=pending.header, content=pending.content)
        frames = kernel.session.serialize(msg, [kernel.agent_identity])
        sock = self.sock_for(kernel)
        # A full queue defers the request (it will arrive); an unreachable peer does not.
        reactor = self.hub.reactor
        return reactor.send(sock, frames, must_arrive=True) or reactor.deferred(sock, frames[0])

    def interrupt(self, kernel: Kernel, parent: Message | None) -> None:
        self.tell(kernel, MsgType.INTERRUPT_REQUEST, {}, parent)

    def input_reply(self, kernel: Kernel, value: str, parent: Message) -> None:
        self.tell(kernel, MsgType.INPUT_REPLY, {"value": value}, parent)

    def shutdown(self, kernel: Kernel) -> None:
        self.tell(kernel, MsgType.AGENT_SHUTDOWN, {})

    def welcome(self, kernel: Kernel, msg: Message) -> None:
        self.tell(kernel, MsgType.AGENT_WELCOME, {"kernel": kernel.name}, msg)

    def placement(self, kernel: Kernel) -> tuple[str, ClientKeys | None, Any]:
        if kernel.pool:  # a pool member dials the agent TCP socket with its own keys
            return str(self.hub.config.agent_endpoint), None, self.tcp_sock
        if kernel.mode == "sandbox" and self.sandbox_sock is not None:
            public, secret = keypair()  # this incarnation's, known to ZAP until it ends
            self.remote.ephemeral[kernel.id] = public
            curve = ClientKeys(self.remote.server_keys()[0], public, secret)
            return str(self.sandbox_endpoint), curve, self.sandbox_sock
        return self.ipc_endpoint, None, None

    def start_hint(self, kernel: Kernel) -> str:
        if kernel.pool:
            return f" (a member of pool {kernel.pool!r} was claimed for it: did it die?)"
        if self.sandbox_sock is None or kernel.agent_sock is not self.sandbox_sock:
            return ""
        return (
            f" (it dials {self.sandbox_endpoint} over the container network: does a firewall "
            "drop it, or is STIGMER_SANDBOX_AGENT_BIND wrong?)"
        )

    def retired(self, kernel_id: str) -> None:
        self.remote.ephemeral.pop(kernel_id, None)

    # -- incoming -------------------------------------------------------------------------------
    def receiver(self, sock: Any, curve: bool = False) -> Callable[[list[Any]], None]:
        """The reactor callback of agent socket ``sock``; ``curve``: it reads each message's
        ZAP User-Id (the sandboxes' TCP socket, registered raw)."""
        if not curve:
            return lambda frames: self.on_frames(_envelope_bytes(frames), sock)

        def on_raw(frames: list[Any]) -> None:
            user = frames[-1].get("User-Id")  # the z85 key ZAP accepted for that connection
            self.on_frames(_envelope_bytes(frames), sock, curve_user=str(user))

        return on_raw

    def on_frames(self, frames: list[bytes], sock: Any, curve_user: str | None = None) -> None:
        """An agent's message. ``curve_user``: on the sandboxes' tcp socket, the CurveZMQ key
        its connection presented, which must be the one made for the kernel it speaks for."""
        hub = self.hub
        hub.stats["agent_msgs"] += 1
        try:
            ids, msg_frames = split_ids(frames)
            if len(ids) != 1:
                raise ProtocolError(f"expected one routing id, got {len(ids)}")
            identity = ids[0]
            kernel_id = identity.split(b":", 1)[0].decode("ascii", "replace")
            kernel = hub.registry.by_id.get(kernel_id)
            if kernel is None or kernel.session is None:
                if kernel_id in hub.registry.retired:
                    return  # last words of an agent we asked to stop
                if sock is not None and sock is self.tcp_sock:  # never the sandboxes' sockets
                    if identity.startswith(MEMBER_PREFIX):
                        hub.pools.on_message(identity, msg_frames, curve_user)
                        return  # a pool member (pools.py)
                    if self.remote.join(identity, msg_frames, sock, curve_user):
                        return  # a remote agent (CurveZMQ-authenticated) joined
                raise ProtocolError(f"message from an unknown agent {identity[:80]!r}")
            member_key = hub.pools.claimed.get(kernel_id)
            if member_key is not None:
                if curve_user != member_key or sock is not self.tcp_sock:
                    raise ProtocolError("an agent speaking for a pool kernel claimed by another")
            elif curve_user is not None and sock is not self.tcp_sock:
                expected = self.remote.ephemeral.get(kernel_id)
                if expected is None or expected.decode() != curve_user:
                    raise ProtocolError("a sandbox agent speaking for another kernel (its key)")
            if sock is not self.sock_for(kernel) and kernel.agent_identity is not None:
                raise ProtocolError("an agent message on another kernel's socket")
            kernel.session.verify_frames(msg_frames)
            hub.connections.prove(sock)
            mtype, parent_id = kernel.session.decode_routing(msg_frames)
        except ProtocolError as exc:
            hub.stats["dropped_bad"] += 1
            hub.reactor.drop_log("an agent", exc)
            return
        pending = kernel.pending.get(parent_id) if parent_id else None
        if mtype == MsgType.STREAM.value:
            hub.lifecycle.heard(kernel)
            if pending is not None and identity == kernel.agent_identity:
                self.flow.output(kernel, pending, msg_frames)
                if kernel.channels is not None and not pending.silent:
                    kernel.channels.output(kernel, pending, kernel.session.decode(msg_frames))
            return
        try:
            msg = kernel.session.decode(msg_frames)
        except ProtocolError as exc:
            hub.reactor.drop_log("an agent", exc)
            return
        if mtype == MsgType.AGENT_HEARTBEAT.value:
            if kernel.adopting and kernel.agent_identity is None:
                hub.lifecycle.reattached(kernel, identity, msg.content)
            hub.lifecycle.heard(kernel, msg.content.get("shell_pgid"), msg.content.get("processes"))
            ack = kernel.session.msg(MsgType.AGENT_HEARTBEAT.value, {}, msg)
            hub.reactor.send(sock, kernel.session.serialize(ack, [identity]))
            return
        hub.lifecycle.heard(kernel)
        if mtype in _REPLIES:
            if pending is None or identity != kernel.agent_identity:
                return  # a request already answered (e.g. failed when the kernel shut down)
            self._answered(kernel, pending, msg, msg_frames)
        elif mtype == MsgType.INPUT_REQUEST.value:
            if pending is not None:
                pending.sink.input_request(kernel, pending, msg)
        elif mtype == MsgType.STDIN_ACK.value:  # credit for streamed stdin, to its client
            if pending is not None and identity == kernel.agent_identity:
                pending.sink.stdin_ack(pending, msg, msg_frames)
        elif mtype == MsgType.AGENT_REGISTER.value:
            try:
                hub.lifecycle.registered(kernel, identity, msg, None if sock is self.sock else sock)
            except RequestError as exc:
                hub.reactor.drop_log("an agent", exc)
        elif mtype != MsgType.AGENT_GOODBYE.value:
            hub.reactor.drop_log("an agent", f"unknown message type {mtype!r}")

    def _answered(
        self, kernel: Kernel, pending: Pending, msg: Message, msg_frames: list[bytes]
    ) -> None:
        """The agent's reply to ``pending``: completed once the output it follows is out."""
        frames: list[bytes] | None = msg_frames
        if (
            "output" in msg.content
            and msg.msg_type == MsgType.EXECUTE_REPLY.value
            and not self._inline(kernel, pending, msg.content)
        ):
            frames = None  # the reply is built anew, without it

        def finish() -> None:
            if kernel.pending.get(pending.msg_id) is not pending:
                return  # answered meanwhile (its kernel died, ...)
            if pending.lost:
                msg.content["lost_messages"] = pending.lost
            self.hub.scheduler.complete(
                kernel, pending, msg.content, None if pending.lost else frames
            )

        if not self.flow.hold_reply(pending, finish):
            finish()

    def _inline(self, kernel: Kernel, pending: Pending, content: dict[str, Any]) -> bool:
        """The output an execute_reply carries (its ``output``, the command's last): to the
        Jupyter channels now, as its stream messages would have gone, and to the client in the
        reply if it takes it there, else as stream messages before the reply. True if the
        reply keeps it (its frames can be forwarded as they are)."""
        output = content.get("output")
        entries = output if isinstance(output, list) else []
        chunks = [(entry[0], entry[1]) for entry in entries if _chunk(entry)]
        channels = kernel.channels
        if channels is not None and not pending.silent:
            for name, data in chunks:
                channels.output_chunk(pending, name, data)
        if pending.sink.takes_inline(pending):
            if entries and len(chunks) == len(entries):
                return True
            content["output"] = [list(chunk) for chunk in chunks]  # (bad entries dropped)
            return False
        del content["output"]
        session = kernel.session
        if session is not None:
            for name, data in chunks:  # as the agent's own stream messages would have come
                stream = {"name": name, "data": data}
                msg = session.msg(MsgType.STREAM.value, stream, pending.header)
                self.flow.output(kernel, pending, session.serialize(msg)[1:])  # (no delimiter)
        return False


def _chunk(entry: object) -> bool:
    """One well-formed entry of an execute_reply's ``output``: [stream name, bytes]."""
    return (
        isinstance(entry, (list, tuple))
        and len(entry) == 2
        and entry[0] in ("stdout", "stderr")
        and isinstance(entry[1], bytes)
    )


def _envelope_bytes(frames: list[Any]) -> list[Any]:
    """An agent's message (``zmq.Frame`` objects) with its routing ids, delimiter, signature and
    four dict frames as bytes, and its buffers left as frames: a stream's raw data frame is
    forwarded to the client as it came, never copied (``Session`` reads buffers either way)."""
    out: list[Any] = []
    for index, frame in enumerate(frames):
        out.append(frame.bytes)
        if out[-1] == DELIM:
            out.extend(f.bytes for f in frames[index + 1 : index + 6])
            out.extend(frames[index + 6 :])
            return out
    return out
