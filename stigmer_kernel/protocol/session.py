"""Building, signing, serializing and verifying messages: the one place that does it.

A :class:`Session` turns a :class:`Message` into ZeroMQ frames and back::

    [ids...] <IDS|MSG> hmac-hex header parent_header metadata content [buffers...]

The four dict frames are msgpack (native protocol) or JSON (Jupyter channels). The signature is
HMAC-SHA256 over the four dict frames, hex-encoded, as in the Jupyter messaging spec. Every
signature a session accepts is remembered in a bounded window, so a replayed message is refused.

A large ``stream`` chunk of the native protocol travels in a raw frame (the first buffer), its
SHA-256 in the signed content (``data_sha256``): the signature covers it through the digest, a
broker forwarding it re-signs the small frames only and never hashes or copies the data, and
:meth:`Session.decode` checks the digest and gives the data back as ``content["data"]``.
"""

from __future__ import annotations

import itertools
import os
import time
from _operator import _compare_digest as compare_digest  # hmac's, without importing hmac

from ..errors import ProtocolError, SignatureError
from .constants import DELIM, MAX_BUFFERS, MIN_FRAMES, PROTOCOL_VERSION

TYPE_CHECKING = False  # not typing's: see stigmer_kernel/__init__.py
if TYPE_CHECKING:
    from _hashlib import HASH
    from collections import deque
    from collections.abc import Callable, Sequence
    from hashlib import sha256
    from hmac import HMAC
    from typing import Any, Literal

    Packing = Literal["msgpack", "json"]
else:
    # collections' C core: the collections module (keyword, operator, reprlib, namedtuple's
    # machinery) would cost a plain ``stigmer run`` ~2 ms, for deque alone.
    from _collections import deque

    # The builtin SHA-256 (no stub for mypy: hashlib's has the same API), for lean sessions
    # (see LEAN_BUILTIN_MAX); hashlib would load OpenSSL.
    from _sha256 import sha256

_REQUIRED_HEADER = ("msg_id", "msg_type", "session")


class Message:
    """One protocol message: the Jupyter envelope plus optional binary buffers.

    Written out, not a ``@dataclass(slots=True)``: the same constructor, ``repr`` and ``==``
    without the import of :mod:`dataclasses` (and :mod:`inspect`, :mod:`ast`) on the start of
    an agent or of ``stigmer run``.
    """

    __slots__ = ("buffers", "content", "header", "metadata", "parent_header")
    __match_args__ = ("header", "parent_header", "metadata", "content", "buffers")
    __hash__ = None  # type: ignore[assignment]  # mutable, compared by value, like a dataclass

    header: dict[str, Any]
    parent_header: dict[str, Any]
    metadata: dict[str, Any]
    content: dict[str, Any]
    buffers: list[bytes]

    def __init__(
        self,
        header: dict[str, Any],
        parent_header: dict[str, Any] | None = None,
        metadata: dict[str, Any] | None = None,
        content: dict[str, Any] | None = None,
        buffers: list[bytes] | None = None,
    ) -> None:
        self.header = header
        self.parent_header = {} if parent_header is None else parent_header
        self.metadata = {} if metadata is None else metadata
        self.content = {} if content is None else content
        self.buffers = [] if buffers is None else buffers

    def __repr__(self) -> str:
        return (
            f"Message(header={self.header!r}, parent_header={self.parent_header!r}, "
            f"metadata={self.metadata!r}, content={self.content!r}, buffers={self.buffers!r})"
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Message) or other.__class__ is not self.__class__:
            return NotImplemented
        return (self.header, self.parent_header, self.metadata, self.content, self.buffers) == (
            other.header,
            other.parent_header,
            other.metadata,
            other.content,
            other.buffers,
        )

    @property
    def msg_type(self) -> str:
        return str(self.header["msg_type"])

    @property
    def msg_id(self) -> str:
        return str(self.header["msg_id"])

    @property
    def parent_id(self) -> str | None:
        value = self.parent_header.get("msg_id")
        return value if isinstance(value, str) else None


