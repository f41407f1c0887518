"""The lean session's msgpack (protocol/lean_msgpack.py) packs the bytes msgpack packs and
unpacks the values msgpack unpacks, with the options the protocol uses, and refuses what msgpack
refuses."""

from __future__ import annotations

import enum
import math
import random

import msgpack
import pytest

from stigmer_kernel.protocol import lean_msgpack


def _packb(obj: object) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)  # type: ignore[no-any-return]


def _unpackb(data: bytes) -> object:
    return msgpack.unpackb(data, raw=False, strict_map_key=True)


_EDGES = [0, 1, 31, 32, 127, 128, 255, 256, 65535, 65536, 2**32 - 1, 2**32, 2**64 - 1]
INTS = sorted({n for e in _EDGES for n in (e, -e, e - 1, -e - 1)} | {-(2**63)})
INTS = [n for n in INTS if -(2**63) <= n < 2**64]
SIZES = [0, 1, 15, 16, 31, 32, 255, 256, 65535, 65536]


class _Mode(str, enum.Enum):
    LOCAL = "local"


def _value(rng: random.Random, depth: int = 0) -> object:
    kind = rng.randrange(10 if depth < 3 else 7)
    if kind == 0:
        return rng.choice([None, True, False])
    if kind == 1:
        return rng.choice(INTS)
    if kind == 2:
        return rng.choice([0.0, -0.0, 1.5, 1e300, -2.5e-300, math.inf, rng.random()])
    if kind == 3:
        return "".join(rng.choice("aé€\U0001f600\n\0") for _ in range(rng.choice(SIZES[:7])))
    if kind == 4:
        return rng.randbytes(rng.choice(SIZES[:8]))
    if kind in (5, 6):
        return rng.choice(["", "x" * rng.choice(SIZES), "execute_request", "stream"])
    if kind == 7:
        return [_value(rng, depth + 1) for _ in range(rng.choice([0, 1, 3, 15, 16, 17]))]
    if kind == 8:
        return tuple(_value(rng, depth + 1) for _ in range(rng.randrange(4)))
    keys = [
        rng.choice(["a", "kernel", "é", str(i)]) + str(i) for i in range(rng.choice([0, 2, 16, 17]))
    ]
    return {k: _value(rng, depth + 1) for k in keys}


@pytest.mark.parametrize("seed", range(200))
def test_random_values_pack_and_unpack_as_msgpacks(seed: int) -> None:
    value = _value(random.Random(seed))
    packed = _packb(value)
    assert lean_msgpack.packb(value) == packed
    assert lean_msgpack.unpackb(packed) == _unpackb(packed)


@pytest.mark.parametrize("value", INTS)
def test_every_int_form(value: int) -> None:
    assert lean_msgpack.packb(value) == _packb(value)
    assert lean_msgpack.unpackb(_packb(value)) == value


@pytest.mark.parametrize("size", [*SIZES, 2**20])
def test_every_str_bin_array_and_map_size(size: int) -> None:
    for value in ("s" * size, b"b" * size, [None] * size, {str(i): i for i in range(size)}):
        if isinstance(value, dict) and size > 65536:
            continue
        assert lean_msgpack.packb(value) == _packb(value)
        assert lean_msgpack.unpackb(_packb(value)) == value


def test_what_else_msgpack_packs_alike() -> None:
    for value in (bytearray(b"ab"), memoryview(b"cd"), _Mode.LOCAL, {"m": _Mode.LOCAL}, True):
        assert lean_msgpack.packb(value) == _packb(value)
    nan = lean_msgpack.unpackb(lean_msgpack.packb(math.nan))
    assert isinstance(nan, float) and math.isnan(nan)
    single = b"\xca" + bytes.fromhex("3fc00000")  # a float32, which msgpack unpacks too
    assert lean_msgpack.unpackb(single) == _unpackb(single) == 1.5


@pytest.mark.parametrize("value", [object(), {1, 2}, 2**64, -(2**63) - 1, "\udc80"])
def test_what_msgpack_cannot_pack_is_refused(value: object) -> None:
    with pytest.raises(Exception) as theirs:
        _packb(value)
    with pytest.raises(type(theirs.value)):
        lean_msgpack.packb(value)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x81",  # a map with its entry missing
        b"\xda\x00",  # a str16 cut in its size
        b"\xa3ab",  # a str cut short
        b"\xc4\x05abc",  # a bin cut short
        b"\xcd\x01",  # a uint16 cut short
        b"\xc0\xc0",  # extra data
        b"\xc1",  # never used
        b"\x81\x01\x02",  # an int key (strict_map_key)
        b"\x81\xc0\x02",  # a nil key
        b"\xa2\xff\xfe",  # not UTF-8
        b"\xd4\x01\x00",  # an extension type
        b"\xd6\xff\x00\x00\x00\x00",  # msgpack's Timestamp
    ],
)
def test_what_the_protocol_never_sends_is_refused(data: bytes) -> None:
    with pytest.raises(ValueError):
        lean_msgpack.unpackb(data)
