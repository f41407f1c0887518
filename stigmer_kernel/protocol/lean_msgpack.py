"""msgpack in pure Python, for a lean session (``stigmer run``): the same bytes as
``msgpack.packb(obj, use_bin_type=True)``, the same values as ``msgpack.unpackb(data,
raw=False, strict_map_key=True)``, for what the protocol carries (maps, lists, strings, bytes,
ints, floats, booleans, None).

Importing msgpack costs a plain ``stigmer run`` a fifth of its start: msgpack.ext imports
datetime (whose pure-Python classes are all built before ``_datetime`` replaces them) and
collections for one namedtuple. A run packs one request and unpacks a few small replies, where
pure Python costs microseconds; a large output chunk travels in a raw frame, never packed.
Anything msgpack would pack as an extension type, or unpack into one, is refused here
(TypeError, ValueError): the protocol has none. tests/protocol/test_lean_msgpack.py holds the
two to the same bytes and values.
"""

from __future__ import annotations

import struct

TYPE_CHECKING = False  # not typing's: see stigmer_kernel/__init__.py
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

_DOUBLE = struct.Struct(">d")
_FLOAT = struct.Struct(">f")
#: The header codes of each kind of sized object: its fix form's base code and limit, then the
#: code of its form with an 8-bit (arrays and maps have none), 16-bit and 32-bit size.
_STR = (0xA0, 32, 0xD9, 0xDA, 0xDB)
_BIN = (0, 0, 0xC4, 0xC5, 0xC6)
_ARRAY = (0x90, 16, None, 0xDC, 0xDD)
_MAP = (0x80, 16, None, 0xDE, 0xDF)


def packb(obj: Any) -> bytes:
    out = bytearray()
    _pack(obj, out)
    return bytes(out)


def _pack(obj: Any, out: bytearray) -> None:
    if obj is None:
        out.append(0xC0)
    elif obj is True or obj is False:
        out.append(0xC3 if obj else 0xC2)
    elif isinstance(obj, int):
        _pack_int(obj, out)
    elif isinstance(obj, float):
        out.append(0xCB)
        out += _DOUBLE.pack(obj)
    elif isinstance(obj, str):
        data = obj.encode()
        _head(out, len(data), _STR)
        out += data
    elif isinstance(obj, (bytes, bytearray, memoryview)):
        data = bytes(obj)
        _head(out, len(data), _BIN)
        out += data
    elif isinstance(obj, (list, tuple)):
        _head(out, len(obj), _ARRAY)
        for item in obj:
            _pack(item, out)
    elif isinstance(obj, dict):
        _head(out, len(obj), _MAP)
        for key, value in obj.items():
            _pack(key, out)
            _pack(value, out)
    else:
        raise TypeError(f"can not serialize {type(obj).__name__!r} object")


def _head(out: bytearray, size: int, kind: tuple[int, int, int | None, int, int]) -> None:
    """The header of a str, bin, array or map (``kind``) of ``size``: its smallest form."""
    fix, fix_limit, code8, code16, code32 = kind
    if size < fix_limit:
        out.append(fix | size)
    elif size < 0x100 and code8 is not None:
        out += bytes((code8, size))
    elif size < 0x10000:
        out.append(code16)
        out += size.to_bytes(2, "big")
    elif size < 0x100000000:
        out.append(code32)
        out += size.to_bytes(4, "big")
    else:
        raise ValueError("object too large to serialize")


#: The int forms, smallest first: (code, bytes), unsigned for a value >= 0 (as msgpack's).
_UINTS = ((0xCC, 1), (0xCD, 2), (0xCE, 4), (0xCF, 8))
_SINTS = ((0xD0, 1), (0xD1, 2), (0xD2, 4), (0xD3, 8))


def _pack_int(value: int, out: bytearray) -> None:
    if -0x20 <= value < 0x80:  # a positive or negative fixint
        out += value.to_bytes(1, "big", signed=True)
        return
    signed = value < 0
    for code, size in _SINTS if signed else _UINTS:
        if -(1 << (8 * size - 1)) <= value if signed else value < 1 << (8 * size):
            out.append(code)
            out += value.to_bytes(size, "big", signed=signed)
            return
    raise OverflowError("Integer value out of range")


def unpackb(data: bytes) -> Any:
    try:
        value, end = _unpack(data, 0)
    except IndexError:
        raise ValueError("truncated msgpack data") from None
    if end != len(data):
        raise ValueError("extra data after the object")
    return value


def _unpack(data: bytes, pos: int) -> tuple[Any, int]:
    """The object at ``pos`` in ``data`` and the position after it."""
    code = data[pos]
    pos += 1
    if code < 0x80:
        return code, pos
    if code >= 0xE0:
        return code - 0x100, pos
    if code < 0x90:
        return _map(data, pos, code & 0x0F)
    if code < 0xA0:
        return _array(data, pos, code & 0x0F)
    if code < 0xC0:
        return _str(data, pos, code & 0x1F)
    if code in _CONSTANTS:
        return _CONSTANTS[code], pos
    if code in _SIZED:
        read, width = _SIZED[code]
        return read(data, pos + width, int.from_bytes(_take(data, pos, width), "big"))
    if code in _INTS:
        width, signed = _INTS[code]
        return int.from_bytes(_take(data, pos, width), "big", signed=signed), pos + width
    if code == 0xCA:
        return _FLOAT.unpack(_take(data, pos, 4))[0], pos + 4
    if code == 0xCB:
        return _DOUBLE.unpack(_take(data, pos, 8))[0], pos + 8
    raise ValueError(f"msgpack type 0x{code:02x} is not one the protocol uses")


def _take(data: bytes, pos: int, size: int) -> bytes:
    if pos + size > len(data):
        raise IndexError("truncated")
    return data[pos : pos + size]


def _str(data: bytes, pos: int, size: int) -> tuple[str, int]:
    return _take(data, pos, size).decode(), pos + size


def _bin(data: bytes, pos: int, size: int) -> tuple[bytes, int]:
    return _take(data, pos, size), pos + size


def _array(data: bytes, pos: int, size: int) -> tuple[list[Any], int]:
    items = []
    for _ in range(size):
        item, pos = _unpack(data, pos)
        items.append(item)
    return items, pos


def _map(data: bytes, pos: int, size: int) -> tuple[dict[Any, Any], int]:
    found: dict[Any, Any] = {}
    for _ in range(size):
        key, pos = _unpack(data, pos)
        if type(key) not in (str, bytes):  # strict_map_key
            raise ValueError(f"{type(key).__name__} is not allowed for map key")
        found[key], pos = _unpack(data, pos)
    return found, pos


_CONSTANTS = {0xC0: None, 0xC2: False, 0xC3: True}
#: A str, bin, array or map whose size follows its code: how to read it, the size's bytes.
_SIZED: dict[int, tuple[Callable[[bytes, int, int], tuple[Any, int]], int]] = {
    **{0xD9: (_str, 1), 0xDA: (_str, 2), 0xDB: (_str, 4)},
    **{0xC4: (_bin, 1), 0xC5: (_bin, 2), 0xC6: (_bin, 4)},
    **{0xDC: (_array, 2), 0xDD: (_array, 4), 0xDE: (_map, 2), 0xDF: (_map, 4)},
}
#: An int's code: (bytes, signed).
_INTS = {code: (size, False) for code, size in _UINTS} | {
    code: (size, True) for code, size in _SINTS
}
