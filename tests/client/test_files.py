"""The file API through the Python client against a real server and local kernels: each
operation, paths in the kernel's world, answers while a command runs, trees, failed writes."""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from stigmer_kernel import AsyncClient, Client
from stigmer_kernel.errors import (
    ChecksumMismatch,
    DirectoryNotEmpty,
    FileError,
    FileExists,
    FileNotFound,
    IsADirectory,
    NotADirectory,
)
from stigmer_kernel.protocol import MsgType
from tests.conftest import Server, make_server, short_tempdir


@pytest.fixture(scope="module")
def srv() -> Iterator[Server]:
    server = make_server(STIGMER_HEARTBEAT_INTERVAL="0.3").start()
    yield server
    server.stop()
    shutil.rmtree(server.runtime_dir, ignore_errors=True)


@pytest.fixture
def c(srv: Server) -> Iterator[Client]:
    client = Client(srv.config, autostart=False)
    yield client
    client.close()


@pytest.fixture
def where() -> str:
    return os.path.realpath(short_tempdir("stg-files-"))


def test_each_operation(c: Client, where: str) -> None:
    c.execute(f"cd {where}", kernel="f1")
    assert c.write_file("f1", "a.txt", "hello\n") == f"{where}/a.txt"  # the kernel's cwd
    assert c.read_file("f1", "a.txt") == b"hello\n"
    info = c.stat("f1", "a.txt")
    assert (info.name, info.type, info.size, info.path) == ("a.txt", "file", 6, f"{where}/a.txt")
    assert c.make_dir("f1", "d/e", parents=True) == f"{where}/d/e"
    c.write_file("f1", "d/run.sh", b"#!/bin/sh\necho ran\n", permissions=0o755)
    assert os.stat(f"{where}/d/run.sh").st_mode & 0o777 == 0o755
    assert c.execute("./d/run.sh", kernel="f1").stdout == "ran\n"
    names = [(e.name, e.type) for e in c.list_dir("f1")]
    assert names == [("a.txt", "file"), ("d", "dir")]
    assert c.sha256("f1", "a.txt") == hashlib.sha256(b"hello\n").hexdigest()
    with pytest.raises(DirectoryNotEmpty):
        c.remove("f1", "d")
    c.remove("f1", "d", recursive=True)
    c.remove("f1", "a.txt")
    assert os.listdir(where) == []


def test_errors_name_what_went_wrong(c: Client, where: str) -> None:
    c.execute(f"cd {where} && mkdir sub && echo x > file", kernel="f2")
    for call, error in [
        (lambda: c.read_file("f2", "missing"), FileNotFound),
        (lambda: c.read_file("f2", "sub"), IsADirectory),
        (lambda: c.list_dir("f2", "file"), NotADirectory),
        (lambda: c.write_file("f2", "sub", b"x"), IsADirectory),
        (lambda: c.write_file("f2", "nodir/f", b"x"), FileNotFound),
        (lambda: c.make_dir("f2", "sub"), FileExists),
    ]:
        with pytest.raises(error) as caught:
            call()
        assert where in str(caught.value)
    assert sorted(os.listdir(where)) == ["file", "sub"]
    assert Path(where, "file").read_text() == "x\n"


def test_relative_paths_follow_a_cd(c: Client, where: str) -> None:
    os.makedirs(f"{where}/one")
    os.makedirs(f"{where}/two")
    c.execute(f"cd {where}/one", kernel="f3")
    c.write_file("f3", "here", b"1")
    c.execute("cd ../two", kernel="f3")
    c.write_file("f3", "here", b"2")
    assert Path(where, "one", "here").read_bytes() == b"1"
    assert Path(where, "two", "here").read_bytes() == b"2"
    assert c.stat("f3", ".").path == f"{where}/two/."


async def test_answered_while_a_command_runs(srv: Server, where: str) -> None:
    async with AsyncClient(srv.config, autostart=False) as ac:
        await ac.execute(f"cd {where}", kernel="f4")
        running = asyncio.create_task(ac.execute("echo started; sleep 30", kernel="f4"))
        while (await ac.kernel_info("f4"))["state"] != "busy":
            await asyncio.sleep(0.02)
        await ac.write_file("f4", "during", b"while it ran")
        assert await ac.read_file("f4", "during") == b"while it ran"
        assert [e.name for e in await ac.list_dir("f4")] == ["during"]
        assert not running.done()
        await ac.interrupt("f4")
        assert (await running).status == "interrupted"


