"""CurveZMQ keys: the one place that makes, reads, writes, authorizes and checks them.

Used by the broker (its server certificate, the ZAP checks of its TCP sockets, the keys of its
sandbox agents over tcp), the CLI (``stigmer curve keygen|authorize|server-key``), the client
(:class:`~stigmer_kernel.client.RemoteServer`) and the agent (``--join``, ``--curve-file``).
It imports no broker, client or CLI module.

Files (``zmq.auth`` certificates, so czmq and pyzmq read them too)::

    NAME.key                   the public key; the umask's mode (it is handed around)
    NAME.key_secret            public and secret key; 0600, and refused when others may open it
    RUNTIME_DIR/curve/         0700, kept across restarts
        server.key             the server's public key (``stigmer curve server-key`` prints it)
        server.key_secret      its secret, made with server.key when missing
        authorized/            0700: the NAME.key of every TCP peer allowed in
    kernels/<id>/curve         a sandbox agent's three keys, z85, one a line (0600; the agent
                               reads, then deletes it)

A key is 40 characters of z85 (32 bytes). Keys travel as z85 ``bytes`` everywhere here, as
libzmq's socket options and ZAP User-Ids take them.
"""

from __future__ import annotations

import os
import re
import stat
import time
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import zmq
from zmq.utils.z85 import Z85CHARS

from .errors import CurveKeyError


class _BrokerLog:
    """The ZAP checks run in the broker, whose log names them. Looked up (and :mod:`logging`
    imported) at the first line logged: an agent imports this module too, and logs nothing
    through it."""

    def warning(self, msg: str, *args: object) -> None:
        import logging

        logging.getLogger("stigmer.broker").warning(msg, *args)


log = _BrokerLog()

#: The ZAP domain of the broker's CurveZMQ sockets for other hosts (the authorized keys).
ZAP_DOMAIN = "stigmer"
#: The ZAP domain of the sandboxes' tcp socket: only the keys the broker made for its own
#: sandbox agents pass there, and those keys pass nowhere else.
SANDBOX_ZAP_DOMAIN = "stigmer-sandbox"
#: The ZAP domain of the agent TCP socket: remote agents' authorized keys and pool members'.
AGENT_ZAP_DOMAIN = "stigmer-agents"
#: A pool's name (a directory under ``curve/pools/``).
POOL_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
#: The base name of the server's certificate in ``RUNTIME_DIR/curve/``.
SERVER_NAME = "server"
PUBLIC_SUFFIX = ".key"
SECRET_SUFFIX = ".key_secret"
_KEY_LENGTH = 40  # z85 of 32 bytes
_Z85 = frozenset(Z85CHARS)


class ClientKeys(NamedTuple):
    """What a CurveZMQ client needs: the server's public key, its own public and secret key."""

    server_public: bytes
    public: bytes
    secret: bytes


# -- key pairs and their files -------------------------------------------------------------------
def keypair() -> tuple[bytes, bytes]:
    """A new (public, secret) pair, z85, in memory only."""
    return zmq.curve_keypair()


def keygen(directory: str, name: str) -> tuple[str, str]:
    """Write a new pair as ``directory/NAME.key`` and ``NAME.key_secret`` (0600); their paths."""
    import zmq.auth

    public, secret = zmq.auth.create_certificates(directory, name)
    os.chmod(secret, 0o600)
    return public, secret


def is_key(key: bytes) -> bool:
    """Whether ``key`` is a z85 CurveZMQ key (40 characters)."""
    return _is_key(key)


def _is_key(key: bytes) -> bool:
    return len(key) == _KEY_LENGTH and _Z85.issuperset(key)


def _load(path: str | os.PathLike[str]) -> tuple[bytes, bytes | None]:
    import zmq.auth

    try:
        public, secret = zmq.auth.load_certificate(path)
    except ValueError:
        raise CurveKeyError(
            f"{path} is not a CurveZMQ key file (no public key): make one with "
            "`stigmer curve keygen`"
        ) from None
    except OSError as exc:  # pyzmq's own for a missing file has no strerror
        raise CurveKeyError(f"cannot read {path}: {exc.strerror or 'no such file'}") from None
    if not _is_key(public):
        raise CurveKeyError(f"{path} holds a malformed public key (not 40 characters of z85)")
    return public, secret


def read_public(path: str | os.PathLike[str]) -> bytes:
    """The public key of a NAME.key (or NAME.key_secret) file."""
    return _load(path)[0]


