"""Files in a kernel's world: :class:`FileMethods`, the file requests of :class:`AsyncClient`.

Each method sends ``file_request`` operations (docs/protocol.md, "File operations") that the
kernel's agent answers at once, even while a command runs; the kernel is created if needed, as
by ``execute`` (``mode=``, and this process's directory as a new kernel's cwd). Paths are the
kernel's: relative ones start from its shell's current directory, in a sandbox they are the
container's, and permissions are those of the kernel's user.

Transfers (_transfer.py) move ``CHUNK`` bytes per request with up to ``WINDOW`` requests in
flight (a transfer runs near the link's speed and holds at most ``WINDOW * CHUNK`` bytes), verify
the sha256 of every file end to end, and write atomically on both sides: an upload goes to a
temporary file beside its target, renamed onto it once the checksum matched; a download the
same way locally. Local files are read and written on the default executor.
"""

from __future__ import annotations

import asyncio
import os
import stat
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, BinaryIO

from ..errors import FileError, FileNotFound, NotADirectory
from ..protocol import ErrorName, MsgType
from ._errors import raise_for
from ._transfer import (
    Moving,
    Progress,
    Transfer,
    download_file,
    each,
    fetch,
    join,
    local_tree,
    send,
    upload_file,
)

if TYPE_CHECKING:
    from ._remote import RemoteServer
    from ._transport import Transport


@dataclass(frozen=True)
class FileInfo:
    """A file in a kernel's world, as ``stat`` or ``list_dir`` saw it."""

    name: str
    type: str  # "file", "dir", "symlink" or "other"
    size: int
    mode: int  # permission bits, e.g. 0o644
    mtime: float
    path: str | None = None  # absolute, in the kernel's world (stat only)
    target: str | None = None  # what a symlink points to (list_dir only)

    @property
    def is_dir(self) -> bool:
        return self.type == "dir"

    @property
    def is_file(self) -> bool:
        return self.type == "file"

    @classmethod
    def of(cls, fields: dict[str, Any]) -> FileInfo:
        return cls(
            name=str(fields.get("name", "")),
            type=str(fields.get("type", "other")),
            size=int(fields.get("size") or 0),
            mode=int(fields.get("mode") or 0),
            mtime=float(fields.get("mtime") or 0.0),
            path=fields.get("path"),
            target=fields.get("target"),
        )


