"""Who may connect to ``clients.sock``: processes of this server's own mount namespace.

The client socket's file permissions keep other uids out, but not a sandbox: its commands run as
a uid that may be the server's own, and a runtime directory that ends up inside a workspace
(made there later, or too deep to be found and hidden, provisioners/workspace.py) would hand
it ``key`` and ``clients.sock``, and with them commands on the host. A process in a container
lives in another mount namespace; the client socket refuses every such peer.

How: the client ROUTER has a ZAP domain (:data:`IPC_ZAP_DOMAIN`), so libzmq asks the context's
ZAP handler once per connection, at the handshake, before a single message is read. For an ipc
connection libzmq gives the peer's credentials (SO_PEERCRED, taken at connect) as the ZAP
address ``localhost:UID:GID:PID``; the handler compares ``/proc/PID/ns/mnt`` with the broker's
own. A peer whose namespace cannot be read (it is gone, or of another uid that hides it) is
refused. Nothing is checked per message.

That ZAP handler is the context's only one, so it also answers for the CurveZMQ sockets (the
checks of stigmer_kernel/curve.py, which broker/remote.py gives it). Limits, said in
docs/reliability.md: a server that itself runs in a container (the compose setup) sees no pid of
processes outside its pid namespace (libzmq reports pid 0); there such a peer is let in (the
host's ``stigmer`` is one) and the workspace masks alone keep sandboxes from its runtime
directory. A client of the same uid in another mount namespace of this host (a flatpak or a
systemd unit with PrivateTmp) is refused as well.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from typing import Any

import zmq
from zmq.utils import z85

from ..curve import CurveCheck
from ..errors import StigmerError

log = logging.getLogger("stigmer.broker")

#: The ZAP domain of the ipc client socket.
IPC_ZAP_DOMAIN = "stigmer-local"
#: The inode of the initial pid namespace (PROC_PID_INIT_INO, include/linux/proc_ns.h).
PROC_PID_INIT_INO = 0xEFFFFFFC
#: Seconds between two warnings about refused peers (a refused peer reconnects every 100 ms).
_WARN_EVERY = 10.0
#: The ZAP protocol's version frame (RFC 27) and where libzmq asks.
_ZAP_VERSION = b"1.0"
_ZAP_ENDPOINT = "inproc://zeromq.zap.01"


def mount_namespace(pid: int | str) -> tuple[int, int] | None:
    """(device, inode) of ``pid``'s mount namespace; None if it cannot be read."""
    try:
        info = os.stat(f"/proc/{pid}/ns/mnt")
    except OSError:
        return None
    return info.st_dev, info.st_ino


def in_initial_pid_namespace() -> bool:
    """True unless this process runs in a pid namespace of its own (a container)."""
    try:
        return os.stat("/proc/self/ns/pid").st_ino == PROC_PID_INIT_INO
    except OSError:
        return True


class LocalPeers:
    """The verdict on ipc peers, from the address libzmq's ZAP request carries."""

    def __init__(self, stats: dict[str, int] | None = None) -> None:
        self.own = mount_namespace("self")
        self.sees_every_pid = in_initial_pid_namespace()
        self.stats = stats if stats is not None else {}
        self.stats.setdefault("peers_refused", 0)
        self._warned: float | None = None  # monotonic time of the last warning
        if self.own is None:
            log.warning(
                "cannot read this server's mount namespace (/proc/self/ns/mnt): clients.sock "
                "cannot tell a sandbox from a local client"
            )

    def allowed(self, address: str) -> bool:
        """``address``: ``localhost:UID:GID:PID`` (libzmq 4.3 on Linux)."""
        if self.own is None:
            return True
        parts = address.rsplit(":", 3)
        uid, pid = (parts[1], parts[3]) if len(parts) == 4 else ("?", "")
        if not pid.isdigit():
            return self._refuse(uid, pid, "no peer credentials")
        if pid == "0":  # in a pid namespace this server cannot see into
            if self.sees_every_pid:
                return self._refuse(uid, pid, "no process id")
            return True
        theirs = mount_namespace(pid)
        if theirs is None:
            return self._refuse(uid, pid, "its mount namespace cannot be read")
        if theirs != self.own:
            return self._refuse(uid, pid, "it runs in another mount namespace (a container?)")
        return True

    def _refuse(self, uid: str, pid: str, why: str) -> bool:
        self.stats["peers_refused"] = self.stats.get("peers_refused", 0) + 1
        now = time.monotonic()
        if self._warned is None or now - self._warned >= _WARN_EVERY:
            self._warned = now
            log.warning(
                "refused a connection to clients.sock from pid %s (uid %s): %s", pid, uid, why
            )
        return False


