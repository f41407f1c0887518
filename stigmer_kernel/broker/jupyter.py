"""The Jupyter front end: the handlers of what arrives on every kernel's Jupyter channels.

The channels themselves (sockets, connection file, signing, iopub) are in
broker/jupyter_channels.py; this module opens and closes them, and answers what comes over
them: execute, complete, inspect and is_complete go to the kernel's queue; the broker answers
kernel_info, history, comm_info, shutdown and interrupt itself, never waiting for the agent.
"""

from __future__ import annotations

import fnmatch
import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from .._version import __version__
from ..errors import ProtocolError, RequestError
from ..protocol import ErrorName, KernelEvent, KernelState, Message, MsgType
from ..protocol.constants import PROTOCOL_VERSION
from ..protocol.enums import REPLY_FOR
from .jupyter_channels import JupyterChannels
from .model import Kernel, Pending, checked_code

if TYPE_CHECKING:
    from .service import Hub

log = logging.getLogger("stigmer.broker")


class JupyterFrontend:
    """Handles what arrives on every kernel's Jupyter channels."""

    def __init__(self, broker: Hub) -> None:
        self.broker = broker

    def open_channels(self, kernel: Kernel, connection: dict[str, Any] | None) -> JupyterChannels:
        if kernel.channels is not None:
            if connection and not kernel.channels.same_connection(connection):
                raise RequestError(
                    f"kernel {kernel.name!r} already has Jupyter channels with another "
                    f"connection ({kernel.channels.connection_file})",
                    ErrorName.BAD_REQUEST,
                )
            return kernel.channels
        kernel.channels = JupyterChannels(self.broker, kernel, connection, self.on_frames)
        log.info("kernel %s: Jupyter channels on %s", kernel.name, kernel.channels.connection_file)
        for child in kernel.children.values():
            child.channels = kernel.channels
        self.broker.records.save(kernel)
        if kernel.state is KernelState.IDLE:
            kernel.channels.publish_status("idle", None)
        return kernel.channels

    def close_channels(self, kernel: Kernel) -> None:
        if kernel.channels is not None:
            kernel.channels.close()
            kernel.channels = None

    def on_frames(
        self, channels: JupyterChannels, channel: str, frames: list[bytes], fd: int | None
    ) -> None:
        broker = self.broker
        if channel == "hb":
            broker.reactor.send(channels.sockets.get("hb"), frames)
            return
        broker.stats["client_msgs"] += 1
        try:
            ids, msg = channels.session.deserialize(frames)
            if not ids:
                raise ProtocolError("no routing id")
        except ProtocolError as exc:
            broker.stats["dropped_bad"] += 1
            broker.reactor.drop_log(f"a Jupyter client ({channel})", exc)
            return
        broker.connections.prove(channels.sockets.get(channel))
        kernel = channels.kernel
        client = ids[0]
        if fd is not None and channel in ("shell", "control"):
            channels.attached(channel, client, fd)
        mtype = msg.msg_type
        try:
            if channel == "stdin":
                if mtype == MsgType.INPUT_REPLY.value:
                    value = msg.content.get("value")
                    broker.scheduler.input_reply(
                        kernel, value if isinstance(value, str) else "", msg
                    )
                return
            if mtype == MsgType.EXECUTE_REQUEST.value and channel == "shell":
                self._execute(channels, client, msg)
            elif mtype in _AGENT_KINDS and channel == "shell":
                self._agent_request(channels, client, msg, _AGENT_KINDS[mtype])
            elif mtype in _IMMEDIATE:
                channels.publish_status("busy", msg.header)
                reply_type, content = _IMMEDIATE[mtype](self, kernel, msg)
                channels.send(channel, client, reply_type, content, msg.header)
                if mtype == MsgType.SHUTDOWN_REQUEST.value:
                    channels.publish(MsgType.SHUTDOWN_REPLY, content, msg.header)
                    self._shutdown(kernel, bool(msg.content.get("restart")))
                    return
                channels.publish_status("idle", msg.header)
            else:
                log.debug("ignored Jupyter %s on %s", mtype, channel)
        except Exception as exc:
            # Signed but malformed (a field of the wrong type...) or refused: the client still
            # gets its one reply, and the busy status published for it is closed.
            if isinstance(exc, RequestError):
                ename, evalue = exc.ename, str(exc)
            else:
                broker.reactor.drop_log(
                    f"a Jupyter client ({channel})", f"malformed {mtype}: {exc!r}"
                )
                ename, evalue = ErrorName.BAD_REQUEST, f"malformed {mtype} request: {exc}"
            try:
                reply_type = REPLY_FOR[MsgType(mtype)]
            except (ValueError, KeyError):
                reply_type = MsgType.ERROR_REPLY
            error = {"status": "error", "ename": ename, "evalue": evalue, "traceback": []}
            channels.send(channel, client, reply_type, error, msg.header)
            if mtype in _IMMEDIATE or mtype == MsgType.IS_COMPLETE_REQUEST.value:
                channels.publish_status("idle", msg.header)  # closes the busy published for it

    def _ensure_running(self, kernel: Kernel, client: bytes) -> None:
        if kernel.state is KernelState.DEAD:
            self.broker.lifecycle.restart(
                kernel,
                f"the previous agent died ({kernel.death_reason}); session state was reset",
                requester=client,
                quiet=not kernel.came_up,
            )

    def _execute(self, channels: JupyterChannels, client: bytes, msg: Message) -> None:
        content = msg.content
        code = checked_code(content)
        self._ensure_running(channels.kernel, client)
        silent = bool(content.get("silent", False))
        pending = Pending(
            sink=channels,
            client=client,
            header=msg.header,
            kind=MsgType.EXECUTE_REQUEST,
            content={
                "code": code,
                "silent": silent,
                "store_history": bool(content.get("store_history", not silent)),
                "allow_stdin": bool(content.get("allow_stdin", False)),
            },
            silent=silent,
            store_history=bool(content.get("store_history", not silent)),
            stop_on_error=bool(content.get("stop_on_error", True)),
        )
        self.broker.scheduler.submit(channels.kernel, pending)

    def _agent_request(
        self, channels: JupyterChannels, client: bytes, msg: Message, kind: MsgType
    ) -> None:
        self._ensure_running(channels.kernel, client)
        code = msg.content.get("code")
        content: dict[str, Any] = {"code": code if isinstance(code, str) else ""}
        cursor = msg.content.get("cursor_pos")
        if isinstance(cursor, int):
            content["cursor_pos"] = cursor
        pending = Pending(
            sink=channels, client=client, header=msg.header, kind=kind, content=content
        )
        if kind is MsgType.IS_COMPLETE_REQUEST:
            channels.publish_status("busy", msg.header)
        self.broker.scheduler.submit(channels.kernel, pending)

    def _shutdown(self, kernel: Kernel, restart: bool) -> None:
        if restart:
            self.broker.lifecycle.restart(kernel, "restarted by a Jupyter client", requested=True)
        else:
            self.broker.lifecycle.remove(
                kernel, KernelEvent.SHUTDOWN, "shut down by a Jupyter client"
            )

    # -- requests the broker answers itself -------------------------------------------------------
    def _kernel_info(self, kernel: Kernel, msg: Message) -> tuple[MsgType, dict[str, Any]]:
        version = str(kernel.agent_info.get("bash_version") or "")
        return MsgType.KERNEL_INFO_REPLY, {
            "status": "ok",
            "protocol_version": PROTOCOL_VERSION,
            "implementation": "stigmer",
            "implementation_version": __version__,
            "language_info": {
                "name": "bash",
                "version": version,
                "mimetype": "text/x-sh",
                "file_extension": ".sh",
                "pygments_lexer": "bash",
                "codemirror_mode": "shell",
            },
            "banner": (
                f"stigmer-kernel {__version__}: a warm bash session ({kernel.mode} mode), "
                f"kernel {kernel.name!r}"
            ),
            "help_links": [],
            "debugger": False,
        }

    def _history(self, kernel: Kernel, msg: Message) -> tuple[MsgType, dict[str, Any]]:
        entries = history(kernel.history, kernel.restarts + 1, msg.content)
        return MsgType.HISTORY_REPLY, {"status": "ok", "history": entries}

    def _comm_info(self, kernel: Kernel, msg: Message) -> tuple[MsgType, dict[str, Any]]:
        return MsgType.COMM_INFO_REPLY, {"status": "ok", "comms": {}}

    def _interrupt(self, kernel: Kernel, msg: Message) -> tuple[MsgType, dict[str, Any]]:
        self.broker.scheduler.interrupt(kernel)
        return MsgType.INTERRUPT_REPLY, {"status": "ok"}

    def _shutdown_reply(self, kernel: Kernel, msg: Message) -> tuple[MsgType, dict[str, Any]]:
        if msg.content.get("restart"):
            self.broker.lifecycle.check_restartable(
                kernel
            )  # a refusal is the reply; nothing is stopped
        return MsgType.SHUTDOWN_REPLY, {"status": "ok", "restart": bool(msg.content.get("restart"))}


