"""A warm bash session: one long-lived interactive bash per kernel.

How it works (see docs/architecture.md, "The shell session"):

* bash runs as ``bash --rcfile RC --noediting -i`` in its own session. Interactive mode gives
  terminal semantics without a terminal: SIGINT aborts the whole command line and returns to
  the prompt. Its stdin is the command pipe; its stdout and stderr are the *control* pipe, which
  only bash itself writes to (prompts, ``set -x`` traces of what it runs at top level, its own
  errors). Commands write to the output pipes, saved in bash as descriptors 61 and 62.
* Each command is one line: ``\\eval $'CODE' <STDIN >&61 2>&62 61>&- 62>&-``. The code runs at
  top level (cwd, variables, functions and aliases persist; errors read ``bash: ...``), with the
  output pipes as its stdout and stderr and no descriptor of the session's own.
* ``PROMPT_COMMAND[999]`` (an element a scalar ``PROMPT_COMMAND=...`` leaves alone) reports the
  end on the control pipe with a message bash prints itself: a redirection from
  ``/dev/null/MARKER...`` fails with the expanded name, so no command a user could redefine is
  called. The report carries ``$?``, ``$LINENO`` (how many lines bash has read: a prompt shown
  again for no line is told apart) and ``$PWD``. Output cannot forge it: output never goes
  there. When it arrives, everything the command wrote is already in the output pipes.
* ``exit`` (anywhere), ``set -e`` and the agent's stop signal end bash through its EXIT trap,
  which writes the session's state (variables, functions, aliases, options, traps, cwd) to a
  file; the agent starts a new bash that reads it back, so only the command ended.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import select
import signal
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from ..environment import NAME_RE
from . import procs
from .shell_scripts import (
    CTL_FD,
    ERR_FD,
    KIND_BUILTIN,
    KIND_END,
    KIND_EXIT,
    KIND_REPAIR,
    KIND_RESULT,
    KIND_START,
    OUT_FD,
    STATE_DONE,
    TMPENV_FLAG,
    command_line,
    exit_script,
    late_script,
    quote_code,
    rc_file,
    repair_line,
    tmpenv_script,
)

#: Environment every session gets, so commands never wait for a human.
NONINTERACTIVE_ENV = {
    "DEBIAN_FRONTEND": "noninteractive",
    "GIT_TERMINAL_PROMPT": "0",
    "GIT_EDITOR": "true",
    "PAGER": "cat",
    "GIT_PAGER": "cat",
    "MANPAGER": "cat",
    "SYSTEMD_PAGER": "",
    "PIP_NO_INPUT": "1",
    "TERM": "dumb",
}

#: Output written between commands (by background jobs) is kept for the next command up to
#: this many bytes per stream; the rest is counted and dropped, so the agent's memory stays bounded.
BETWEEN_COMMANDS_LIMIT = 1024 * 1024

#: The signal that makes bash end the command line whatever its traps do with SIGINT: bash runs
#: its EXIT trap (the state snapshot) for it, then dies of it; the agent restores the state.
ABORT_SIGNAL = signal.SIGUSR1

_READ = 65536


@dataclass
class CommandEnd:
    exit_code: int
    cwd: str | None
    session_ended: bool = False  # bash itself exited and a fresh session was started
    problem: str | None = None  # the session's plumbing was broken: what happened


class ControlScanner:
    """Finds ``MARKER kind payload END`` messages in the control pipe's byte stream.

    Everything else bash prints there (prompts, traces, its own errors) is skipped. Only a tail
    that could be the start of a marker is kept between chunks.
    """

    def __init__(self, marker: bytes, end: bytes) -> None:
        self.marker = marker
        self.end = end
        self._buf = b""

    def feed(self, data: bytes) -> list[tuple[str, str]]:
        buf = self._buf + data
        found: list[tuple[str, str]] = []
        pos = 0
        while True:
            start = buf.find(self.marker, pos)
            if start < 0:
                keep = _partial_suffix(buf[pos:], self.marker)
                self._buf = buf[len(buf) - keep :] if keep else b""
                return found
            stop = buf.find(self.end, start + len(self.marker))
            if stop < 0:
                self._buf = buf[start:]
                if len(self._buf) > 1 << 20:  # a path cannot be that long: no end is coming
                    self._buf = b""
                return found
            body = buf[start + len(self.marker) : stop].decode("utf-8", "surrogateescape")
            if body:
                found.append((body[0], body[1:]))
            pos = stop + len(self.end)


def assignments(env: Mapping[str, str]) -> str:
    """``NAME=$'VALUE' ...`` put before a command line: bash sets them for that line's ``eval``
    only (temporary assignments before a builtin, exported to what it runs) and puts back what
    was there afterwards, an interrupt included. Names bash cannot assign are skipped (the
    broker refuses them)."""
    return f"{TMPENV_FLAG}=1 " + "".join(
        f"{name}={quote_code(value)} "
        for name, value in env.items()
        if isinstance(name, str) and isinstance(value, str) and NAME_RE.match(name)
    )


def _partial_suffix(buf: bytes, marker: bytes) -> int:
    """Length of the longest suffix of ``buf`` that is a proper prefix of ``marker``."""
    for size in range(min(len(buf), len(marker) - 1), 0, -1):
        if marker.startswith(buf[-size:]):
            return size
    return 0


class BetweenCommands:
    """Output that arrived while no command ran (background jobs), kept for the next command
    up to ``limit`` bytes per stream; the rest is counted in ``dropped``."""

    def __init__(self, limit: int = BETWEEN_COMMANDS_LIMIT) -> None:
        self.limit = limit
        self.kept: dict[int, bytearray] = {}
        self.dropped = 0

    def keep(self, fd: int, data: bytes) -> None:
        kept = self.kept.setdefault(fd, bytearray())
        room = max(0, self.limit - len(kept))
        if len(data) > room:
            self.dropped += len(data) - room
            data = data[:room]
        kept += data

    def take(self, fd: int) -> bytes:
        return bytes(self.kept.pop(fd, b""))

    def take_dropped(self) -> int:
        dropped, self.dropped = self.dropped, 0
        return dropped


class BashSession:
    """One interactive bash process, the pipes that drive it and its files.

    The command and output pipes outlive a bash (both ends are kept here), so background jobs
    keep writing and a restarted bash reads the line already sent; the control pipe is new for
    each bash and only bash holds its write end.
    """

    def __init__(
        self,
        workdir: Path,
        cwd: str,
        shell: str = "bash",
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.workdir = workdir
        self.cwd = cwd
        self.shell = shell
        self.env = dict(os.environ if env is None else env)
        self.env.update(NONINTERACTIVE_ENV)
        self.proc: subprocess.Popen[bytes] | None = None
        self.pidfd = -1  # readable when bash exits (Linux >= 5.3), else -1
        self.stdout_fd = self.stderr_fd = self.ctl_fd = -1
        self._cmd_r = self._cmd_w = self._out_w = self._err_w = -1
        self.exit_status: int | None = None
        self.lines = 0  # command lines written to the current bash
        self.ready = False  # the current bash showed its first prompt
        self.restored = False  # ...after reading back the state of the one before
        self.detached = False  # its control pipe closed while it lives (`exec`, closed fds)
        self.exit_reported = False  # its EXIT trap reported on the control pipe
        self.unreported = False  # the pipe closed with no exit report, seen as bash ended
        self.closed_cwd: str | None = None  # bash's cwd then, if it could still be read
        self.repairing = False  # the end report was put back for the current line
        self.builtin_ok = False  # the last end report ran `builtin eval` (see command_line)
        self._probe_ok = False  # ...and this one's did, so far
        self.between = BetweenCommands()
        self._end: CommandEnd | None = None
        self._result: tuple[int, str] | None = None
        self._repair_rc: int | None = None
        self.rc_path = workdir / "bashrc"
        self.stdin_path = workdir / "stdin"
        self.exit_path = workdir / "exit.sh"
        self.late_path = workdir / "late.sh"
        self.state_path = workdir / "state.sh"
        self.traps_path = workdir / "traps.sh"
        #: The names of the running command's own variables, for the EXIT trap (empty if none).
        self.tmpenv_path = workdir / "tmpenv.sh"
        self._tmpenv_written = False
        self._new_token()

    def _new_token(self) -> None:
        token = os.urandom(12).hex().encode()
        self.marker = b"\x1e\x1f" + token
        self.marker_end = b"\x1f\x1e" + token
        self.scanner = ControlScanner(self.marker, self.marker_end)

    @property
    def pid(self) -> int:
        return self.proc.pid if self.proc else -1

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.exit_status is None

    # -- life cycle ---------------------------------------------------------------------------
    def spawn(self, restore: bool = False, status: int = 0) -> None:
        """Start bash (reading back the saved state if ``restore``); the caller then reads the
        control pipe until :attr:`ready`. ``status`` is what ``$?`` holds at the first prompt."""
        self.workdir.mkdir(mode=0o700, parents=True, exist_ok=True)
        if self._cmd_w < 0:
            self._cmd_r, self._cmd_w = os.pipe()
            self.stdout_fd, self._out_w = os.pipe()
            self.stderr_fd, self._err_w = os.pipe()
            os.set_blocking(self.stdout_fd, False)
            os.set_blocking(self.stderr_fd, False)
            os.set_blocking(self._cmd_w, False)  # (bash's end, a separate description, blocks)
        else:
            self._discard_input()
        self.release()
        if not restore:
            self.discard_state()
        self._new_token()
        # Passed at their own numbers and moved to 61 and 62 by the rc file: never from 61 or 62.
        passed = [
            fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 63) if fd in (CTL_FD, OUT_FD, ERR_FD) else fd
            for fd in (self._out_w, self._err_w)
        ]
        self._write_scripts(restore, status, passed[0], passed[1])
        ctl_r, ctl_w = os.pipe()
        cwd = self.cwd if os.path.isdir(self.cwd) else os.path.expanduser("~")
        try:
            self.proc = subprocess.Popen(
                [self.shell, "--rcfile", str(self.rc_path), "--noediting", "-i"],
                stdin=self._cmd_r,
                stdout=ctl_w,
                stderr=ctl_w,
                pass_fds=tuple(passed),
                cwd=cwd,
                # The state read back holds the environment (and its unset variables stay
                # unset); bash needs nothing from outside to start.
                env={} if restore else self.env,
                start_new_session=True,
                close_fds=True,
            )
        finally:
            os.close(ctl_w)
            for fd in passed:
                if fd not in (self._out_w, self._err_w):
                    os.close(fd)
        os.set_blocking(ctl_r, False)
        self.ctl_fd = ctl_r
        self.exit_status = None
        self.lines = 0
        self.ready = self.restored = self.detached = self.repairing = False
        self.exit_reported = self.unreported = False
        self.builtin_ok = self._probe_ok = False
        self.closed_cwd = None
        self._end = self._result = self._repair_rc = None
        self.pidfd = -1
        with contextlib.suppress(OSError, AttributeError):
            self.pidfd = os.pidfd_open(self.proc.pid)

    def _write_scripts(self, restore: bool, status: int, out_fd: int, err_fd: int) -> None:
        m, e = self.marker.decode(), self.marker_end.decode()
        text = {
            self.exit_path: exit_script(
                traps=self.traps_path,
                locals_file=self.workdir / "locals",
                state=self.state_path,
                tmpenv=self.tmpenv_path,
            ),
            self.rc_path: rc_file(
                out_fd=out_fd,
                err_fd=err_fd,
                marker=m,
                end=e,
                exit_sh=self.exit_path,
                state=self.state_path if restore else None,
                late_sh=self.late_path if restore else None,
                status=status,
            ),
        }
        if restore:
            text[self.late_path] = late_script(traps=self.traps_path, marker=m, end=e)
        for path, content in text.items():
            path.write_text(content, encoding="utf-8", errors="surrogateescape")

    def close(self) -> None:
        """End bash and every process of its session; close the pipes."""
        if self.proc is not None and self.exit_status is None:
            procs.kill_session(self.proc.pid)
            self.reap(block=True)
        for fd in (
            self.stdout_fd,
            self.stderr_fd,
            self.ctl_fd,
            self.pidfd,
            self._cmd_r,
            self._cmd_w,
            self._out_w,
            self._err_w,
        ):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self.stdout_fd = self.stderr_fd = self.ctl_fd = self.pidfd = -1
        self._cmd_r = self._cmd_w = self._out_w = self._err_w = -1

    def release(self) -> None:
        """Forget a bash that has exited (reaped): its control pipe and pidfd are closed."""
        for fd in (self.ctl_fd, self.pidfd):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self.ctl_fd = self.pidfd = -1

    def reap(self, block: bool = False) -> bool:
        """Collect bash's exit status if it ended; True if it has."""
        if self.proc is None:
            return True
        if self.exit_status is not None:
            return True
        try:
            pid, status = os.waitpid(self.proc.pid, 0 if block else os.WNOHANG)
        except ChildProcessError:  # reaped elsewhere: the status is unknown
            self.exit_status = 255
            self.proc.returncode = 255
            return True
        if pid == 0:
            return False
        self.exit_status = os.waitstatus_to_exitcode(status)
        self.proc.returncode = self.exit_status
        return True

    def wait_exit(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for bash to exit; True if it has."""
        if self.reap():
            return True
        if self.pidfd >= 0:
            select.select([self.pidfd], [], [], timeout)
        return self.reap()

    # -- the saved state ----------------------------------------------------------------------
    def saved_state(self) -> bool:
        """True if the EXIT trap of the bash that just exited saved the whole state."""
        try:
            with open(self.state_path, "rb") as handle:
                handle.seek(max(0, os.fstat(handle.fileno()).st_size - len(STATE_DONE)))
                return handle.read() == STATE_DONE
        except OSError:
            return False

    def discard_state(self) -> None:
        for path in (self.state_path, self.traps_path, self.workdir / "locals"):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    # -- commands -----------------------------------------------------------------------------
    def begin(
        self,
        code: str,
        stdin: bytes | None = None,
        stdin_file: Path | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        """Start running ``code``; its end shows as :meth:`finished` returning it.

        Its stdin is /dev/null, or the bytes ``stdin``, or the file (FIFO) ``stdin_file``;
        ``env`` holds variables set for this command only.
        """
        if stdin is not None:
            self.stdin_path.write_bytes(stdin)
            stdin_file = self.stdin_path
        # Temporary assignments need the plain `eval` (`builtin eval` does not keep them).
        line = command_line(code, stdin_file, tested=self.builtin_ok and not env)
        if env:
            line = assignments(env) + line
            # An `exit` in the command must not keep them (the EXIT trap saves the state).
            self.tmpenv_path.write_text(tmpenv_script([n for n in env if NAME_RE.match(n)]))
            self._tmpenv_written = True
        elif self._tmpenv_written:
            self.tmpenv_path.write_text("")
            self._tmpenv_written = False
        self._end = self._result = self._repair_rc = None
        self.repairing = False
        self.lines += 1
        self._write_line(line.encode("utf-8", "surrogateescape"))

    def _write_line(self, line: bytes) -> None:
        """Write a whole line; bash reads it as the pipe fills (a long line takes a while). A
        bash that exits meanwhile gets the rest of it no more (see :meth:`_discard_input`)."""
        view = memoryview(line)
        while view:
            try:
                view = view[os.write(self._cmd_w, view) :]
            except BlockingIOError:
                select.select([self.pidfd] if self.pidfd >= 0 else [], [self._cmd_w], [], 1.0)
                if self.reap():
                    return

    def _discard_input(self) -> None:
        """Drop what a bash that exited left unread of the command pipe (a line it died
        reading), so that the next bash does not run a piece of it."""
        while select.select([self._cmd_r], [], [], 0)[0]:
            if not os.read(self._cmd_r, _READ):
                return

    def read(self, fd: int) -> tuple[bytes, bool]:
        """Read what is available on the output pipe ``fd``: (bytes, eof)."""
        try:
            data = os.read(fd, _READ)
        except BlockingIOError:
            return b"", False
        except OSError:
            return b"", True
        return data, not data

    def drain(self, fd: int) -> bytes:
        """Everything the output pipe ``fd`` holds now."""
        chunks: list[bytes] = []
        while True:
            data, _ = self.read(fd)
            if not data:
                return b"".join(chunks)
            chunks.append(data)

    def read_control(self) -> None:
        """Read the control pipe and act on the markers in it."""
        if self.ctl_fd < 0:
            return
        while True:
            try:
                data = os.read(self.ctl_fd, _READ)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:
                self._on_detached()
                return
            for kind, payload in self.scanner.feed(data):
                self._on_marker(kind, payload)

    def _on_detached(self) -> None:
        """The control pipe closed. After the EXIT trap's report, bash is exiting. Otherwise
        it exec'd another program or a command closed bash's own descriptors: certainly so if
        it still runs; if it is ending already (the program exec'd may be done by the time
        the agent looks), :meth:`closed_before_exit` tells once it has ended. Its cwd is read
        now, while it can be (a process's cwd is released only after its descriptors)."""
        with contextlib.suppress(OSError):
            os.close(self.ctl_fd)
        self.ctl_fd = -1
        if self.exit_reported:
            return
        ending = self.reap() or _exiting(self.pid)
        with contextlib.suppress(OSError):
            self.closed_cwd = os.readlink(f"/proc/{self.pid}/cwd")
        if ending:
            self.unreported = True
            return
        self.detached = True
        if self.closed_cwd is not None:
            self.cwd = self.closed_cwd

    def closed_before_exit(self, exit_printed: bool) -> bool:
        """For a bash that has ended: True if its control pipe closed before it exited
        (`exec`, or a command closed the shell's own descriptors), False if by its exit.

        Every exit through the EXIT trap reports on the control pipe first, so a pipe that
        closed without that report was closed earlier, unless bash ended without the trap:
        killed by a signal (SIGKILL), or its `exit` ran a user's EXIT trap instead (bash
        printed "exit": ``exit_printed``)."""
        self.read_control()  # (bash is gone: its reports and the pipe's end are all there)
        if self.detached or not self.unreported:
            return self.detached
        if self.saved_state():
            closed = True  # the EXIT trap ran but its report found no control pipe
        else:
            closed = self.exit_status is not None and self.exit_status >= 0 and not exit_printed
        if closed and self.closed_cwd is not None:
            self.cwd = self.closed_cwd
        return closed

    def _on_marker(self, kind: str, payload: str) -> None:
        if kind == KIND_EXIT:
            self.exit_reported = True
        elif kind == KIND_START:
            self.restored = payload == "r"
        elif kind == KIND_RESULT:
            status, _, function = payload.partition(";")
            with contextlib.suppress(ValueError):
                self._result = (int(status), function)
        elif kind == KIND_BUILTIN:
            self._probe_ok = not payload
        elif kind == KIND_REPAIR:
            with contextlib.suppress(ValueError):
                self._repair_rc = int(payload)
        elif kind == KIND_END:
            number, _, cwd = payload.partition(";")
            try:
                line: int | None = int(number) if number else None  # None: LINENO was unset
            except ValueError:
                return  # not a report but the text of one (a trace)
            if cwd:
                self.cwd = cwd
            self.builtin_ok, self._probe_ok = self._probe_ok, False
            if not self.ready:
                self.ready = line in (0, None)
                if self.ready:
                    self.discard_state()  # read back (and late.sh has run): used up
                return
            if line is not None and line < self.lines:
                return  # a prompt shown again (a late Ctrl-C): it ended no line
            self._end = self._make_end()

    def _make_end(self) -> CommandEnd:
        if self.repairing:
            code = self._repair_rc if self._repair_rc is not None else -1
            return CommandEnd(code, self.cwd)
        if self._result is None or self._result[1]:
            return CommandEnd(
                -1,
                self.cwd,
                problem="the command redefined or disabled `eval`, which the session runs "
                "every command with",
            )
        return CommandEnd(self._result[0], self.cwd)

    def strip_reports(self, data: bytes) -> bytes:
        """``data`` without bash's own end reports: they reach a command's stderr only when a
        command closed the descriptors bash restores its own stderr from."""
        pattern = re.escape(self.marker) + rb".*?" + re.escape(self.marker_end) + rb"[^\n]*\n?"
        return re.sub(rb"[^\n]*" + pattern, b"", data, flags=re.DOTALL)

    def finished(self) -> CommandEnd | None:
        """The current line's end once bash reported it, else None."""
        return self._end

    # -- a line whose end report went missing ---------------------------------------------
    def idle(self) -> bool:
        """True if bash sits at its prompt reading the command pipe (no line of ours runs)."""
        if not self.alive:
            return False
        try:
            fields = Path(f"/proc/{self.pid}/syscall").read_text().split()
            if len(fields) < 2 or int(fields[0]) not in _READ_SYSCALLS:
                return False
            info = os.stat(f"/proc/{self.pid}/fd/{int(fields[1], 16)}")
        except (OSError, ValueError):
            return False
        mine = os.fstat(self._cmd_w)
        return (info.st_dev, info.st_ino) == (mine.st_dev, mine.st_ino)

    def repair(self) -> None:
        """Put the end report back (the command unset PROMPT_COMMAND or replaced the array):
        one line that reports ``$?``, sets the hook again and leaves ``$?`` as it was."""
        self.repairing = True
        self.lines += 1
        self._write_line(repair_line(self.marker.decode(), self.marker_end.decode()).encode())

    # -- signals ------------------------------------------------------------------------------
    def version(self) -> str:
        """The shell's version (e.g. ``5.2.15(1)-release``), or "" if it cannot tell."""
        try:
            out = subprocess.run(
                [self.shell, "-c", "echo $BASH_VERSION"],
                capture_output=True,
                timeout=5,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired):
            return ""
        return out.stdout.decode(errors="replace").strip()

    def interrupt(self, pids: list[int]) -> None:
        """Like Ctrl-C at a terminal, for this command only: SIGINT to bash and ``pids`` (the
        command's processes), never to what earlier commands left running."""
        self.signal_shell(signal.SIGINT)
        procs.signal_pids(pids, signal.SIGINT)

    def abort(self) -> None:
        """End the command line whatever bash's SIGINT trap is (through the EXIT trap)."""
        self.signal_shell(ABORT_SIGNAL)

    def ignores_sigint(self) -> bool:
        """True if bash ignores SIGINT (``trap '' INT``): Ctrl-C cannot stop its line."""
        try:
            for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                if line.startswith("SigIgn:"):
                    return bool(int(line.split()[1], 16) & (1 << (signal.SIGINT - 1)))
        except (OSError, ValueError, IndexError):
            pass
        return False

    def signal_shell(self, sig: int) -> None:
        if self.alive and self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, sig)


# read(2) and readv(2) syscall numbers by machine (as in stdin.py).
_READ_SYSCALLS = {0, 19, 63, 65}
_PF_EXITING = 0x4  # in the flags of /proc/PID/stat from the start of exit(), before its files close


def _exiting(pid: int) -> bool:
    """True if ``pid`` is exiting (or gone): its descriptors closing is no sign of an exec."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            fields = handle.read().rsplit(b")", 1)[1].split()
        return fields[0] in (b"Z", b"X") or bool(int(fields[6]) & _PF_EXITING)
    except (OSError, IndexError, ValueError):
        return True
