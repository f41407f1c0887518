"""The connections of the sockets others can reach: caps, and the memory guard.

``agents/agents.sock`` is mounted in every sandbox and a Jupyter TCP port is open to every local
user. libzmq has no cap on connections, bounds a message only frame by frame (``MAXMSGSIZE``)
and a queue only in complete messages (``RCVHWM``): a peer that never ends a multipart message
grows the broker's memory without limit (measured: 1.2 GB in 4 s from one connection), and a
flood of connections runs the process out of file descriptors. So each watched socket has a
monitor that lists its live connections (``ACCEPTED`` and ``DISCONNECTED`` carry the
connection's file descriptor), and the broker:

* shuts down a connection beyond the socket's cap as soon as it is accepted, and, on a loopback
  TCP socket that only this user's programs may use (the Jupyter channels), one whose other end
  belongs to another uid (``sock_diag`` names the owner of the peer's socket; root passes);
* shuts down a connection whose message failed the broker's checks (signature, frame count,
  identity): a peer without the key gets no second message on that connection;
* when its RSS passes ``broker_memory_mb``, shuts down every watched connection that has
  delivered no message for :data:`STALE_AFTER` seconds and never a correctly signed one (a
  peer in the middle of an endless message delivers none; an agent or a Jupyter client that
  proved its key is spared, as what the broker sends on its connection must arrive) and hands
  the freed memory back (``malloc_trim``).

"Shut down" is ``shutdown(2)`` on the descriptor libzmq owns, after checking that it still is a
connection to that socket; libzmq sees a hang-up and closes the connection itself.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import logging
import os
import resource
import socket
import struct
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import zmq
from zmq.utils.monitor import parse_monitor_message

if TYPE_CHECKING:
    from .service import Hub

log = logging.getLogger("stigmer.broker")

#: Seconds without a delivered message after which a connection counts as holding memory for
#: nothing, once the broker is over its memory limit.
STALE_AFTER = 0.25
#: Descriptors a raised limit keeps free for everything but watched connections (files, pipes of
#: local agents, the Docker API, native clients, new sockets).
FD_RESERVE = 1024
_EVENTS = zmq.EVENT_ACCEPTED | zmq.EVENT_DISCONNECTED
_WARN_EVERY = 10.0  # seconds between two warnings about the same thing


@dataclass(frozen=True)
class Limits:
    """What one kind of socket accepts: the largest frame (``MAXMSGSIZE``: a peer sending a
    bigger one is disconnected before it is read) and the complete messages queued per
    connection (``RCVHWM``: then libzmq stops reading that connection)."""

    max_frame: int
    rcvhwm: int


#: Agents: output chunks of at most 1 MiB (``OUTPUT_CHUNK``); the largest message is a
#: completion or inspection reply, built from at most 4 MiB + 1 MiB of captured output that
#: invalid UTF-8 can triple (U+FFFD). An agent keeps to its window of 16 chunks per command;
#: 64 queued per agent connection stop one that does not.
AGENT_LIMITS = Limits(max_frame=16 * 1024 * 1024, rcvhwm=64)
#: Jupyter shell, control and stdin: an execute_request's code is at most 1 Mi characters
#: (``MAX_CODE``), up to 12 bytes each in escaped JSON; clients ask one thing at a time.
JUPYTER_LIMITS = Limits(max_frame=16 * 1024 * 1024, rcvhwm=32)
#: Jupyter heartbeat pings and iopub subscriptions: a few bytes each.
JUPYTER_SMALL_LIMITS = Limits(max_frame=4096, rcvhwm=16)
#: Native clients: requests carry code (<= 4 MiB) and stdin (<= ``STDIN_INLINE_MAX`` from our
#: client; more streams in ``stdin_chunk`` messages); the frame limit is
#: ``Config.max_message_bytes``.
CLIENT_RCVHWM = 64
#: Messages queued to one peer of a native ROUTER before it counts as not reading (output is
#: then held by flow.py, a reply deferred): for a client, <= 48 output chunks of <=
#: ``OUTPUT_CHUNK`` (1 MiB): 48 MiB.
SNDHWM = 48
#: The same on the Jupyter channels, whose stream messages carry <= 64 KiB of output each
#: (``jupyter_channels.JUPYTER_STREAM_PIECE``; iopub is a PUB: a slow subscriber loses what
#: passes it).
JUPYTER_SNDHWM = 1000
#: Live connections per socket: a Jupyter channel (a few clients each), the agent sockets (two
#: per agent: main and heartbeat; so per kernel allowed, with room for restarts), and a TCP
#: socket for remote clients.
JUPYTER_CAP = 64
AGENT_CAP_PER_KERNEL = 4
CLIENT_TCP_CAP = 1024


def apply_limits(sock: zmq.Socket[Any], limits: Limits) -> None:
    """Set ``limits`` on a socket not yet bound (libzmq copies options at bind)."""
    sock.setsockopt(zmq.MAXMSGSIZE, limits.max_frame)
    sock.setsockopt(zmq.RCVHWM, limits.rcvhwm)


def raise_fd_limit() -> int:
    """Raise the soft ``RLIMIT_NOFILE`` to the hard limit; the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else 1 << 20
    if soft == resource.RLIM_INFINITY or soft >= target:
        return int(soft) if soft != resource.RLIM_INFINITY else target
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError) as exc:
        log.warning("could not raise the open-file limit from %d to %d: %s", soft, target, exc)
        return int(soft)
    return int(target)