def read_secret(path: str | os.PathLike[str]) -> tuple[bytes, bytes]:
    """(public, secret) of a NAME.key_secret file, which only its owner may open."""
    public, secret = _load(path)
    if secret is None:
        raise CurveKeyError(f"{path} holds no secret key")
    if not _is_key(secret):
        raise CurveKeyError(f"{path} holds a malformed secret key (not 40 characters of z85)")
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except OSError as exc:
        raise CurveKeyError(f"cannot read {path}: {exc.strerror}") from None
    if mode & 0o077:
        raise CurveKeyError(
            f"{path} is open to other users (mode {mode:04o}): a secret key must be its "
            f"owner's alone — chmod 600 {path}"
        )
    try:
        matches = zmq.curve_public(secret) == public
    except (ValueError, zmq.ZMQError):
        matches = False
    if not matches:
        raise CurveKeyError(f"{path}: its secret key is not the one of its public key")
    return public, secret


def client_keys(
    server_key_file: str | os.PathLike[str], cert_file: str | os.PathLike[str]
) -> ClientKeys:
    """A client's or a joining agent's keys: the server's ``server.key``, its own secret file."""
    server_public = read_public(server_key_file)
    public, secret = read_secret(cert_file)
    return ClientKeys(server_public, public, secret)


# -- a sandbox agent's keys over tcp (--curve-file) ----------------------------------------------
def keys_from_text(server_public: str, secret: str) -> ClientKeys:
    """A pool member's keys from z85 text (environment variables holding secrets)."""
    server, own = server_public.strip().encode(), secret.strip().encode()
    if not (_is_key(server) and _is_key(own)):
        raise CurveKeyError("a CurveZMQ key must be 40 z85 characters")
    return ClientKeys(server, zmq.curve_public(own), own)


def write_agent_keys(path: Path, keys: ClientKeys) -> None:
    """The three keys, z85, one a line, in a new 0600 file (``--curve-file``)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(b"\n".join(keys) + b"\n")


def take_agent_keys(path: str) -> ClientKeys:
    """Read the keys :func:`write_agent_keys` wrote, then delete the file. OSError if it cannot
    be read or deleted; :class:`CurveKeyError` if it holds anything but three keys."""
    with open(path, "rb") as handle:
        lines = handle.read().split()
    os.unlink(path)
    if len(lines) != 3 or any(len(k) != _KEY_LENGTH for k in lines):
        raise CurveKeyError(f"{path} must hold three z85 keys")
    return ClientKeys(lines[0], lines[1], lines[2])


# -- the runtime directory's keys ------------------------------------------------------------------
def curve_dirs(runtime_path: Path) -> Path:
    """``RUNTIME_DIR/curve/`` and its ``authorized/``, owner-only (0700), made if missing.

    An existing one with other permissions (e.g. 0755 from an older ``stigmer curve
    authorize``, which made ``curve/`` with the umask's mode) is set back to 0700: only the
    owner's own processes read them (a remote peer gets ``server.key`` from the owner, who copies
    it), and the authorized keys decide who may connect. Returns the ``curve/`` path.
    """
    curve = runtime_path / "curve"
    for directory in (curve, curve / "authorized"):
        directory.mkdir(mode=0o700, exist_ok=True)
        if stat.S_IMODE(directory.stat().st_mode) != 0o700:
            directory.chmod(0o700)
    return curve


def server_key_file(runtime_path: Path) -> Path:
    """``RUNTIME_DIR/curve/server.key``, the public half a remote peer is given."""
    return runtime_path / "curve" / (SERVER_NAME + PUBLIC_SUFFIX)


def ensure_server_keys(runtime_path: Path) -> Path:
    """Make the server's pair if its secret file is missing; the path of its public key."""
    directory = curve_dirs(runtime_path)
    if not (directory / (SERVER_NAME + SECRET_SUFFIX)).exists():
        keygen(str(directory), SERVER_NAME)
    return server_key_file(runtime_path)


def server_keys(runtime_path: Path) -> tuple[bytes, bytes]:
    """(public, secret) of this runtime directory's server certificate, made if missing."""
    ensure_server_keys(runtime_path)
    return read_secret(runtime_path / "curve" / (SERVER_NAME + SECRET_SUFFIX))


def authorized_dir(runtime_path: Path) -> Path:
    return runtime_path / "curve" / "authorized"


def pools_dir(runtime_path: Path) -> Path:
    return runtime_path / "curve" / "pools"


def authorize(runtime_path: Path, public_key_file: Path, pool: str | None = None) -> Path:
    """Copy a public key file into the authorized directory (under its own name); with
    ``pool``, into that pool's (``curve/pools/POOL/``): its holder may join the pool only."""
    read_public(public_key_file)  # refuse what is not a key file
    target_dir = curve_dirs(runtime_path) / "authorized"
    if pool is not None:
        if not POOL_NAME_RE.fullmatch(pool):
            raise CurveKeyError(f"bad pool name {pool!r}: 1-64 letters, digits, '.', '_', '-'")
        target_dir = pools_dir(runtime_path) / pool
        target_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    target = target_dir / public_key_file.name
    import shutil  # only `stigmer agent authorize` copies a key; an agent's start needs no shutil

    shutil.copyfile(public_key_file, target)
    os.utime(target_dir)  # the running server re-reads the directory
    return target


