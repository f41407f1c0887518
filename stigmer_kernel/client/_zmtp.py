"""A DEALER in pure Python: ZMTP 3.1 (RFC 37, compatible with 3.0 peers) with the NULL mechanism
(RFC 23), over a Unix-domain socket (``ipc://``) or TCP (``tcp://``), for the lean path.

``stigmer run`` sends one request and reads its stream; importing pyzmq (and starting libzmq's
I/O thread) costs more than that whole exchange. :class:`ZmtpDealer` speaks just enough of the
wire: the 64-byte greeting, a ``READY`` command with ``Socket-Type`` and ``Identity``, then
frames (flags ``MORE``, ``LONG``, ``COMMAND``). A ``PING`` is answered with a ``PONG``; an
``ERROR`` command (a refused peer, RFC 37) or a peer that speaks something else fails with a
:class:`StigmerError` naming the endpoint. To the server's ROUTER it is a libzmq DEALER like
any other: the same identity rules, the same peer credentials (``SO_PEERCRED`` is taken by the
kernel at ``connect``).

Like libzmq's, a connection that ends after the handshake can be made again
(:meth:`~ZmtpDealer.reconnect`, which the caller tries as libzmq would every 100 ms), and what
was sent while it was down goes out once it is up; whether the server still runs is the
caller's liveness check.
"""

from __future__ import annotations

import _socket  # socket's C core: socket.py would convert its constants to enums at import
import struct

from ..errors import StigmerError

TYPE_CHECKING = False  # not typing's: see stigmer_kernel/__init__.py
if TYPE_CHECKING:
    from collections import deque
else:
    from _collections import deque  # see protocol/session.py

_SIGNATURE = b"\xff" + b"\0" * 8 + b"\x7f"
_GREETING = _SIGNATURE + b"\x03\x01" + b"NULL".ljust(20, b"\0") + b"\0" + b"\0" * 31
_MORE, _LONG, _COMMAND = 0x01, 0x02, 0x04
_CLOSED = "it closed the connection during the handshake"
#: Bytes asked of the socket per read of frames (a big frame's rest is asked for whole).
_READ = 16 * 1024
#: A frame at least this large (an output chunk) is read past the read buffer, its rest straight
#: from the socket into a buffer kept for that, and copied out once (one copy instead of three,
#: one allocation: a fresh one per read would make the kernel fault its pages in each time).
_BIG = 64 * 1024
#: A buffer for big frames larger than this is not kept once its frame is out.
_KEEP = 1024 * 1024


