"""A pool member before its claim: ``python -m stigmer_kernel.agent --pool NAME``.

It dials the broker's agent TCP socket (CurveZMQ), registers as an idle member of pool NAME
(signed with a key of its own choosing, which only the encrypted, authenticated link carries)
and heartbeats. When the broker sends ``agent_claim`` it returns the claim, and the caller runs
the ordinary agent for that kernel incarnation (one kernel in its life: it exits afterwards).
A broker that stops answering is waited for: the member registers again when it is back.
A refusal (``agent_refused``: wrong pool, another version) or a CurveZMQ key the broker's ZAP
handler rejects ends it with the reason.
"""

from __future__ import annotations

import contextlib
import os
import time
from _socket import gethostname  # not socket: its import (enums, selectors) slows a start
from typing import Any

import zmq

from .._version import __version__
from ..curve import ClientKeys, make_client
from ..errors import ProtocolError, StigmerError
from ..protocol import MsgType, Session
from . import log


class Refused(StigmerError):
    """The broker will not have this member."""


def wait_for_claim(
    endpoint: str, pool: str, curve: ClientKeys, heartbeat_interval: float = 1.0
) -> tuple[dict[str, Any], ClientKeys] | None:
    """Join ``pool`` and wait to be claimed: the claim's content and the CurveZMQ keys its
    kernel's connection presents (a pair made here, whose public half the registration
    carries: members that share the pool's key are still told apart), or None if the broker
    told the member to stop first."""
    own_public, own_secret = zmq.curve_keypair()
    key = os.urandom(32).hex().encode()
    session = Session(key)
    ctx: zmq.Context[Any] = zmq.Context()
    identity = f"@{os.urandom(6).hex()}:{os.getpid()}".encode()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.IDENTITY, identity)
    sock.setsockopt(zmq.SNDHWM, 10)
    make_client(sock, curve)
    monitor = sock.get_monitor_socket(zmq.EVENT_HANDSHAKE_FAILED_AUTH)
    sock.connect(endpoint)
    content = {
        "pool": pool,
        "key": key.decode(),
        "version": __version__,
        "curve_key": own_public.decode(),
        "hostname": gethostname(),
        "pid": os.getpid(),
    }
    welcomed = False
    next_send = 0.0
    last_ack = time.monotonic()
    try:
        while True:
            now = time.monotonic()
            if welcomed and now - last_ack > 3 * heartbeat_interval:
                log.warning("the broker stopped answering; joining pool %s again", pool)
                welcomed = False
            if now >= next_send:
                mtype = MsgType.AGENT_HEARTBEAT if welcomed else MsgType.AGENT_REGISTER
                msg = session.msg(mtype.value, content if not welcomed else {})
                with contextlib.suppress(zmq.Again):
                    sock.send_multipart(session.serialize(msg), flags=zmq.NOBLOCK)
                next_send = now + heartbeat_interval
            if monitor.poll(0):
                monitor.recv_multipart()
                raise Refused(
                    f"the broker at {endpoint} refused this agent's CurveZMQ key — authorize "
                    f"its public key there: `stigmer curve authorize --pool {pool} KEYFILE`"
                )
            if not sock.poll(min(200.0, heartbeat_interval * 1000)):
                continue
            try:
                _ids, reply = session.deserialize(sock.recv_multipart())
            except ProtocolError:
                continue  # only what is signed with our key comes from the broker
            last_ack = time.monotonic()
            if reply.msg_type == MsgType.AGENT_WELCOME.value:
                if not welcomed:
                    log.info("joined pool %s at %s: idle", pool, endpoint)
                welcomed = True
            elif reply.msg_type == MsgType.AGENT_REFUSED.value:
                raise Refused(f"the broker refused this member: {reply.content.get('reason')}")
            elif reply.msg_type == MsgType.AGENT_CLAIM.value:
                log.info("claimed for kernel %s", reply.content.get("kernel"))
                return dict(reply.content), ClientKeys(curve.server_public, own_public, own_secret)
            elif reply.msg_type == MsgType.AGENT_SHUTDOWN.value:
                return None
    finally:
        sock.disable_monitor()
        monitor.close(0)
        sock.close(0)
        ctx.term()