def rss_bytes() -> int:
    """This process's resident set size (``/proc/self/statm``), 0 where there is none."""
    try:
        with open("/proc/self/statm", "rb") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def _malloc_trim() -> None:
    """Give memory freed by libzmq back to the OS (glibc keeps it otherwise)."""
    name = ctypes.util.find_library("c")
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(name).malloc_trim(0)


_NETLINK_SOCK_DIAG = 4
_SOCK_DIAG_BY_FAMILY = 20
_NLMSG_ERROR = 2
_UID_OFFSET = 16 + 4 + 48 + 12  # nlmsghdr, then inet_diag_msg up to idiag_uid


def tcp_peer_uid(conn: socket.socket, netlink: socket.socket) -> int | None:
    """The uid owning the other end of loopback TCP connection ``conn`` (a ``sock_diag``
    query on ``netlink`` for the peer's socket), or None if there is no such socket."""
    family = conn.family
    local_host, local_port = conn.getsockname()[:2]
    peer_host, peer_port = conn.getpeername()[:2]

    def address(host: str) -> bytes:
        return socket.inet_pton(family, host).ljust(16, b"\0")

    sockid = (
        struct.pack("!HH", peer_port, local_port)
        + address(peer_host)
        + address(local_host)
        + struct.pack("=III", 0, 0xFFFFFFFF, 0xFFFFFFFF)  # any interface, no cookie
    )
    request = struct.pack("=BBBBI", family, socket.IPPROTO_TCP, 0, 0, 0xFFFFFFFF) + sockid
    header = struct.pack("=IHHII", 16 + len(request), _SOCK_DIAG_BY_FAMILY, 1, 0, 0)
    netlink.send(header + request)
    answer = netlink.recv(8192)
    if len(answer) < _UID_OFFSET + 4 or struct.unpack_from("=H", answer, 4)[0] == _NLMSG_ERROR:
        return None
    return int(struct.unpack_from("=I", answer, _UID_OFFSET)[0])


@contextlib.contextmanager
def _borrowed(fd: int) -> Iterator[socket.socket | None]:
    """A socket object on a duplicate of libzmq's descriptor ``fd`` (None if it is closed or
    not a socket); only the duplicate is closed after."""
    try:
        dup = os.dup(fd)
    except OSError:
        yield None
        return
    try:
        conn = socket.socket(fileno=dup)
    except OSError:
        os.close(dup)
        yield None
        return
    with conn:
        yield conn


def _address_of(endpoint: str) -> str | int:
    """What ``getsockname`` says of a connection accepted on ``endpoint``: the ipc path, or
    the TCP port."""
    scheme, _, rest = endpoint.partition("://")
    if scheme == "ipc":
        return rest
    return int(rest.rsplit(":", 1)[1])


@dataclass(eq=False)
class Watched:
    """One socket others can reach and its live connections."""

    sock: zmq.Socket[Any]
    name: str
    cap: int
    address: str | int
    monitor: zmq.Socket[Any]
    #: Live connections (file descriptor) and when each last delivered a message (or was
    #: accepted), by the monotonic clock.
    live: dict[int, float] = field(default_factory=dict)
    closing: set[int] = field(default_factory=set)
    on_disconnect: Callable[[int], None] | None = None
    #: Loopback TCP for this user only: a peer of another uid is refused.
    owner_only: bool = False
    #: Live connections that have not delivered a message yet.
    silent: set[int] = field(default_factory=set)
    #: Live connections that delivered a message signed with a key the broker gave out (an
    #: agent, a Jupyter client): never closed by the memory guard, which would lose what the
    #: broker sends on them (an execute forwarded to an idle agent).
    proven: set[int] = field(default_factory=set)