class ZmtpDealer:
    """A connected DEALER to ``endpoint`` (``ipc://PATH`` or ``tcp://HOST:PORT``) that says
    ``identity``. :meth:`fileno` is what to poll; :meth:`recv` returns a queued message or None.
    """

    def __init__(self, endpoint: str, identity: bytes, timeout: float = 5.0) -> None:
        if len(identity) > 255:
            raise StigmerError(f"a ZMTP identity has at most 255 bytes, not {len(identity)}")
        self.endpoint = endpoint
        self.identity = identity
        self.timeout = timeout  # for connecting and the handshake
        self._sock: _socket.socket | None = None
        self._buf = bytearray()
        self._big = bytearray()  # where a big frame is read
        self._body_size = 0  # ... the size of the one being read (0: none)
        self._body_got = 0  # ... its bytes read so far
        self._body_flags = 0  # ... and its flags
        self._parts: list[bytes] = []  # frames of the message being read
        self._messages: deque[list[bytes]] = deque()
        self._pending: deque[bytes] = deque()  # sent while down: sent once up again
        self.connect()

    # -- the connection ------------------------------------------------------------------------

    def connect(self) -> None:
        """Connect and do the handshake; StigmerError if nobody listens or the peer is not a
        ZMTP 3 ROUTER."""
        try:
            self._open()
        except OSError as exc:
            raise self._error(str(exc.strerror or exc)) from None

    def reconnect(self) -> bool:
        """Connect again after the peer closed: False if nobody (or a closing server) answers
        now, StigmerError if a peer that is not a ZMTP ROUTER does."""
        if self._sock is None:
            try:
                self._open()
            except OSError:
                return False
        return True

    def _open(self) -> None:
        scheme, sep, where = self.endpoint.partition("://")
        address: str | tuple[str, int]
        if scheme == "ipc" and sep:
            family, address = _socket.AF_UNIX, where
        elif scheme == "tcp" and sep:
            host, _, port = where.rpartition(":")
            host = host.strip("[]")
            family = _socket.AF_INET6 if ":" in host else _socket.AF_INET
            try:
                address = (host, int(port))
            except ValueError:
                raise self._error("not a HOST:PORT") from None
        else:
            raise self._error("not an ipc:// or tcp:// endpoint")
        sock = _socket.socket(family, _socket.SOCK_STREAM)
        try:
            if family != _socket.AF_UNIX:
                sock.setsockopt(_socket.IPPROTO_TCP, _socket.TCP_NODELAY, 1)
            sock.settimeout(self.timeout)
            sock.connect(address)
            try:
                self._handshake(sock)
            except (ConnectionResetError, BrokenPipeError):
                raise ConnectionResetError(_CLOSED) from None
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        self._sock = sock
        self._buf.clear()
        self._body_size = 0
        self._parts = []
        while self._pending and self._sock is not None:  # (a write that fails drops the link)
            self._write(self._pending.popleft())

    @property
    def connected(self) -> bool:
        return self._sock is not None

    def fileno(self) -> int:
        """The descriptor to poll for input (-1 while disconnected)."""
        return -1 if self._sock is None else self._sock.fileno()

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _handshake(self, sock: _socket.socket) -> None:
        _greet(sock)
        greeting = self._read_exact(sock, 64)
        if greeting[0] != 0xFF or greeting[9] != 0x7F or greeting[10] < 3:
            raise self._error("it does not speak ZMTP 3 (is it a stigmer server?)")
        if greeting[12:32].rstrip(b"\0") != b"NULL":
            mechanism = greeting[12:32].rstrip(b"\0").decode(errors="replace")
            raise self._error(f"it asks for the {mechanism!r} security mechanism, not NULL")
        ready = b"\x05READY" + _property(b"Socket-Type", b"DEALER")
        ready += _property(b"Identity", self.identity)
        sock.sendall(_frame(ready, _COMMAND))
        flags = self._read_exact(sock, 1)[0]
        if flags & _LONG:
            size = struct.unpack(">Q", self._read_exact(sock, 8))[0]
        else:
            size = self._read_exact(sock, 1)[0]
        if not flags & _COMMAND or size > 65536:
            raise self._error("its handshake is not ZMTP's")
        body = self._read_exact(sock, size)
        name, rest = _command(body)
        if name == b"ERROR":
            reason = rest[1 : 1 + rest[0]].decode(errors="replace") if rest else ""
            raise self._error(f"it refused this client ({reason or 'no reason given'})")
        if name != b"READY" or _properties(rest).get(b"socket-type") != b"ROUTER":
            raise self._error("it is not a ZMTP ROUTER")

    def _read_exact(self, sock: _socket.socket, n: int) -> bytes:
        data = bytearray()
        while len(data) < n:
            chunk = sock.recv(n - len(data))
            if not chunk:
                raise ConnectionResetError(_CLOSED)
            data += chunk
        return bytes(data)

    def _error(self, what: str) -> StigmerError:
        return StigmerError(f"cannot connect to {self.endpoint}: {what}")

    # -- messages ------------------------------------------------------------------------------

    def send(self, frames: list[bytes]) -> None:
        """Send one multipart message (queued while disconnected)."""
        last = len(frames) - 1
        data = b"".join(_frame(f, 0 if i == last else _MORE) for i, f in enumerate(frames))
        if self._sock is None:
            self._pending.append(data)
        else:
            self._write(data)

    def _write(self, data: bytes) -> None:
        assert self._sock is not None
        view = memoryview(data)
        while view:
            try:
                sent = self._sock.send(view)
            except BlockingIOError:
                self._wait_writable()
                continue
            except OSError:  # it went away: the rest is lost, as libzmq loses it
                self._lost()
                return
            view = view[sent:]

    def _wait_writable(self) -> None:
        import select

        assert self._sock is not None
        poller = select.poll()
        poller.register(self._sock.fileno(), select.POLLOUT)
        poller.poll(100)  # reading is not blocked meanwhile for long: the peer reads first

    def recv(self) -> list[bytes] | None:
        """The next complete message, reading what the socket holds; None if none is there."""
        if not self._messages and self._sock is not None:
            self._read_available()
        return self._messages.popleft() if self._messages else None

    def _read_available(self) -> None:
        """Read until the socket has nothing more now or a message is complete."""
        while self._sock is not None and not self._messages:
            try:
                if self._body_size:
                    with memoryview(self._big) as view:
                        got = self._sock.recv_into(view[self._body_got : self._body_size])
                        self._body_got += got
                        done = got and self._body_got == self._body_size
                        body = bytes(view[: self._body_size]) if done else b""
                    if done:
                        if self._body_size > _KEEP:
                            self._big = bytearray()
                        self._body_size = 0
                        self._frame(self._body_flags, body)
                    if got:
                        continue
                else:
                    chunk = self._sock.recv(_READ)
                    if chunk:
                        self._buf += chunk
                        self._parse()
                        if len(chunk) < _READ and not self._body_size:
                            break  # (what came is all there was)
                        continue
            except BlockingIOError:
                break
            except OSError:
                pass
            self._lost()  # (read nothing: the peer closed)
            break

    def _parse(self) -> None:
        """Take the complete frames out of the read buffer (and a big one's start)."""
        buf, pos, end = self._buf, 0, len(self._buf)
        commands: list[bytes] = []
        with memoryview(buf) as view:
            while end - pos >= 2:
                flags = buf[pos]
                if flags & _LONG:
                    if end - pos < 9:
                        break
                    size = int.from_bytes(view[pos + 1 : pos + 9], "big")
                    start = pos + 9
                else:
                    size = buf[pos + 1]
                    start = pos + 2
                if end - start < size:
                    if size >= _BIG and not flags & _COMMAND:
                        if len(self._big) < size:
                            self._big = bytearray(size)
                        self._big[: end - start] = view[start:end]
                        self._body_size, self._body_got = size, end - start
                        self._body_flags = flags
                        pos = end
                    break
                body = bytes(view[start : start + size])
                pos = start + size
                if flags & _COMMAND:
                    commands.append(body)  # after the buffer is trimmed (an ERROR clears it)
                else:
                    self._frame(flags, body)
        del buf[:pos]
        for body in commands:
            self._on_command(body)

    def _frame(self, flags: int, body: bytes) -> None:
        self._parts.append(body)
        if not flags & _MORE:
            self._messages.append(self._parts)
            self._parts = []

    def _on_command(self, body: bytes) -> None:
        name, rest = _command(body)
        if name == b"PING" and len(rest) >= 2:  # RFC 37: answer with its context
            assert self._sock is not None
            self._write(_frame(b"\x04PONG" + rest[2:], _COMMAND))
        elif name == b"ERROR":
            self._lost()

    def _lost(self) -> None:
        """The peer closed: forget the half-read message; reconnect() makes a new link."""
        self.close()
        self._buf.clear()
        self._body_size = 0
        self._parts = []