class FileMethods:
    """The file methods of :class:`AsyncClient` (mixed into it)."""

    if TYPE_CHECKING:
        remote: RemoteServer | None
        _transport: Transport

        async def _agent_request(
            self,
            msg_type: MsgType,
            kernel: str,
            content: dict[str, Any],
            *,
            mode: str | None = None,
            timeout: float | None = 60.0,
        ) -> dict[str, Any]: ...

    # -- requests -------------------------------------------------------------------------------
    async def _file(
        self, kernel: str, op: str, mode: str | None, timeout: float | None = 60.0, **fields: Any
    ) -> dict[str, Any]:
        """One operation on ``kernel``, creating it if needed (with our directory as its cwd)."""
        content = {"op": op, **fields}
        cwd = None if self.remote else _cwd()  # ours means nothing on another host
        if cwd is not None:
            content["cwd"] = cwd
        return await self._agent_request(
            MsgType.FILE_REQUEST, kernel, content, mode=mode, timeout=timeout
        )

    async def _chunk(
        self, kernel: str, op: str, mode: str | None, timeout: float | None = 60.0, **fields: Any
    ) -> dict[str, Any]:
        """One more operation of a transfer its first one began: only what the agent needs."""
        content = {"op": op, "kernel": kernel, **fields}
        if mode is not None:
            content["mode"] = mode
        reply, _ = await self._transport.request(MsgType.FILE_REQUEST, content, timeout=timeout)
        raise_for(reply.content)
        return reply.content

    def _ops(self, kernel: str, mode: str | None) -> _KernelOps:
        return _KernelOps(self, kernel, mode)

    # -- single operations ----------------------------------------------------------------------
    async def stat(self, kernel: str, path: str, *, mode: str | None = None) -> FileInfo:
        """``path`` (symlinks followed) in ``kernel``'s world; ``FileNotFound`` if none."""
        return FileInfo.of(await self._file(kernel, "stat", mode, path=path))

    async def list_dir(
        self, kernel: str, path: str = ".", *, mode: str | None = None
    ) -> list[FileInfo]:
        """The entries of directory ``path``, sorted by name (symlinks as they are)."""
        reply = await self._file(kernel, "list", mode, path=path)
        entries = list(reply["entries"])
        while reply.get("more") and entries:
            reply = await self._chunk(
                kernel, "list", mode, path=reply["path"], after=entries[-1]["name"]
            )
            entries += reply["entries"]
        return [FileInfo.of(entry) for entry in entries]

    async def make_dir(
        self,
        kernel: str,
        path: str,
        parents: bool = False,
        *,
        permissions: int | None = None,
        mode: str | None = None,
    ) -> str:
        """Make directory ``path`` (with ``parents``: and the missing ones above, and no error
        if it exists, as ``mkdir -p``). Returns its absolute path."""
        fields: dict[str, Any] = {"path": path, "parents": parents}
        if permissions is not None:
            fields["permissions"] = permissions
        return str((await self._file(kernel, "mkdir", mode, **fields))["path"])

    async def remove(
        self, kernel: str, path: str, recursive: bool = False, *, mode: str | None = None
    ) -> None:
        """Remove a file, a symlink, an empty directory, or with ``recursive`` a whole tree
        (which stops at the first error: what was removed stays removed)."""
        await self._file(kernel, "remove", mode, timeout=None, path=path, recursive=recursive)

    async def sha256(self, kernel: str, path: str, *, mode: str | None = None) -> str:
        """The sha256 (hex) of file ``path``, computed by the kernel's agent."""
        return str((await self._file(kernel, "sha256", mode, timeout=None, path=path))["sha256"])

    async def read_file(self, kernel: str, path: str, *, mode: str | None = None) -> bytes:
        """The whole of file ``path`` (verified with its sha256)."""
        parts: list[bytes] = []

        async def keep(data: bytes) -> None:
            parts.append(data)

        await fetch(self._ops(kernel, mode), path, keep, Moving(0, None))
        return b"".join(parts)

    async def write_file(
        self,
        kernel: str,
        path: str,
        data: bytes | str,
        *,
        permissions: int | None = None,
        mode: str | None = None,
    ) -> str:
        """Replace file ``path`` with ``data`` (str: UTF-8) atomically: readers see the old
        file or the new one, never a part; on any error the old file is untouched.
        ``permissions`` (e.g. ``0o755``): default, an existing file's own, else ``0o666``
        minus the kernel's umask. ``mode`` is the kernel's execution mode, as for
        ``execute``. Returns the absolute path written."""
        blob = data.encode() if isinstance(data, str) else bytes(data)
        view = memoryview(blob)
        offset = 0

        async def read(size: int) -> bytes:
            nonlocal offset
            chunk = bytes(view[offset : offset + size])
            offset += len(chunk)
            return chunk

        moving = Moving(len(blob), None)
        return await send(self._ops(kernel, mode), path, read, permissions, moving)

    # -- transfers ------------------------------------------------------------------------------
    async def upload(
        self,
        kernel: str,
        local_path: str | os.PathLike[str],
        remote_path: str,
        *,
        mode: str | None = None,
        progress: Progress | None = None,
    ) -> Transfer:
        """Copy a local file or directory tree into ``kernel``'s world, as ``docker cp``
        does: a file to ``remote_path`` (into it if it is a directory or ends with ``/``); a
        directory to ``remote_path`` if that does not exist, else into it as its own name
        (its contents only if ``local_path`` ends with ``/.``). Files keep their permission
        bits; symlinks are copied as the files they point to; symlinks to directories and
        special files are skipped (``Transfer.skipped``). Each file is written atomically
        and verified with sha256. Local errors raise ``OSError``."""
        local = os.fspath(local_path)
        top = os.stat(local)
        dest = await self._stat_or_none(kernel, remote_path, mode)
        if not stat.S_ISDIR(top.st_mode):
            if not stat.S_ISREG(top.st_mode):
                raise FileError(f"{local} is not a regular file", ErrorName.FILE_ERROR)
            target = dest.path if dest is not None and dest.path else remote_path
            if (dest is not None and dest.is_dir) or remote_path.endswith("/"):
                target = join(target, os.path.basename(local))
            moving = Moving(top.st_size, progress)
            await upload_file(self._ops(kernel, mode), local, target, moving)
            moving.result.files += 1
            return moving.done()
        if dest is None:
            root = remote_path
        elif dest.is_dir:
            name = os.path.basename(os.path.normpath(local))
            root = str(dest.path) if local.endswith("/.") else join(str(dest.path), name)
        else:
            raise NotADirectory(
                f"cannot copy directory {local} onto {dest.path}: not a directory",
                ErrorName.NOT_A_DIRECTORY,
            )
        plan, skipped, total = local_tree(local)
        moving = Moving(total, progress)
        moving.result.skipped = skipped
        root = await self.make_dir(kernel, root, parents=dest is not None, mode=mode)
        for relative in plan.dirs:
            await self._chunk(kernel, "mkdir", mode, path=join(root, relative), parents=True)
        moving.result.directories = 1 + len(plan.dirs)
        jobs = [(os.path.join(local, relative), join(root, relative)) for relative in plan.files]

        async def one(job: tuple[str, str]) -> None:
            await upload_file(self._ops(kernel, mode), job[0], job[1], moving)

        await each(jobs, one)
        moving.result.files = len(jobs)
        return moving.done()

    async def download(
        self,
        kernel: str,
        remote_path: str,
        local_path: str | os.PathLike[str],
        *,
        mode: str | None = None,
        progress: Progress | None = None,
    ) -> Transfer:
        """Copy a file or directory tree from ``kernel``'s world here, with the rules of
        :meth:`upload` the other way round. Each local file is written to a temporary file
        and renamed onto its name once its sha256 matched the kernel's."""
        local = os.fspath(local_path)
        info = await self.stat(kernel, remote_path, mode=mode)
        source = str(info.path or remote_path)
        here = os.path.isdir(local)
        if info.is_file:
            target = local
            if here or local.endswith("/"):
                target = os.path.join(local, os.path.basename(source))
            moving = Moving(info.size, progress)
            await download_file(self._ops(kernel, mode), source, target, info.mode, moving)
            moving.result.files = 1
            return moving.done()
        if not info.is_dir:
            raise FileError(
                f"cannot copy {source}: not a regular file or directory", ErrorName.FILE_ERROR
            )
        if not here and os.path.lexists(local):
            raise NotADirectory(
                f"cannot copy directory {source} onto {local}: not a directory",
                ErrorName.NOT_A_DIRECTORY,
            )
        root = local
        if here and not remote_path.endswith("/."):
            root = os.path.join(local, os.path.basename(source.rstrip("/")) or "root")
        dirs, files, skipped = await self._remote_tree(kernel, mode, source)
        moving = Moving(sum(size for _, size, _ in files), progress)
        moving.result.skipped = skipped
        for relative in ["", *dirs]:
            os.makedirs(os.path.join(root, relative), exist_ok=True)
        moving.result.directories = 1 + len(dirs)

        async def one(job: tuple[str, int, int]) -> None:
            relative, _, bits = job
            remote, here = join(source, relative), os.path.join(root, relative)
            await download_file(self._ops(kernel, mode), remote, here, bits, moving)

        await each(files, one)
        moving.result.files = len(files)
        return moving.done()

    async def upload_stream(
        self,
        kernel: str,
        stream: BinaryIO,
        remote_path: str,
        *,
        permissions: int | None = None,
        mode: str | None = None,
        progress: Progress | None = None,
    ) -> Transfer:
        """Write what ``stream`` holds until its end (a pipe too) to file ``remote_path``,
        atomically, in chunks (bounded memory)."""
        loop = asyncio.get_running_loop()

        async def read(size: int) -> bytes:
            return await loop.run_in_executor(None, stream.read, size)

        moving = Moving(0, progress)
        await send(self._ops(kernel, mode), remote_path, read, permissions, moving)
        moving.result.files = 1
        return moving.done()

    async def download_stream(
        self,
        kernel: str,
        remote_path: str,
        stream: BinaryIO,
        *,
        mode: str | None = None,
        progress: Progress | None = None,
    ) -> Transfer:
        """Write file ``remote_path`` to ``stream`` as it arrives (verified at the end: a
        ``ChecksumMismatch`` then means what was written is not the file)."""
        loop = asyncio.get_running_loop()

        async def write(data: bytes) -> None:
            await loop.run_in_executor(None, stream.write, data)

        moving = Moving(0, progress)
        await fetch(self._ops(kernel, mode), remote_path, write, moving)
        await loop.run_in_executor(None, stream.flush)
        moving.result.files = 1
        return moving.done()

    # -- the machinery --------------------------------------------------------------------------
    async def _stat_or_none(self, kernel: str, path: str, mode: str | None) -> FileInfo | None:
        try:
            return await self.stat(kernel, path, mode=mode)
        except FileNotFound:
            return None

    async def _remote_tree(
        self, kernel: str, mode: str | None, root: str
    ) -> tuple[list[str], list[tuple[str, int, int]], list[str]]:
        """A remote tree: its directories and files (relative path, size, mode), in walk
        order, and what it leaves out."""
        dirs: list[str] = []
        files: list[tuple[str, int, int]] = []
        skipped: list[str] = []
        pending = [""]
        while pending:
            relative = pending.pop()
            for entry in await self.list_dir(kernel, join(root, relative), mode=mode):
                inner = join(relative, entry.name) if relative else entry.name
                kind = entry
                if entry.type == "symlink":  # copied as what it points to, if a file
                    try:
                        kind = await self.stat(kernel, join(root, inner), mode=mode)
                    except FileError:
                        kind = entry
                    if kind.is_dir:
                        skipped.append(join(root, inner))
                        continue
                if kind.is_dir:
                    dirs.append(inner)
                    pending.append(inner)
                elif kind.is_file:
                    files.append((inner, kind.size, kind.mode))
                else:
                    skipped.append(join(root, inner))
        return dirs, files, skipped


class _KernelOps:
    """The requests of one transfer (:class:`~._transfer.Ops`) on one kernel."""

    def __init__(self, client: FileMethods, kernel: str, mode: str | None) -> None:
        self.client, self.kernel, self.mode = client, kernel, mode

    async def first(self, op: str, timeout: float | None = 60.0, **fields: Any) -> dict[str, Any]:
        return await self.client._file(self.kernel, op, self.mode, timeout, **fields)

    async def more(self, op: str, timeout: float | None = 60.0, **fields: Any) -> dict[str, Any]:
        return await self.client._chunk(self.kernel, op, self.mode, timeout, **fields)


def _cwd() -> str | None:
    try:
        return os.getcwd()
    except FileNotFoundError:
        return None


__all__ = ["FileInfo", "FileMethods", "Progress", "Transfer"]
