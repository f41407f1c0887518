"""The agent's heartbeat: a thread with a socket of its own, so a busy agent still beats.

Each beat says the agent's pid, bash's process group, whether a request runs and how many
background processes run (a kernel with some is not idle, broker/liveness.py); the broker
answers each one, and the agent notes the time of the last signed answer (an agent that hears
nothing for ``orphan_timeout`` exits).
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from typing import TYPE_CHECKING, Any

import zmq

from ..curve import make_client
from ..errors import ProtocolError
from ..protocol import MsgType, Session

if TYPE_CHECKING:
    from .agent import AgentOptions


def secure(sock: zmq.Socket[Any], opts: AgentOptions) -> None:
    """CurveZMQ on a TCP connection to the broker (remote agents)."""
    if opts.curve is not None:
        make_client(sock, opts.curve)


class Heartbeat(threading.Thread):
    """Sends a beat every interval on its own socket and notes the broker's answers."""

    def __init__(self, ctx: zmq.Context[Any], opts: AgentOptions, identity: bytes) -> None:
        super().__init__(name="stigmer-heartbeat", daemon=True)
        self.ctx = ctx
        self.opts = opts
        self.identity = identity + b":hb"
        self.stop_event = threading.Event()
        self.last_ack = time.monotonic()
        self.busy = False
        self.shell_pgid = -1
        self.processes = 0  # background processes running (a kernel with some is not idle)

    def run(self) -> None:
        session = Session(self.opts.key, check_replay=False)
        sock = self.ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.IDENTITY, self.identity)
        sock.setsockopt(zmq.SNDHWM, 10)
        secure(sock, self.opts)
        sock.connect(self.opts.endpoint)
        try:
            while not self.stop_event.is_set():
                beat = session.msg(
                    MsgType.AGENT_HEARTBEAT.value,
                    {
                        "kernel_id": self.opts.kernel_id,
                        "pid": os.getpid(),
                        "shell_pgid": self.shell_pgid,
                        "busy": self.busy,
                        "processes": self.processes,
                    },
                )
                with contextlib.suppress(zmq.Again):
                    sock.send_multipart(session.serialize(beat), flags=zmq.NOBLOCK)
                deadline = time.monotonic() + self.opts.heartbeat_interval
                while (left := deadline - time.monotonic()) > 0 and not self.stop_event.is_set():
                    if sock.poll(min(left, 0.2) * 1000):
                        try:
                            session.deserialize(sock.recv_multipart())
                        except ProtocolError:
                            continue  # only a signed answer proves the broker is there
                        self.last_ack = time.monotonic()
        finally:
            sock.close(0)
