"""server.json is read without the json module (runtime._json_loads, on json's C scanner): it
must read every document as json.loads does, and refuse (ValueError) what json.loads refuses."""

from __future__ import annotations

import json
import math

import pytest

from stigmer_kernel.runtime import RuntimeDir, _json_loads

DOCUMENTS = [
    '{"pid": 12, "client_endpoint": "ipc:///tmp/x/clients.sock", "started": 1.5e9}',
    json.dumps({"a": [1, 2.5, None, True, False, "é\u2028\\"], "b": {"c": {}}}, indent=2),
    '  \n\t{"x": 1}\r\n ',
    '{"big": 123456789012345678901234567890, "neg": -0.0, "exp": 1E-3}',
    '{"esc": "\\u00e9\\ud83d\\ude00\\n\\"", "k": "\\/"}',
    '{"dup": 1, "dup": 2}',
    "[1, 2]",
    '"text"',
    "3",
    "null",
]
REFUSED = [
    "",
    "   ",
    '{"a": 1} {"b": 2}',
    '{"a": 1}x',
    "{'a': 1}",
    '{"a": 1,}',
    '{"a": tru}',
    '\ufeff{"a": 1}',
    '{"a": "tab\there"}',  # a raw control character: strict, as json.loads is
    "[1, 2",
    "01",
]


@pytest.mark.parametrize("text", DOCUMENTS)
def test_a_document_reads_as_json_loads_reads_it(text: str) -> None:
    assert _json_loads(text) == json.loads(text)


def test_nan_and_infinity_read_as_json_loads_reads_them() -> None:
    got = _json_loads('{"n": NaN, "i": Infinity, "m": -Infinity}')
    assert math.isnan(got["n"]) and got["i"] == math.inf and got["m"] == -math.inf


@pytest.mark.parametrize("text", REFUSED)
def test_what_json_loads_refuses_is_refused(text: str) -> None:
    with pytest.raises(ValueError):
        json.loads(text)
    with pytest.raises(ValueError):
        _json_loads(text)


def test_read_info_reads_what_write_info_wrote(tmp_path: object) -> None:
    runtime = RuntimeDir(str(tmp_path))
    info = {"pid": 7, "client_endpoint": "ipc:///x", "started": 1.25, "version": "1"}
    runtime.write_info(info)
    assert runtime.read_info() == info
    runtime.info_path.write_text("[1]")
    assert runtime.read_info() is None  # not a map
    runtime.info_path.write_text('{"pid": 1')
    assert runtime.read_info() is None  # cut short