def _codec(packing: Packing, lean: bool) -> tuple[Callable[[Any], bytes], Callable[[bytes], Any]]:
    """A session's (dumps, loads): JSON, msgpack, or for a lean session the same msgpack in
    pure Python (protocol/lean_msgpack.py: importing msgpack would cost ``stigmer run`` a fifth
    of its start)."""
    if packing == "json":
        return _json_dumps, _json_loads
    if lean:
        from . import lean_msgpack

        return lean_msgpack.packb, lean_msgpack.unpackb
    import msgpack

    def dumps(obj: Any) -> bytes:
        return msgpack.packb(obj, use_bin_type=True)  # type: ignore[no-any-return]

    def loads(data: bytes) -> Any:
        return msgpack.unpackb(data, raw=False, strict_map_key=True)

    return dumps, loads


def _json_dumps(obj: Any) -> bytes:
    import json  # only Jupyter channels pack JSON: not imported by an agent or a native client

    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False, default=str).encode()


def _json_loads(data: bytes) -> Any:
    import json  # see _json_dumps

    return json.loads(data)


#: The ISO text of the last second :func:`now_iso` formatted: (that second, its text).
_iso_second: tuple[int, str] = (-1, "")


def now_iso() -> str:
    """The time now as ISO 8601 in UTC, to the microsecond (a header's ``date``): the text of
    the second is made once per second, not once per message."""
    global _iso_second
    now = time.time()
    second = int(now)
    if second != _iso_second[0]:
        text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))  # no datetime import
        _iso_second = (second, text)
    return f"{_iso_second[1]}.{int((now - second) * 1e6):06d}+00:00"


def new_key() -> bytes:
    """A fresh random signing key (hex text, as Jupyter connection files carry it)."""
    return os.urandom(32).hex().encode()


#: A native ``stream`` chunk at least this large is sent in a raw frame (see the module's doc).
RAW_STREAM_MIN = 16 * 1024
_STREAM = "stream"


#: What a lean session (``Session(lean=True)``: ``stigmer run``, a process of one request)
#: hashes on the builtin SHA-256, signatures and stream digests alike: data of fewer bytes.
#: Loading OpenSSL (hashlib) costs a tenth of such a process's start, more than the builtin's
#: slower hashing of its round trip's frames; larger data loads it (several times faster on
#: megabytes of output). Other sessions, long-lived, hash everything with OpenSSL, as before.
LEAN_BUILTIN_MAX = 256 * 1024


def _openssl_sha256(data: bytes) -> bytes:
    import hashlib

    return hashlib.sha256(data).digest()


#: A signature's length: HMAC-SHA256, hex-encoded.
SIGNATURE_LENGTH = 2 * sha256().digest_size
#: SHA-256's block size, the length HMAC pads its key to (RFC 2104).
_BLOCK = 64
#: What XOR with HMAC's ipad and opad bytes makes of each byte.
_IPAD = bytes(b ^ 0x36 for b in range(256))
_OPAD = bytes(b ^ 0x5C for b in range(256))


class Signer:
    """HMAC-SHA256 over the four dict frames; a key of ``b""`` disables signing.

    By :mod:`hmac` with OpenSSL's SHA-256; ``lean``: frames of fewer than
    :data:`LEAN_BUILTIN_MAX` bytes in all by RFC 2104's construction on the builtin SHA-256,
    whose inner and outer states after the padded key are kept (two copies and two digests a
    signature), so that OpenSSL is not loaded for them. Both give the same signature
    (tests/protocol/test_session.py).
    """

    __slots__ = ("_hmac", "_inner", "_outer", "key")

    _hmac: HMAC | None  # hmac's after the key, made at its first use
    _inner: HASH | None  # lean: the builtin SHA-256 after the key XOR ipad
    _outer: HASH | None  # ... and after the key XOR opad

    def __init__(self, key: bytes, *, lean: bool = False) -> None:
        self.key = key
        self._hmac = self._inner = self._outer = None
        if key and lean:
            padded = (sha256(key).digest() if len(key) > _BLOCK else key).ljust(_BLOCK, b"\0")
            self._inner = sha256(padded.translate(_IPAD))
            self._outer = sha256(padded.translate(_OPAD))

    def sign(self, parts: Sequence[bytes]) -> bytes:
        if not self.key:
            return b""
        if self._inner and self._outer and sum(map(len, parts)) < LEAN_BUILTIN_MAX:
            inner = self._inner.copy()
            for part in parts:
                inner.update(part)
            outer = self._outer.copy()
            outer.update(inner.digest())
            return outer.hexdigest().encode()
        if self._hmac is None:
            import hashlib
            import hmac

            self._hmac = hmac.new(self.key, digestmod=hashlib.sha256)
        mac = self._hmac.copy()
        for part in parts:
            mac.update(part)
        return mac.hexdigest().encode()

    def verify(self, signature: bytes, parts: Sequence[bytes]) -> bool:
        if not self.key:
            return True
        if len(signature) != SIGNATURE_LENGTH:
            return False  # not even the shape of one: nothing is hashed for it
        return compare_digest(signature, self.sign(parts))