class ConnectionGuard:
    """Caps and closes connections of the watched sockets (see the module docstring)."""

    def __init__(self, broker: Hub, memory_limit: int) -> None:
        self.broker = broker
        self.memory_limit = memory_limit
        self.watched: dict[zmq.Socket[Any], Watched] = {}
        #: Live watched connections, all sockets together, and how many the descriptor limit
        #: leaves them (set by :meth:`set_budget`).
        self.total = 0
        self.budget = 1 << 30
        #: The connection (file descriptor) of the message being handled, on a watched socket.
        self.current: int | None = None
        self._warned: dict[str, float] = {}
        self._netlink: socket.socket | None = None
        self._uids = {os.getuid(), 0}

    def set_budget(self, fd_limit: int) -> None:
        """Watched connections may use the descriptors ``fd_limit`` leaves after the reserve."""
        self.budget = max(fd_limit - FD_RESERVE, fd_limit // 2)

    def watch(
        self,
        sock: zmq.Socket[Any],
        name: str,
        cap: int,
        on_disconnect: Callable[[int], None] | None = None,
        owner_only: bool = False,
    ) -> None:
        """Watch the bound ``sock``: at most ``cap`` live connections; with ``owner_only`` (a
        loopback TCP socket), none from another uid."""
        address = _address_of(sock.getsockopt_string(zmq.LAST_ENDPOINT))
        monitor: zmq.Socket[Any] = sock.get_monitor_socket(_EVENTS)
        watched = Watched(
            sock,
            name,
            cap,
            address,
            monitor,
            on_disconnect=on_disconnect,
            owner_only=owner_only and isinstance(address, int),
        )
        self.watched[sock] = watched
        self.broker.reactor.register(monitor, lambda frames: self._on_event(watched, frames))

    def forget(self, sock: zmq.Socket[Any]) -> None:
        """Stop watching ``sock`` (before it is closed)."""
        watched = self.watched.pop(sock, None)
        if watched is None:
            return
        self.total -= len(watched.live)
        with contextlib.suppress(zmq.ZMQError):
            sock.disable_monitor()
        self.broker.reactor.unregister(watched.monitor)

    def _on_event(self, watched: Watched, frames: list[bytes]) -> None:
        try:
            event = parse_monitor_message(frames)
        except Exception:  # not a monitor event: nothing to learn from it
            return
        fd = event["value"]
        if event["event"] == zmq.EVENT_ACCEPTED:
            if len(watched.live) >= watched.cap or self.total >= self.budget:
                self.broker.stats["connections_refused"] += 1
                self._warn(
                    f"cap:{watched.name}",
                    f"{watched.name}: refusing connections beyond its cap of {watched.cap} "
                    f"(or {self.budget} for all exposed sockets)",
                )
                self._shut(watched, fd)
            elif watched.owner_only and not self._peer_allowed(watched, fd):
                self.broker.stats["connections_refused"] += 1
                self._warn(
                    f"uid:{watched.name}",
                    f"{watched.name}: refused a connection from another local user",
                )
                self._shut(watched, fd)
            elif fd not in watched.live:
                watched.live[fd] = time.monotonic()
                watched.silent.add(fd)
                self.total += 1
        elif event["event"] == zmq.EVENT_DISCONNECTED:
            watched.closing.discard(fd)
            watched.silent.discard(fd)
            watched.proven.discard(fd)
            if watched.live.pop(fd, None) is not None:
                self.total -= 1
            if watched.on_disconnect is not None:
                watched.on_disconnect(fd)

    def is_live(self, sock: zmq.Socket[Any], fd: int) -> bool:
        """Is ``fd`` an open connection of ``sock`` within its cap? Reads the monitor's pending
        events first: a connection's ACCEPTED precedes its first message there."""
        watched = self.settle(sock)
        return watched is not None and fd in watched.live and fd not in watched.closing

    def settle(self, sock: zmq.Socket[Any]) -> Watched | None:
        """Handle ``sock``'s pending monitor events now, not when the loop comes to them: a
        connection's ACCEPTED is queued before it can receive anything, so a PUB that settles
        before each send never sends to a connection the guard would refuse (another user's,
        on a busy server that has not read the event yet)."""
        watched = self.watched.get(sock)
        if watched is None:
            return None
        while True:
            try:
                frames = watched.monitor.recv_multipart(zmq.NOBLOCK)
            except zmq.ZMQError:
                break
            self._on_event(watched, frames)
        return watched

    # -- the pump's hooks -------------------------------------------------------------------------
    def delivered(self, watched: Watched, frames: list[Any]) -> int:
        """A message (``zmq.Frame`` objects) came in on ``watched``: its connection, noted."""
        fd = _source_fd(frames)
        self.current = fd
        if fd in watched.live:
            watched.live[fd] = time.monotonic()
            watched.silent.discard(fd)
        return fd

    def prove(self, sock: zmq.Socket[Any] | None) -> None:
        """The message being handled on ``sock`` passed its signature check: its connection is
        a legitimate peer's, spared by the memory guard."""
        watched = self.watched.get(sock) if sock is not None else None
        if watched is not None and self.current in watched.live:
            watched.proven.add(self.current)

    def kick_silent(self, sock: zmq.Socket[Any]) -> None:
        """End the connections of ``sock`` that never delivered a message (a client that came
        back while its old connection still held its identity is stuck on one: libzmq refused
        its routing id; ended, it reconnects)."""
        watched = self.watched.get(sock)
        if watched is not None:
            for fd in list(watched.silent):
                self._shut(watched, fd)

    def refuse(self, watched: Watched, fd: int) -> None:
        """The message from ``fd`` failed the broker's checks: that connection ends."""
        self.broker.stats["connections_closed"] += 1
        self._shut(watched, fd)

    # -- memory -----------------------------------------------------------------------------------
    def check_memory(self) -> None:
        """Over the memory limit: end the watched connections that deliver nothing."""
        if self.memory_limit <= 0 or not self.watched:
            return
        rss = rss_bytes()
        if rss <= self.memory_limit:
            return
        stale = time.monotonic() - STALE_AFTER
        closed = 0
        for watched in self.watched.values():
            for fd, seen in list(watched.live.items()):
                if seen < stale and fd not in watched.closing and fd not in watched.proven:
                    closed += self._shut(watched, fd)
        _malloc_trim()
        self.broker.stats["connections_closed"] += closed
        self._warn(
            "memory",
            f"memory {rss >> 20} MiB over the limit of {self.memory_limit >> 20} MiB "
            f"(broker_memory_mb): closed {closed} connection(s) that sent nothing for "
            f"{STALE_AFTER:g}s",
        )

    # -- helpers ----------------------------------------------------------------------------------
    def _peer_allowed(self, watched: Watched, fd: int) -> bool:
        """Is the other end of TCP connection ``fd`` this user's (or root's)?"""
        if self._netlink is None:
            try:
                self._netlink = socket.socket(
                    socket.AF_NETLINK, socket.SOCK_DGRAM, _NETLINK_SOCK_DIAG
                )
                self._netlink.settimeout(1.0)
            except OSError as exc:  # no sock_diag here: only the cap applies
                self._warn("netlink", f"cannot tell who connects over TCP (sock_diag: {exc})")
                watched.owner_only = False
                return True
        with _borrowed(fd) as conn:
            try:
                return conn is not None and tcp_peer_uid(conn, self._netlink) in self._uids
            except OSError:
                return False  # gone already, or not a TCP connection any more

    def close(self) -> None:
        if self._netlink is not None:
            self._netlink.close()
            self._netlink = None

    def _shut(self, watched: Watched, fd: int) -> int:
        """``shutdown(2)`` connection ``fd`` of ``watched`` if it still is one; 1 if done."""
        with _borrowed(fd) as conn:
            if conn is None:
                return 0  # already closed
            try:
                name = conn.getsockname()
                ours = (
                    name == watched.address
                    if isinstance(watched.address, str)
                    else (
                        conn.family in (socket.AF_INET, socket.AF_INET6)
                        and name[1] == watched.address
                    )
                )
                if not ours:
                    return 0  # the descriptor was reused meanwhile: not a connection of ours
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                return 0
        watched.closing.add(fd)
        return 1

    def _warn(self, what: str, message: str) -> None:
        now = time.monotonic()
        if now - self._warned.get(what, -_WARN_EVERY) >= _WARN_EVERY:
            self._warned[what] = now
            log.warning("%s", message)


def _source_fd(frames: list[Any]) -> int:
    """The descriptor of the connection a message came in on; -1 if libzmq does not say.
    Its last frame is asked first: libzmq 4.3.4 sets none on the routing id a ROUTER made from
    a connection's handshake (the first message of each connection), EINVAL when asked."""
    for frame in reversed(frames):
        try:
            return int(frame.get(zmq.SRCFD))
        except zmq.ZMQError:
            continue
    return -1