def authorized_keys(directory: Path) -> set[bytes]:
    """The public keys of the ``*.key`` files in ``directory``; unreadable ones are skipped
    (and logged)."""
    keys = set()
    for path in directory.glob("*" + PUBLIC_SUFFIX):
        try:
            keys.add(read_public(path))
        except CurveKeyError:
            log.warning("ignored unreadable CURVE key %s", path)
    return keys


# -- ZAP checks ------------------------------------------------------------------------------------
class CurveCheck(Protocol):
    """Who decides on a CurveZMQ peer of one ZAP domain (the ZAP handler asks it)."""

    def callback(self, domain: str, key: bytes) -> bool:
        """``key``: the peer's public key, z85."""
        ...


class AuthorizedKeys:
    """ZAP check of :data:`ZAP_DOMAIN`: is a peer's key in the authorized directory? Reads
    the directory again when its mtime changed; no directory refuses all."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._keys: set[bytes] = set()
        self._mtime = -1.0

    def current(self) -> set[bytes]:
        try:
            mtime = self.directory.stat().st_mtime
        except OSError:
            return set()
        if mtime != self._mtime:
            self._keys, self._mtime = authorized_keys(self.directory), mtime
        return self._keys

    def callback(self, domain: str, key: bytes) -> bool:
        allowed = key in self.current()
        if not allowed:
            log.warning("refused a CurveZMQ peer with an unknown public key")
        return allowed


class PoolKeys:
    """The keys authorized per pool (``curve/pools/NAME/*.key``), each pool's directory read
    again when its mtime changed."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._pools: dict[str, tuple[float, set[bytes]]] = {}

    def pools_of(self, key: bytes) -> set[str]:
        """The pools whose members may present ``key`` (z85)."""
        found: set[str] = set()
        try:
            directories = [d for d in self.root.iterdir() if d.is_dir()]
        except OSError:
            return found
        for directory in directories:
            try:
                mtime = directory.stat().st_mtime
            except OSError:
                continue
            cached = self._pools.get(directory.name)
            if cached is None or cached[0] != mtime:
                cached = self._pools[directory.name] = (mtime, authorized_keys(directory))
            if key in cached[1]:
                found.add(directory.name)
        return found


class AgentKeys:
    """ZAP check of :data:`AGENT_ZAP_DOMAIN`: a remote agent's authorized key, a key
    authorized for some pool (which pool, the broker checks at registration), or the key of
    its own that a member which joined gave for the kernel it will serve."""

    def __init__(
        self, authorized: AuthorizedKeys, pools: PoolKeys, members: dict[str, bytes]
    ) -> None:
        self.authorized = authorized
        self.pools = pools
        self.members = members  # each pool member's own key for its kernel, by member id

    def callback(self, domain: str, key: bytes) -> bool:
        allowed = (
            key in self.authorized.current()
            or key in self.members.values()
            or bool(self.pools.pools_of(key))
        )
        if not allowed:
            log.warning("refused a CurveZMQ peer with an unknown public key")
        return allowed


class SandboxKeys:
    """ZAP check of :data:`SANDBOX_ZAP_DOMAIN`: the keys the broker made for its sandbox
    agents, by kernel id (the owner adds and drops them)."""

    def __init__(self, keys: dict[str, bytes]) -> None:
        self.keys = keys
        self.logged = 0.0

    def callback(self, domain: str, key: bytes) -> bool:
        allowed = key in self.keys.values()
        if not allowed and time.monotonic() - self.logged > 10:  # a peer retries: log rarely
            self.logged = time.monotonic()
            log.warning("refused a sandbox agent with a CurveZMQ key this server did not make")
        return allowed


# -- sockets ---------------------------------------------------------------------------------------
def make_server(sock: zmq.Socket[Any], secret: bytes, domain: str) -> None:
    """CurveZMQ server on ``sock`` (before bind): its secret key, peers checked in ``domain``."""
    sock.setsockopt(zmq.CURVE_SERVER, 1)
    sock.setsockopt(zmq.CURVE_SECRETKEY, secret)
    sock.setsockopt(zmq.ZAP_DOMAIN, domain.encode())


def make_client(sock: zmq.Socket[Any], keys: ClientKeys) -> None:
    """CurveZMQ client on ``sock`` (before connect)."""
    sock.setsockopt(zmq.CURVE_SERVERKEY, keys.server_public)
    sock.setsockopt(zmq.CURVE_PUBLICKEY, keys.public)
    sock.setsockopt(zmq.CURVE_SECRETKEY, keys.secret)