def _greet(sock: _socket.socket) -> None:
    """Send our greeting. A peer that closed at once is not an error yet: what it said first,
    if anything, says why (``try``: contextlib, with functools, is not imported for this)."""
    try:
        sock.sendall(_GREETING)
    except OSError:
        return


def _frame(body: bytes, flags: int) -> bytes:
    size = len(body)
    if size > 255:
        return bytes((flags | _LONG,)) + size.to_bytes(8, "big") + body
    return bytes((flags, size)) + body


def _property(name: bytes, value: bytes) -> bytes:
    return bytes((len(name),)) + name + len(value).to_bytes(4, "big") + value


def _command(body: bytes) -> tuple[bytes, bytes]:
    if not body or len(body) < 1 + body[0]:
        return b"", b""
    return body[1 : 1 + body[0]], body[1 + body[0] :]


def _properties(data: bytes) -> dict[bytes, bytes]:
    """A READY command's metadata, names lowercased (RFC 37 says they are case-insensitive)."""
    found: dict[bytes, bytes] = {}
    pos = 0
    while pos < len(data):
        n = data[pos]
        name = data[pos + 1 : pos + 1 + n]
        pos += 1 + n
        size = int.from_bytes(data[pos : pos + 4], "big")
        found[name.lower()] = data[pos + 4 : pos + 4 + size]
        pos += 4 + size
    return found
