"""TCP endpoints: CurveZMQ for clients and agents on other hosts, and agents that join.

The ipc sockets need no more than file permissions. A TCP endpoint (``client_endpoint``,
``agent_endpoint``) is a separate socket secured with CurveZMQ: traffic is encrypted and every
peer must present a public key found in ``RUNTIME_DIR/curve/authorized/`` (ZAP rejects unknown
keys at the handshake, before a single message reaches the broker). Plain TCP is refused unless
the endpoint is on loopback and ``allow_plain_tcp`` is set. The keys, their files and the ZAP
checks are stigmer_kernel/curve.py's; this module binds the sockets.

A remote agent joins on its own (the broker cannot start processes on other hosts):
``python -m stigmer_kernel.agent --endpoint tcp://HOST:PORT --join NAME --server-key FILE
--curve-cert FILE``. Its registration carries the HMAC key it chose, which only an authenticated,
encrypted connection may do; the broker then serves kernel NAME (mode ``remote``) with it.
Heartbeats watch it like any agent: a cut link is a dead agent within three intervals.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import zmq

from ..curve import (
    AGENT_ZAP_DOMAIN,
    SANDBOX_ZAP_DOMAIN,
    ZAP_DOMAIN,
    AgentKeys,
    AuthorizedKeys,
    PoolKeys,
    SandboxKeys,
    authorized_dir,
    make_server,
    pools_dir,
    server_keys,
)
from ..errors import ProtocolError, StigmerError
from ..protocol import KernelState, MsgType, Session
from ..provisioners import AgentHandle
from .connections import CLIENT_RCVHWM, SNDHWM, Limits, apply_limits
from .model import AGENT_REPLAY_WINDOW, NAME_RE, REMOTE, Incarnation
from .peers import Authenticator, LocalPeers

if TYPE_CHECKING:
    from .service import Hub

log = logging.getLogger("stigmer.broker")

_LOOPBACK = ("127.0.0.1", "localhost", "[::1]")


class RemoteAgent(AgentHandle):
    """An agent on another host: no process of ours; heartbeats tell whether it lives."""

    def __init__(self) -> None:
        self.released = False

    @property
    def pid(self) -> int | None:
        return None

    def poll(self) -> str | None:
        return "released by the broker" if self.released else None

    def kill(self) -> None:
        """No process of ours to kill (agent_shutdown or a cut link ends it): just let go."""
        self.released = True

    def release(self) -> None:
        self.released = True  # agent_shutdown ends it on its host


class RemoteEndpoints:
    def __init__(self, broker: Hub) -> None:
        self.broker = broker
        self.authenticator: Authenticator | None = None
        # Public keys the broker made for its own sandbox agents over tcp, by kernel id.
        self.ephemeral: dict[str, bytes] = {}
        self._server_keys: tuple[bytes, bytes] | None = None
        self.authorized = AuthorizedKeys(authorized_dir(broker.runtime.path))
        self.pool_keys = PoolKeys(pools_dir(broker.runtime.path))
        #: Pool members' own keys for the kernels they serve, by member id (pools.py).
        self.member_keys: dict[str, bytes] = {}

    # -- CurveZMQ ---------------------------------------------------------------------------------
    def server_keys(self) -> tuple[bytes, bytes]:
        """(public, secret) of this runtime directory's server certificate, made if missing."""
        if self._server_keys is None:
            self._server_keys = server_keys(self.broker.runtime.path)
        return self._server_keys

    def tcp_router(
        self,
        endpoint: str,
        curve: bool = False,
        sandbox: bool = False,
        limits: Limits | None = None,
        agents: bool = False,
    ) -> zmq.Socket[Any]:
        """A bound ROUTER on ``endpoint``: CurveZMQ unless ``allow_plain_tcp`` (and not
        ``curve``, which forces it). ``sandbox``: the sandboxes' socket, whose peers are
        checked against the broker's own per-incarnation keys, not the authorized ones.
        ``limits``: its frame size and receive queue (default: the native clients').
        ``agents``: the agent TCP socket, which pool members' keys reach too."""
        host = endpoint.split("://", 1)[-1].rsplit(":", 1)[0]
        plain = self.broker.config.allow_plain_tcp and not curve
        if plain and host not in _LOOPBACK:
            raise StigmerError(
                f"refusing plain TCP on {endpoint}: allow_plain_tcp is for loopback only — "
                "unset it to use CurveZMQ"
            )
        sock: zmq.Socket[Any] = self.broker.ctx.socket(zmq.ROUTER)
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        sock.setsockopt(zmq.ROUTER_HANDOVER, 1)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDHWM, SNDHWM)
        apply_limits(sock, limits or Limits(self.broker.config.max_message_bytes, CLIENT_RCVHWM))
        sock.setsockopt(zmq.IPV6, 1)  # tcp://[::1]:PORT too (IPv4 addresses work as before)
        if not plain:
            _public, secret = self.server_keys()
            self.zap()
            domain = AGENT_ZAP_DOMAIN if agents else ZAP_DOMAIN
            make_server(sock, secret, SANDBOX_ZAP_DOMAIN if sandbox else domain)
        try:
            sock.bind(endpoint)
        except zmq.ZMQError as exc:
            sock.close(0)
            raise StigmerError(f"cannot bind {endpoint}: {exc}") from None
        log.info("listening on %s (%s)", endpoint, "plain TCP" if plain else "CurveZMQ")
        return sock

    def zap(self) -> Authenticator:
        """The context's one ZAP handler, started if it is not: CurveZMQ keys for the TCP
        sockets, and the mount namespace check of clients.sock (peers.py)."""
        if self.authenticator is None:
            self.authenticator = Authenticator(self.broker.ctx, LocalPeers(self.broker.stats))
            self.authenticator.configure_curve_callback(
                domain=ZAP_DOMAIN, credentials_provider=self.authorized
            )
            self.authenticator.configure_curve_callback(
                domain=AGENT_ZAP_DOMAIN,
                credentials_provider=AgentKeys(self.authorized, self.pool_keys, self.member_keys),
            )
            self.authenticator.configure_curve_callback(
                domain=SANDBOX_ZAP_DOMAIN,
                credentials_provider=SandboxKeys(self.ephemeral),
            )
            self.authenticator.start()
        return self.authenticator

    def close(self) -> None:
        if self.authenticator is not None:
            self.authenticator.stop()
            self.authenticator = None

    # -- agents that join -------------------------------------------------------------------
    def join(
        self,
        identity: bytes,
        msg_frames: list[bytes],
        sock: zmq.Socket[Any],
        curve_user: str | None = None,
    ) -> bool:
        """A registration from an agent nobody started: accept it as a remote kernel.
        ``curve_user``: the CurveZMQ key of its connection, which must be authorized for
        remote agents (a pool member's key is not)."""
        try:
            msg = Session(b"").decode(msg_frames)
        except ProtocolError:
            return False
        content = msg.content
        name, key = content.get("join"), content.get("key")
        if msg.msg_type != MsgType.AGENT_REGISTER.value or not isinstance(key, str):
            return False
        if self.broker.config.allow_plain_tcp:
            # Without CurveZMQ nobody vouches for the peer, and it would choose its own key.
            self.broker.reactor.drop_log(
                "a remote agent", "joining needs CurveZMQ, refused on plain TCP"
            )
            return True
        if not isinstance(name, str) or not NAME_RE.fullmatch(name):
            self.broker.reactor.drop_log("a remote agent", f"bad kernel name {name!r}")
            return True
        if curve_user is not None and curve_user.encode() not in self.authorized.current():
            self.broker.reactor.drop_log(
                "a remote agent", "its CurveZMQ key is a pool member's: it cannot join a kernel"
            )
            return True
        session = Session(key.encode(), replay_window=AGENT_REPLAY_WINDOW)
        try:
            session.verify_frames(msg_frames)
        except ProtocolError as exc:
            self.broker.reactor.drop_log("a remote agent", exc)
            return True
        existing = self.broker.registry.by_name.get(name)
        if existing is not None and (
            existing.state is not KernelState.DEAD or existing.mode != REMOTE
        ):
            # A dead local or sandbox kernel stays what it was: its clients' next command
            # must run on this host, never on the one that asked for the name.
            self.broker.reactor.drop_log("a remote agent", f"kernel name {name!r} is taken")
            return True
        kernel_id = identity.split(b":", 1)[0].decode("ascii", "replace")
        inc = Incarnation(id=kernel_id, session=session, handle=RemoteAgent(), sock=sock)
        self.broker.creation.joined(name, str(content.get("cwd") or "/"), inc, identity, msg)
        log.info(
            "remote agent joined as kernel %s (%s, %s)", name, kernel_id, content.get("hostname")
        )
        return True