class Authenticator:
    """The context's one ZAP handler (RFC 27), on a thread of its own: ipc peers of
    :data:`IPC_ZAP_DOMAIN` by :class:`LocalPeers`, CurveZMQ peers by the check of their domain
    (the accepted key, z85, becomes the connection's User-Id). Anything else is refused.

    Our own rather than pyzmq's ThreadAuthenticator, whose NULL mechanism has no hook and whose
    internals changed between pyzmq versions.
    """

    def __init__(self, context: zmq.Context[Any], peers: LocalPeers) -> None:
        self.context = context
        self.peers = peers
        self.curve: dict[str, CurveCheck] = {}
        self._wake: zmq.Socket[Any] | None = None  # the owner's end of the stop pipe
        self._thread: threading.Thread | None = None
        self._started = threading.Event()
        self._error: str | None = None

    def configure_curve_callback(self, domain: str, credentials_provider: CurveCheck) -> None:
        self.curve[domain] = credentials_provider

    def start(self) -> None:
        pipe = f"inproc://stigmer-zap-{id(self)}"
        self._wake = self.context.socket(zmq.PAIR)
        self._wake.bind(pipe)
        self._thread = threading.Thread(
            target=self._run, args=(pipe,), name="stigmer-zap", daemon=True
        )
        self._thread.start()
        self._started.wait(10)
        if self._error is not None:
            self.stop()
            raise StigmerError(f"cannot start the ZAP handler: {self._error}")

    def stop(self) -> None:
        if self._wake is not None:
            with contextlib.suppress(zmq.ZMQError):
                self._wake.send(b"", zmq.NOBLOCK)
            if self._thread is not None:
                self._thread.join(5)
            self._wake.close(0)
            self._wake = None
        self._thread = None

    def _run(self, pipe: str) -> None:
        wake = self.context.socket(zmq.PAIR)
        zap = self.context.socket(zmq.REP)
        try:
            wake.connect(pipe)
            zap.bind(_ZAP_ENDPOINT)
        except zmq.ZMQError as exc:
            self._error = str(exc)
            self._started.set()
            wake.close(0)
            zap.close(0)
            return
        self._started.set()
        poller = zmq.Poller()
        poller.register(wake, zmq.POLLIN)
        poller.register(zap, zmq.POLLIN)
        try:
            while wake not in dict(poller.poll()):
                try:
                    request = zap.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    continue
                try:
                    reply = self.answer(request)
                except Exception:  # a check that broke refuses, and the handler lives on
                    log.exception("ZAP check failed; the peer is refused")
                    reply = [_ZAP_VERSION, request[1] if len(request) > 1 else b"", b"500"]
                    reply += [b"internal error", b"", b""]
                zap.send_multipart(reply)
        finally:
            wake.close(0)
            zap.close(0)

    def answer(self, request: list[bytes]) -> list[bytes]:
        """The ZAP reply to ``request``."""
        if len(request) < 6 or request[0] != _ZAP_VERSION:
            request_id = request[1] if len(request) > 1 else b""
            return [_ZAP_VERSION, request_id, b"400", b"invalid ZAP request", b"", b""]
        _version, request_id, domain_raw, address, _identity, mechanism, *credentials = request
        domain = domain_raw.decode("utf-8", "replace")
        user = b""
        if domain == IPC_ZAP_DOMAIN and mechanism == b"NULL":
            allowed = self.peers.allowed(address.decode("ascii", "replace"))
            user = b"local"
        elif mechanism == b"CURVE" and len(credentials) == 1 and domain in self.curve:
            user = z85.encode(credentials[0])
            allowed = bool(self.curve[domain].callback(domain, user))
        else:
            allowed = False
        if not allowed:
            return [_ZAP_VERSION, request_id, b"400", b"not allowed", b"", b""]
        return [_ZAP_VERSION, request_id, b"200", b"OK", user, b""]