def test_a_failed_write_leaves_the_old_file(c: Client, where: str) -> None:
    target = Path(where, "keep.txt")
    target.write_bytes(b"old contents")

    async def bad_checksum(ac: AsyncClient) -> None:
        def file(**fields: object) -> dict[str, object]:
            return {"op": fields.pop("op"), **fields}

        opened = await ac._agent_request(
            MsgType.FILE_REQUEST, "f5", file(op="write_open", path=str(target))
        )
        token = opened["token"]
        await ac._agent_request(
            MsgType.FILE_REQUEST, "f5", file(op="write_chunk", token=token, data=b"new")
        )
        with pytest.raises(ChecksumMismatch, match="the old file is untouched"):
            await ac._agent_request(
                MsgType.FILE_REQUEST, "f5", file(op="write_close", token=token, sha256="0" * 64)
            )

    c._call(bad_checksum(c._async))
    assert target.read_bytes() == b"old contents"
    assert os.listdir(where) == ["keep.txt"]  # no temporary file left behind
    with pytest.raises(FileError, match="no upload with token"):
        c._call(
            c._async._agent_request(
                MsgType.FILE_REQUEST, "f5", {"op": "write_chunk", "token": "0" * 32, "data": b""}
            )
        )


def test_a_tree_round_trip(c: Client, where: str) -> None:
    src = Path(where, "src")
    (src / "a" / "b").mkdir(parents=True)
    (src / "empty").mkdir()
    (src / "top.txt").write_bytes(b"top")
    (src / "a" / "b" / "deep.bin").write_bytes(os.urandom(3 * 1024 * 1024 + 7))
    (src / "a" / "tool").write_bytes(b"#!/bin/sh\n")
    (src / "a" / "tool").chmod(0o750)
    (src / "a" / "to-top").symlink_to("../top.txt")  # copied as the file it points to
    (src / "dirlink").symlink_to("a")  # skipped
    c.execute(f"mkdir {where}/remote", kernel="f6")
    seen: list[tuple[int, int]] = []
    up = c.upload("f6", str(src), f"{where}/remote", progress=lambda d, t: seen.append((d, t)))
    assert (up.files, up.directories, up.skipped) == (4, 4, [str(src / "dirlink")])
    assert seen[-1] == (up.bytes, up.bytes) and up.bytes == 3 * 1024 * 1024 + 7 + 3 + 10 + 3
    copied = Path(where, "remote", "src")  # into the existing directory, under its own name
    assert (copied / "a" / "b" / "deep.bin").read_bytes() == (
        src / "a" / "b" / "deep.bin"
    ).read_bytes()
    assert (copied / "a" / "tool").stat().st_mode & 0o777 == 0o750
    assert (copied / "a" / "to-top").read_bytes() == b"top" and (copied / "empty").is_dir()
    back = Path(where, "back")
    down = c.download("f6", f"{where}/remote/src", str(back))  # back does not exist: it is it
    assert (down.files, down.directories) == (4, 4)
    for name in ("top.txt", "a/b/deep.bin", "a/tool", "a/to-top"):
        assert (back / name).read_bytes() == (copied / name).read_bytes(), name
    assert (back / "a" / "tool").stat().st_mode & 0o777 == 0o750
    c.download("f6", f"{where}/remote/src/top.txt", str(back))  # a file into a directory
    c.upload("f6", str(src / "top.txt"), f"{where}/remote/renamed.txt")  # a file to a new name
    assert Path(where, "remote", "renamed.txt").read_bytes() == b"top"
    with pytest.raises(NotADirectory):
        c.upload("f6", str(src), f"{where}/remote/renamed.txt")
    with pytest.raises(FileNotFoundError):  # a local error is the OSError it is
        c.upload("f6", f"{where}/no-such", f"{where}/remote/")