class ReplayWindow:
    """Remembers the last ``size`` signatures; a second sighting is a replay."""

    __slots__ = ("_order", "_seen", "size")

    def __init__(self, size: int = 65536) -> None:
        self.size = size
        self._seen: set[bytes] = set()
        self._order: deque[bytes] = deque()

    def check_and_add(self, signature: bytes) -> bool:
        """True if ``signature`` is new (and now remembered)."""
        if signature in self._seen:
            return False
        self._seen.add(signature)
        self._order.append(signature)
        if len(self._order) > self.size:
            self._seen.discard(self._order.popleft())
        return True


def split_ids(frames: Sequence[bytes]) -> tuple[list[bytes], list[bytes]]:
    """Split raw frames at the delimiter into (routing ids, message frames)."""
    for index, frame in enumerate(frames):
        if frame == DELIM:
            return list(frames[:index]), list(frames[index + 1 :])
    raise ProtocolError("no <IDS|MSG> delimiter in message")


class Session:
    """Builds and parses messages for one peer identity and one key.

    ``packing`` chooses msgpack (native protocol) or JSON (Jupyter channels).
    ``check_replay`` makes :meth:`deserialize` refuse a signature it has already accepted, among
    the last ``replay_window`` ones. ``lean``, for a process of one request (``stigmer run``):
    msgpack in pure Python, and the builtin SHA-256 for what is smaller than
    :data:`LEAN_BUILTIN_MAX`.
    """

    def __init__(
        self,
        key: bytes,
        *,
        packing: Packing = "msgpack",
        session_id: str | None = None,
        username: str = "stigmer",
        check_replay: bool = True,
        replay_window: int = 65536,
        lean: bool = False,
    ) -> None:
        self.signer = Signer(key, lean=lean)
        self._lean = lean
        self.packing: Packing = packing
        self.session_id = session_id or os.urandom(16).hex()
        self.username = username
        self._dumps, self._loads = _codec(packing, lean)
        self._counter = itertools.count(1)
        self._id_prefix = os.urandom(8).hex()
        self.replay = ReplayWindow(replay_window) if check_replay and key else None

    @property
    def key(self) -> bytes:
        return self.signer.key

    # -- building ---------------------------------------------------------------------------
    def new_msg_id(self) -> str:
        return f"{self._id_prefix}-{next(self._counter)}"

    def header(self, msg_type: str) -> dict[str, Any]:
        return {
            "msg_id": self.new_msg_id(),
            "msg_type": msg_type,
            "session": self.session_id,
            "username": self.username,
            "date": now_iso(),
            "version": PROTOCOL_VERSION,
        }

    def msg(
        self,
        msg_type: str,
        content: dict[str, Any] | None = None,
        parent: Message | dict[str, Any] | None = None,
        metadata: dict[str, Any] | None = None,
        buffers: list[bytes] | None = None,
    ) -> Message:
        parent_header = parent.header if isinstance(parent, Message) else (parent or {})
        return Message(
            header=self.header(msg_type),
            parent_header=dict(parent_header),
            metadata=metadata or {},
            content=content or {},
            buffers=buffers or [],
        )

    # -- wire format ------------------------------------------------------------------------
    def _digest(self, data: bytes) -> bytes:
        """The SHA-256 of a raw stream frame's data (see :data:`LEAN_BUILTIN_MAX`)."""
        if self._lean and len(data) < LEAN_BUILTIN_MAX:
            return sha256(data).digest()
        return _openssl_sha256(data)

    def serialize(self, msg: Message, ids: Sequence[bytes] = ()) -> list[bytes]:
        """Frames for ``msg``, preceded by routing ``ids``."""
        dumps = self._dumps
        content, buffers = msg.content, msg.buffers
        data = content.get("data")
        if (
            self.packing == "msgpack"
            and isinstance(data, bytes)
            and len(data) >= RAW_STREAM_MIN
            and msg.header.get("msg_type") == _STREAM
        ):
            content = {k: v for k, v in content.items() if k != "data"}
            content["data_sha256"] = self._digest(data)
            buffers = [data, *buffers]
        parts = [
            dumps(msg.header),
            dumps(msg.parent_header),
            dumps(msg.metadata),
            dumps(content),
        ]
        return [*ids, DELIM, self.signer.sign(parts), *parts, *buffers]

    def resign(self, msg_frames: Sequence[bytes]) -> list[bytes]:
        """Re-sign already serialized message frames (after the delimiter) with our key."""
        parts = list(msg_frames[1:5])
        return [DELIM, self.signer.sign(parts), *parts, *msg_frames[5:]]

    def verify_frames(self, msg_frames: Sequence[bytes]) -> None:
        """Check frame count and signature (and replay) of frames after the delimiter."""
        if len(msg_frames) < MIN_FRAMES:
            raise ProtocolError(f"expected at least {MIN_FRAMES} frames, got {len(msg_frames)}")
        if len(msg_frames) > MIN_FRAMES + MAX_BUFFERS:
            raise ProtocolError(f"too many frames ({len(msg_frames)})")
        signature = bytes(msg_frames[0])
        if not self.signer.verify(signature, msg_frames[1:5]):
            raise SignatureError("invalid message signature")
        if self.replay is not None and not self.replay.check_and_add(signature):
            raise SignatureError("replayed message (signature already seen)")

    def decode(self, msg_frames: Sequence[bytes]) -> Message:
        """Parse frames after the delimiter into a Message, without checking the signature."""
        try:
            header, parent, metadata, content = (self._loads(bytes(f)) for f in msg_frames[1:5])
        except Exception as exc:  # msgpack and json raise many kinds; all mean "malformed"
            raise ProtocolError(f"undecodable message frame: {type(exc).__name__}") from None
        if not isinstance(header, dict) or any(
            not isinstance(header.get(k), str) for k in _REQUIRED_HEADER
        ):
            raise ProtocolError("header must be a map with string msg_id, msg_type and session")
        if not (isinstance(parent, dict) and isinstance(metadata, dict)):
            raise ProtocolError("parent_header and metadata must be maps")
        if not isinstance(content, dict):
            raise ProtocolError("content must be a map")
        buffers = [bytes(b) for b in msg_frames[5:]]
        if "data_sha256" in content and header["msg_type"] == _STREAM:
            digest = content.pop("data_sha256")
            if not buffers or not compare_digest(
                self._digest(buffers[0]), digest if isinstance(digest, bytes) else b""
            ):
                raise SignatureError("a stream's data frame does not match its signed digest")
            content["data"] = buffers.pop(0)
        return Message(header, parent, metadata, content, buffers)

    def decode_routing(self, msg_frames: Sequence[bytes]) -> tuple[str, str | None]:
        """(msg_type, parent msg_id) of verified frames, without decoding the content.

        The broker's hot path: routing an output chunk needs no more than this.
        """
        try:
            header = self._loads(bytes(msg_frames[1]))
            parent = self._loads(bytes(msg_frames[2]))
            msg_type = header["msg_type"]
            parent_id = parent.get("msg_id") if isinstance(parent, dict) else None
        except Exception:
            raise ProtocolError("undecodable header or parent_header") from None
        if not isinstance(msg_type, str):
            raise ProtocolError("header.msg_type must be a string")
        return msg_type, parent_id if isinstance(parent_id, str) else None

    def deserialize(self, frames: Sequence[bytes]) -> tuple[list[bytes], Message]:
        """Verify and parse raw frames: returns (routing ids, message)."""
        ids, msg_frames = split_ids(frames)
        self.verify_frames(msg_frames)
        return ids, self.decode(msg_frames)