def history(
    entries: Iterable[tuple[int, int, str]], session_now: int, content: dict[str, Any]
) -> list[Any]:
    """What a ``history_request`` with ``content`` gets of ``entries`` (session, line, code),
    ``session_now`` being the number of the kernel's current session (restarts + 1)."""
    access = content.get("hist_access_type", "tail")
    found = list(entries)
    if access == "range":
        session = content.get("session") or session_now
        if isinstance(session, int) and session <= 0:
            session += session_now  # relative: 0 is this session, -1 the one before
        start = content.get("start") or 0
        stop = content.get("stop")
        found = [
            e for e in found if e[0] == session and e[1] >= start and (stop is None or e[1] < stop)
        ]
    elif access == "search":
        pattern = str(content.get("pattern") or "*")
        found = [e for e in found if fnmatch.fnmatchcase(e[2], pattern)]
        if content.get("unique"):
            seen: dict[str, tuple[int, int, str]] = {}
            for entry in found:
                seen.pop(entry[2], None)
                seen[entry[2]] = entry
            found = list(seen.values())
    n = content.get("n")
    if access in ("tail", "search") and isinstance(n, int) and n > 0:
        found = found[-n:]
    if content.get("output"):
        return [(s, c, (code, None)) for s, c, code in found]
    return [list(e) for e in found]


_AGENT_KINDS = {
    MsgType.COMPLETE_REQUEST.value: MsgType.COMPLETE_REQUEST,
    MsgType.INSPECT_REQUEST.value: MsgType.INSPECT_REQUEST,
    MsgType.IS_COMPLETE_REQUEST.value: MsgType.IS_COMPLETE_REQUEST,
}
_IMMEDIATE: dict[str, Any] = {
    MsgType.KERNEL_INFO_REQUEST.value: JupyterFrontend._kernel_info,
    MsgType.HISTORY_REQUEST.value: JupyterFrontend._history,
    MsgType.COMM_INFO_REQUEST.value: JupyterFrontend._comm_info,
    MsgType.INTERRUPT_REQUEST.value: JupyterFrontend._interrupt,
    MsgType.SHUTDOWN_REQUEST.value: JupyterFrontend._shutdown_reply,
}
