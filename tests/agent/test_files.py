"""The agent's file operations in-process (agent/files.py, agent/uploads.py): what a request
gets back and what it leaves on disk, with a fake clock for the abandoned uploads."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import pytest

from stigmer_kernel.agent.files import MAX_CHUNK, Files
from stigmer_kernel.agent.uploads import UPLOAD_IDLE


class Agent:
    """A Files with its replies kept, a working directory and a clock the test moves."""

    def __init__(self, cwd: Path) -> None:
        self.now = 0.0
        self.replies: list[dict[str, Any]] = []
        self.files = Files(
            lambda reply, parent: self.replies.append(reply),
            cwd=lambda: str(cwd),
            clock=lambda: self.now,
        )

    def __call__(self, op: str, **fields: Any) -> dict[str, Any]:
        """One request, its jobs run to the end; the reply."""
        before = len(self.replies)
        self.files.handle({"op": op, **fields}, None)
        while self.files.busy:
            self.files.tick()
        assert len(self.replies) == before + 1
        return self.replies[-1]


@pytest.fixture
def agent(tmp_path: Path) -> Agent:
    return Agent(tmp_path)


def _error(reply: dict[str, Any]) -> tuple[str, str]:
    assert reply["status"] == "error", reply
    return reply["ename"], reply["evalue"]


def test_write_in_chunks_then_read_and_list(agent: Agent, tmp_path: Path) -> None:
    opened = agent("write_open", path="sub.txt", permissions=0o640)
    assert opened["path"] == str(tmp_path / "sub.txt") and opened["chunk"] == MAX_CHUNK
    data = os.urandom(MAX_CHUNK + 10)
    for offset in (0, MAX_CHUNK):
        chunk = data[offset : offset + MAX_CHUNK]
        agent("write_chunk", token=opened["token"], offset=offset, data=chunk)
    assert not (tmp_path / "sub.txt").exists()  # nothing at the target until the close
    closed = agent("write_close", token=opened["token"], sha256=hashlib.sha256(data).hexdigest())
    assert closed["committed"] and closed["size"] == len(data)
    assert (tmp_path / "sub.txt").read_bytes() == data
    assert (tmp_path / "sub.txt").stat().st_mode & 0o777 == 0o640
    first = agent("read", path="sub.txt")
    assert first["data"] == data[:MAX_CHUNK] and not first["eof"] and first["size"] == len(data)
    last = agent("read", path="sub.txt", offset=MAX_CHUNK)
    assert last["data"] == data[MAX_CHUNK:] and last["eof"]
    assert agent("sha256", path="sub.txt")["sha256"] == hashlib.sha256(data).hexdigest()
    assert [e["name"] for e in agent("list")["entries"]] == ["sub.txt"]  # no temporary left
    info = agent("stat", path=str(tmp_path / "sub.txt"))
    assert (info["type"], info["size"], info["mode"]) == ("file", len(data), 0o640)


def test_a_small_file_comes_with_its_digest(agent: Agent, tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"abc")
    reply = agent("read", path="f")
    assert reply["eof"] and reply["sha256"] == hashlib.sha256(b"abc").hexdigest()


def test_chunks_out_of_order_are_hashed_from_the_file(agent: Agent, tmp_path: Path) -> None:
    token = agent("write_open", path="f")["token"]
    agent("write_chunk", token=token, offset=3, data=b"def")
    agent("write_chunk", token=token, offset=0, data=b"abc")
    closed = agent("write_close", token=token, sha256=hashlib.sha256(b"abcdef").hexdigest())
    assert closed["committed"] and (tmp_path / "f").read_bytes() == b"abcdef"


def test_a_bad_checksum_keeps_the_old_file(agent: Agent, tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"old")
    token = agent("write_open", path="f")["token"]
    agent("write_chunk", token=token, offset=0, data=b"new")
    ename, evalue = _error(agent("write_close", token=token, sha256="00" * 32))
    assert ename == "ChecksumMismatch" and "the old file is untouched" in evalue
    assert (tmp_path / "f").read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["f"]  # the temporary file is gone
    assert _error(agent("write_chunk", token=token, offset=3, data=b"x"))[0] == "FileError"


def test_an_abort_and_an_abandoned_upload_leave_nothing(agent: Agent, tmp_path: Path) -> None:
    token = agent("write_open", path="f")["token"]
    agent("write_chunk", token=token, data=b"part")
    assert agent("write_close", token=token, commit=False)["committed"] is False
    token = agent("write_open", path="g")["token"]
    agent("write_chunk", token=token, data=b"part")
    agent.now += UPLOAD_IDLE - 1
    agent.files.tick()
    assert len(os.listdir(tmp_path)) == 1  # still open: it was used a second ago
    agent.now += 2
    agent.files.tick()
    assert os.listdir(tmp_path) == []
    ename, evalue = _error(agent("write_chunk", token=token, data=b"more"))
    assert ename == "FileError" and "abandoned" in evalue


def test_bad_input_is_refused_and_changes_nothing(agent: Agent, tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "f").write_bytes(b"x")
    cases = [
        ({"op": "nope"}, "BadRequest"),
        ({"op": "read"}, "BadRequest"),
        ({"op": "read", "path": 3}, "BadRequest"),
        ({"op": "read", "path": "f", "length": MAX_CHUNK + 1}, "BadRequest"),
        ({"op": "read", "path": "f", "offset": True}, "BadRequest"),
        ({"op": "read", "path": "missing"}, "FileNotFound"),
        ({"op": "read", "path": "d"}, "IsADirectory"),
        ({"op": "read", "path": "f/x"}, "NotADirectory"),
        ({"op": "list", "path": "f"}, "NotADirectory"),
        ({"op": "write_open", "path": "d"}, "IsADirectory"),
        ({"op": "write_open", "path": "nodir/f"}, "FileNotFound"),
        ({"op": "write_open", "path": "f", "permissions": "644"}, "BadRequest"),
        ({"op": "write_chunk", "token": "feed", "data": b""}, "FileError"),
        ({"op": "mkdir", "path": "d"}, "FileExists"),
        ({"op": "mkdir", "path": "f", "parents": True}, "FileExists"),
        ({"op": "mkdir", "path": "a/b"}, "FileNotFound"),
        ({"op": "remove", "path": "missing"}, "FileNotFound"),
        ({"op": "remove", "path": "d", "recursive": "yes"}, "BadRequest"),
        ({"op": "sha256", "path": "d"}, "IsADirectory"),
    ]
    os.mkfifo(tmp_path / "fifo")
    cases.append(({"op": "read", "path": "fifo"}, "FileError"))  # refused, never waited on
    for content, ename in cases:
        fields = {k: v for k, v in content.items() if k != "op"}
        assert _error(agent(content["op"], **fields))[0] == ename, content
    (tmp_path / "d" / "inner").write_bytes(b"")
    ename, evalue = _error(agent("remove", path="d"))
    assert ename == "DirectoryNotEmpty" and "recursive" in evalue
    assert sorted(os.listdir(tmp_path)) == ["d", "f", "fifo"]
    assert (tmp_path / "f").read_bytes() == b"x"


def test_mkdir_remove_and_a_tree(agent: Agent, tmp_path: Path) -> None:
    assert agent("mkdir", path="a/b/c", parents=True)["path"] == str(tmp_path / "a/b/c")
    assert agent("mkdir", path="a/b/c", parents=True)["status"] == "ok"  # as mkdir -p
    for n in range(600):  # more than one slice of the removal job
        (tmp_path / "a" / "b" / f"f{n}").write_bytes(b"")
    (tmp_path / "a" / "link").symlink_to(tmp_path / "a" / "b")
    (tmp_path / "keep").mkdir()
    (tmp_path / "keep" / "x").write_bytes(b"")
    (tmp_path / "a" / "b" / "outside").symlink_to(tmp_path / "keep")
    entries = agent("list", path="a")["entries"]
    assert [(e["name"], e["type"]) for e in entries] == [("b", "dir"), ("link", "symlink")]
    assert entries[1]["target"] == str(tmp_path / "a" / "b")
    assert agent("remove", path="a", recursive=True)["status"] == "ok"
    assert os.listdir(tmp_path) == ["keep"] and os.listdir(tmp_path / "keep") == ["x"]


def test_list_pages(agent: Agent, tmp_path: Path) -> None:
    for name in "cab":
        (tmp_path / name).write_bytes(b"")
    page = agent("list", limit=2)
    assert [e["name"] for e in page["entries"]] == ["a", "b"] and page["more"]
    rest = agent("list", after="b", limit=2)
    assert [e["name"] for e in rest["entries"]] == ["c"] and not rest["more"]


def test_write_through_a_symlink_and_keep_permissions(agent: Agent, tmp_path: Path) -> None:
    (tmp_path / "real").write_bytes(b"old")
    (tmp_path / "real").chmod(0o751)
    (tmp_path / "link").symlink_to("real")
    token = agent("write_open", path="link")["token"]
    agent("write_chunk", token=token, data=b"new")
    agent("write_close", token=token, sha256=hashlib.sha256(b"new").hexdigest())
    assert (tmp_path / "link").is_symlink() and (tmp_path / "real").read_bytes() == b"new"
    assert (tmp_path / "real").stat().st_mode & 0o777 == 0o751


def test_close_removes_open_uploads(agent: Agent, tmp_path: Path) -> None:
    agent("write_open", path="f")
    agent.files.close()
    assert os.listdir(tmp_path) == []
