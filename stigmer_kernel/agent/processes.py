"""A kernel's background processes: started by the agent, kept until the kernel ends.

A background start (an ``execute_request`` with ``background: true``) is spawned by the agent
itself, in the context the session reported (its cwd and exported environment), as
``SHELL -c CODE`` in a session and process group of its own: the foreground command's timeout
and interrupts never reach it, and the agent, its parent, gets its exact exit status. Each
:class:`BackgroundProcess` keeps its stdout and stderr apart in a bounded :class:`Journal`
with absolute byte offsets (what falls out of the bound is counted), and its stdin is a pipe
written without blocking. :class:`ProcessTable` serves the ``process_request`` operations
(``list``, ``output``, ``stdin``, ``signal``, ``wait``); ``output`` and ``wait`` may be
long-polls, answered when the process writes or ends, when their wait is over, or when the
agent stops. The agent's loop drives it (its pipes are in the loop's poller); this module
sends nothing itself: answers go out through the ``answer`` callback it is given.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Mapping
from typing import Any

from ..protocol import ErrorName, Message
from .background import BackgroundProcess, Journal, ProcessError, how, parse_signal

__all__ = ["JOURNAL_BYTES", "ProcessError", "ProcessTable", "parse_signal"]

#: Default bytes kept per stream of one process (``process_journal_bytes``).
JOURNAL_BYTES = 4 * 1024 * 1024
#: Processes that may run at once in one kernel; exited ones kept (oldest forgotten first).
MAX_RUNNING = 64
MAX_EXITED = 32
#: Bytes of stdin buffered in the agent for one process; a write beyond is refused.
STDIN_BOUND = 1024 * 1024
#: Bytes of one stream an ``output`` answer carries at most (the default, and the cap).
OUTPUT_MAX = 1024 * 1024
OUTPUT_CAP = 4 * 1024 * 1024
#: Seconds a long-poll may wait at most; long-polls waiting at once in one agent.
WAIT_CAP = 300.0
MAX_WAITERS = 256
_READ = 65536
_STREAMS = ("stdout", "stderr")

Answer = Callable[[Message, dict[str, Any]], None]


class _Waiter:
    # A plain class, not a dataclass: an agent's start imports no dataclasses (inspect, ast).

    msg: Message
    proc: BackgroundProcess
    deadline: float
    seen: int  # the process's ``changed`` when it began to wait
    op: str  # "output" | "wait"
    params: dict[str, Any]

    def __init__(
        self,
        msg: Message,
        proc: BackgroundProcess,
        deadline: float,
        seen: int,
        op: str,
        params: dict[str, Any],
    ) -> None:
        self.msg = msg
        self.proc = proc
        self.deadline = deadline
        self.seen = seen
        self.op = op
        self.params = params


class ProcessTable:
    """The background processes of one agent, by id ("p1", "p2"...)."""

    def __init__(self, answer: Answer, journal_bytes: int = JOURNAL_BYTES) -> None:
        self.answer = answer
        self.journal_bytes = journal_bytes if journal_bytes > 0 else JOURNAL_BYTES
        self.procs: dict[str, BackgroundProcess] = {}
        self.waiters: list[_Waiter] = []
        self._next = 1
        self._by_fd: dict[int, BackgroundProcess] = {}

    # -- what the agent's loop needs ----------------------------------------------------------
    @property
    def running(self) -> int:
        return sum(1 for p in self.procs.values() if p.running)

    def pids(self) -> set[int]:
        """Pids of the running processes (the roots of trees no foreground stop touches)."""
        return {p.pid for p in self.procs.values() if p.running}

    def read_fds(self) -> list[int]:
        return list(self._by_fd)

    def write_fds(self) -> list[int]:
        return [p.stdin_fd for p in self.procs.values() if p.stdin_fd >= 0 and p.stdin_buffer]

    def owns(self, fd: int) -> bool:
        return fd in self._by_fd

    def next_deadline(self) -> float | None:
        if not self.waiters:
            return None
        return min(w.deadline for w in self.waiters)

    # -- start ------------------------------------------------------------------------------
    def start(
        self, code: str, *, shell: str, cwd: str, env: Mapping[str, str]
    ) -> BackgroundProcess:
        """Spawn ``shell -c code``; raises :class:`ProcessError` if it cannot run."""
        if self.running >= MAX_RUNNING:
            raise ProcessError(
                ErrorName.TOO_MANY_PROCESSES,
                f"this kernel runs {MAX_RUNNING} background processes already — end one "
                "(stigmer kill ID) first",
            )
        try:
            popen = subprocess.Popen(
                [shell, "-c", code],
                cwd=cwd,
                env=dict(env),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,  # its own session and group: foreground stops skip it
                close_fds=True,
                bufsize=0,
            )
        except OSError as exc:
            raise ProcessError(ErrorName.BAD_REQUEST, f"could not start it: {exc}") from None
        pid = f"p{self._next}"
        self._next += 1
        journals = {name: Journal(self.journal_bytes) for name in _STREAMS}
        proc = BackgroundProcess(pid, code, popen, time.time(), journals)
        for name, pipe in (("stdout", popen.stdout), ("stderr", popen.stderr)):
            assert pipe is not None
            fd = pipe.fileno()
            os.set_blocking(fd, False)
            proc.fds[fd] = name
            self._by_fd[fd] = proc
        assert popen.stdin is not None
        proc.stdin_fd = popen.stdin.fileno()
        os.set_blocking(proc.stdin_fd, False)
        with contextlib.suppress(OSError, AttributeError):
            proc.pidfd = os.pidfd_open(popen.pid)
            self._by_fd[proc.pidfd] = proc
        self.procs[pid] = proc
        self._forget_old()
        return proc

    def _forget_old(self) -> None:
        exited = [p for p in self.procs.values() if not p.running and not p.fds]
        for proc in exited[: max(0, len(exited) - MAX_EXITED)]:
            del self.procs[proc.id]

    # -- events -----------------------------------------------------------------------------
    def on_readable(self, fd: int) -> None:
        """Output on one of the pipes, or (the pidfd) an exit."""
        proc = self._by_fd.get(fd)
        if proc is None:
            return
        if fd == proc.pidfd:
            self.reap(proc)
            return
        if self._read(proc, fd):
            proc.changed += 1

    def _read(self, proc: BackgroundProcess, fd: int) -> bool:
        """One read of an output pipe into its journal; False if nothing was there."""
        try:
            data = os.read(fd, _READ)
        except BlockingIOError:
            return False
        except OSError:
            data = b""
        if data:
            proc.journals[proc.fds[fd]].append(data)
            return True
        proc.journals[proc.fds[fd]].eof = True
        self._close_fd(proc, fd)
        return True

    def on_writable(self, fd: int) -> None:
        for proc in self.procs.values():
            if proc.stdin_fd == fd:
                self._flush_stdin(proc)
                return

    def reap(self, proc: BackgroundProcess) -> None:
        """Collect its exit status if it has ended."""
        if proc.running and proc.popen.poll() is not None:
            for fd in list(proc.fds):  # what it wrote is in its pipes: read before it counts
                for _ in range(64):  # (bounded: what it left running may write on)
                    if fd not in proc.fds or not self._read(proc, fd):
                        break
            proc.changed += 1
            if proc.pidfd >= 0:
                self._by_fd.pop(proc.pidfd, None)
                with contextlib.suppress(OSError):
                    os.close(proc.pidfd)
                proc.pidfd = -1
            self._close_stdin(proc)

    def reap_pid(self, pid: int) -> bool:
        """An exited child of the agent: True if it was one of these (and is now reaped)."""
        for proc in self.procs.values():
            if proc.running and proc.pid == pid:
                self.reap(proc)
                return True
        return False

    def tick(self, now: float) -> None:
        """Answer the long-polls whose process moved or whose wait is over."""
        for proc in self.procs.values():
            if proc.running and proc.pidfd < 0:
                self.reap(proc)  # (no pidfd: polled)
        if not self.waiters:
            return
        keep: list[_Waiter] = []
        for waiter in self.waiters:
            if waiter.proc.changed != waiter.seen or now >= waiter.deadline:
                reply = self._answer_op(waiter.op, waiter.proc, waiter.params, final=True)
                if reply is not None:
                    self.answer(waiter.msg, reply)
                    continue
                waiter.seen = waiter.proc.changed
            keep.append(waiter)
        self.waiters = keep

    # -- requests ---------------------------------------------------------------------------
    def request(self, msg: Message, now: float) -> None:
        """One ``process_request``: answered now, or (a long-poll) later."""
        content = msg.content
        op = content.get("op")
        try:
            if op == "list":
                self.answer(msg, {"status": "ok", "processes": self.list()})
                return
            handler = _OPS.get(op if isinstance(op, str) else "")
            if handler is None:
                raise ProcessError(
                    ErrorName.BAD_REQUEST,
                    f"unknown process operation {op!r} (list, output, stdin, signal, wait)",
                )
            proc = self._find(content.get("id"))
            reply = handler(self, proc, content)
        except ProcessError as exc:
            self.answer(msg, {"status": "error", "ename": exc.ename, "evalue": exc.message})
            return
        if reply is not None:
            self.answer(msg, reply)
            return
        wait = _number(content, "wait" if op == "output" else "timeout", 0.0, 0.0, WAIT_CAP)
        if wait <= 0 or len(self.waiters) >= MAX_WAITERS:
            final = self._answer_op(str(op), proc, content, final=True)
            assert final is not None
            self.answer(msg, final)
            return
        self.waiters.append(_Waiter(msg, proc, now + wait, proc.changed, str(op), content))

    def list(self) -> list[dict[str, Any]]:
        return [p.status() for p in self.procs.values()]

    def _find(self, pid: Any) -> BackgroundProcess:
        proc = self.procs.get(pid) if isinstance(pid, str) else None
        if proc is None:
            known = ", ".join(self.procs) or "none"
            raise ProcessError(
                ErrorName.NO_SUCH_PROCESS,
                f"no background process {pid!r} in this kernel (it has: {known}) — "
                "`stigmer ps -k KERNEL` lists them",
            )
        return proc

    def _answer_op(
        self, op: str, proc: BackgroundProcess, params: dict[str, Any], final: bool
    ) -> dict[str, Any] | None:
        if op == "output":
            return self._output(proc, params, final)
        return self._wait(proc, params, final)

    def _output(
        self, proc: BackgroundProcess, params: dict[str, Any], final: bool = False
    ) -> dict[str, Any] | None:
        stream = params.get("stream", "both")
        if stream not in ("stdout", "stderr", "both"):
            raise ProcessError(ErrorName.BAD_REQUEST, "'stream' is stdout, stderr or both")
        names = _STREAMS if stream == "both" else (stream,)
        since = params.get("since")
        most = int(_number(params, "max", OUTPUT_MAX, 1, OUTPUT_CAP))
        out: dict[str, Any] = {"status": "ok", **proc.status()}
        fresh = False
        for name in names:
            offset = since.get(name, 0) if isinstance(since, dict) else since
            offset = offset if isinstance(offset, int) and offset >= 0 else 0
            journal = proc.journals[name]
            first, data = journal.read(offset, most)
            fresh = fresh or bool(data) or offset > journal.end
            out[name] = {
                "data": data,
                "offset": first,  # > since: as many bytes were dropped before it
                "next": first + len(data),
                "end": journal.end,
                "dropped": journal.start,
                "eof": journal.eof,
            }
        if fresh or final or not proc.running:
            return out
        return None  # nothing new yet: a long-poll waits

    def _wait(
        self, proc: BackgroundProcess, params: dict[str, Any], final: bool = False
    ) -> dict[str, Any] | None:
        if proc.running and not final:
            return None
        return {"status": "ok", **proc.status()}

    def _stdin(self, proc: BackgroundProcess, params: dict[str, Any]) -> dict[str, Any]:
        data = params.get("data", b"")
        if isinstance(data, str):
            data = data.encode()
        if not isinstance(data, bytes):
            raise ProcessError(ErrorName.BAD_REQUEST, "'data' must be bytes")
        if proc.stdin_fd < 0 or proc.stdin_close:
            raise ProcessError(
                ErrorName.NOT_RUNNING,
                f"the stdin of process {proc.id} is closed"
                + ("" if proc.running else f" (it has exited: {how(proc)})"),
            )
        if data and proc.stdin_buffer and len(proc.stdin_buffer) + len(data) > STDIN_BOUND:
            raise ProcessError(
                ErrorName.STDIN_OVERFLOW,
                f"process {proc.id} has {len(proc.stdin_buffer)} bytes of stdin it has not "
                "read yet — try again once it reads",
            )
        proc.stdin_buffer += data
        if params.get("eof") is True:
            proc.stdin_close = True
        self._flush_stdin(proc)
        return {
            "status": "ok",
            "id": proc.id,
            "accepted": len(data),
            "written": proc.stdin_written,
            "buffered": len(proc.stdin_buffer),
        }

    def _signal(self, proc: BackgroundProcess, params: dict[str, Any]) -> dict[str, Any]:
        sig = parse_signal(params.get("signal", "TERM"))
        if not proc.running:
            raise ProcessError(ErrorName.NOT_RUNNING, f"process {proc.id} has exited ({how(proc)})")
        try:
            os.killpg(proc.pid, sig)  # its group: what it started goes too
        except ProcessLookupError:
            pass  # it is ending: its exit shows in list and wait
        except PermissionError as exc:
            raise ProcessError(ErrorName.BAD_REQUEST, f"cannot signal it: {exc}") from None
        return {"status": "ok", "id": proc.id, "signal": signal.Signals(sig).name}

    # -- stdin ------------------------------------------------------------------------------
    def _flush_stdin(self, proc: BackgroundProcess) -> None:
        if proc.stdin_fd < 0:
            return
        while proc.stdin_buffer:
            try:
                count = os.write(proc.stdin_fd, proc.stdin_buffer[:_READ])
            except BlockingIOError:
                return
            except OSError:  # it closed its stdin (EPIPE): what is left goes
                proc.stdin_buffer.clear()
                self._close_stdin(proc)
                return
            del proc.stdin_buffer[:count]
            proc.stdin_written += count
        if proc.stdin_close:
            self._close_stdin(proc)

    def _close_stdin(self, proc: BackgroundProcess) -> None:
        if proc.stdin_fd >= 0:
            assert proc.popen.stdin is not None
            with contextlib.suppress(OSError):
                proc.popen.stdin.close()
            proc.stdin_fd = -1
            proc.stdin_close = True

    def _close_fd(self, proc: BackgroundProcess, fd: int) -> None:
        name = proc.fds.pop(fd)
        self._by_fd.pop(fd, None)
        pipe = proc.popen.stdout if name == "stdout" else proc.popen.stderr
        if pipe is not None:
            with contextlib.suppress(OSError):
                pipe.close()

    # -- the end ----------------------------------------------------------------------------
    def close(self) -> None:
        """The kernel ends: every process group is killed, its exit collected, every
        long-poll answered with what there is."""
        for proc in self.procs.values():
            if proc.running:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
        deadline = time.monotonic() + 2.0
        for proc in self.procs.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.popen.wait(max(0.0, deadline - time.monotonic()))
            proc.changed += 1
        for waiter in self.waiters:
            reply = self._answer_op(waiter.op, waiter.proc, waiter.params, final=True)
            assert reply is not None
            self.answer(waiter.msg, reply)
        self.waiters.clear()
        for proc in self.procs.values():
            for fd in list(proc.fds):
                self._close_fd(proc, fd)
            self._close_stdin(proc)
            if proc.pidfd >= 0:
                with contextlib.suppress(OSError):
                    os.close(proc.pidfd)
                proc.pidfd = -1
        self._by_fd.clear()


_OPS: dict[str, Callable[[ProcessTable, BackgroundProcess, dict[str, Any]], Any]] = {
    "output": ProcessTable._output,
    "stdin": ProcessTable._stdin,
    "signal": ProcessTable._signal,
    "wait": ProcessTable._wait,
}


def _number(params: dict[str, Any], key: str, default: float, low: float, high: float) -> float:
    value = params.get(key)
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return default
    return min(high, max(low, float(value)))
