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

Around this module: the bash process itself (waiting, signals, ``/proc``) is
:class:`~.shell_process.ShellProcess`; what the pipes carry is parsed in :mod:`.shell_pipes`;
the session's files are :mod:`.shell_files`; the bash code is in :mod:`.shell_scripts`.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import select
import subprocess
from collections.abc import Mapping
from pathlib import Path

from ..environment import is_shell_name
from ..protocol.constants import OUTPUT_CHUNK
from . import procs
from .last_command import Carry
from .shell_files import SessionFiles
from .shell_pipes import BETWEEN_COMMANDS_LIMIT, BetweenCommands, ControlScanner
from .shell_process import ShellProcess
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
    assignments,
    command_line,
    repair_line,
    tmpenv_script,
)

__all__ = [
    "BETWEEN_COMMANDS_LIMIT",
    "NONINTERACTIVE_ENV",
    "BashSession",
    "BetweenCommands",
    "CommandEnd",
    "ControlScanner",
]

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

_READ = 65536
#: Bytes asked per read of an output pipe, and the capacities the pipes are grown to, the first
#: the system allows (a pipe of 64 KiB would give no more per read).
_OUTPUT_READ = OUTPUT_CHUNK
#: Looked for before the pattern of :meth:`BashSession._without_tty_noise` (a fast find).
_TTY_NOISE_WORD = b"] tcsetattr: "
_PIPE_SIZES = (OUTPUT_CHUNK, 256 * 1024)
#: How long the agent waits for the rest of an end report once its first marker came: bash
#: prints the three markers of one report in a row, so reading them in one turn saves two
#: loop turns per command (a report that does not follow is read at the next turn as ever).
_REPORT_WAIT = 0.002


class CommandEnd:
    # A plain class, not a dataclass: an agent's start imports no dataclasses (inspect, ast).

    exit_code: int
    cwd: str | None
    session_ended: bool  # bash itself exited and a fresh session was started
    problem: str | None  # the session's plumbing was broken: what happened

    def __init__(
        self,
        exit_code: int,
        cwd: str | None,
        session_ended: bool = False,
        problem: str | None = None,
    ) -> None:
        self.exit_code = exit_code
        self.cwd = cwd
        self.session_ended = session_ended
        self.problem = problem


class BashSession(ShellProcess):
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
        super().__init__(shell)
        self.workdir = workdir
        self.cwd = cwd
        self.env = dict(os.environ if env is None else env)
        self.env.update(NONINTERACTIVE_ENV)
        self.stdout_fd = self.stderr_fd = self.ctl_fd = -1
        self._cmd_r = self._cmd_w = self._out_w = self._err_w = -1
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
        self.files = SessionFiles(workdir)
        self.carry = Carry(self.files.return_path)
        self._tmpenv_written = False
        self.stdin_written = False  # the stdin file holds a command's stdin bytes
        self._new_token()

    def _new_token(self) -> None:
        token = os.urandom(12).hex().encode()
        self.marker = b"\x1e\x1f" + token
        self.marker_end = b"\x1f\x1e" + token
        self.scanner = ControlScanner(self.marker, self.marker_end)

    # -- life cycle ---------------------------------------------------------------------------
    def spawn(self, restore: bool = False, status: int = 0) -> None:
        """Start bash (reading back the saved state if ``restore``); the caller then reads the
        control pipe until :attr:`ready`. ``status`` is what ``$?`` holds at the first prompt."""
        self.workdir.mkdir(mode=0o700, parents=True, exist_ok=True)
        if self._cmd_w < 0:
            self._cmd_r, self._cmd_w = os.pipe()
            self.stdout_fd, self._out_w = os.pipe()
            self.stderr_fd, self._err_w = os.pipe()
            for fd in (self.stdout_fd, self.stderr_fd):
                os.set_blocking(fd, False)
                for size in _PIPE_SIZES:  # (above pipe-max-size: refused, 64 KiB it may stay)
                    with contextlib.suppress(OSError):
                        fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, size)
                        break
            os.set_blocking(self._cmd_w, False)  # (bash's end, a separate description, blocks)
        else:
            self._discard_input()
        self.release()
        self.carry.restarted()
        if not restore:
            self.files.discard_state()
        self._new_token()
        # Passed at their own numbers and moved to 61 and 62 by the rc file: never from 61 or 62.
        passed = [
            fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 63) if fd in (CTL_FD, OUT_FD, ERR_FD) else fd
            for fd in (self._out_w, self._err_w)
        ]
        self.files.write_scripts(
            restore, status, passed[0], passed[1], self.marker.decode(), self.marker_end.decode()
        )
        ctl_r, ctl_w = os.pipe()
        cwd = self.cwd if os.path.isdir(self.cwd) else os.path.expanduser("~")
        try:
            self.proc = subprocess.Popen(
                [self.shell, "--rcfile", str(self.files.rc_path), "--noediting", "-i"],
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

    # -- commands -----------------------------------------------------------------------------
    def begin(
        self,
        code: str,
        stdin: bytes | None = None,
        stdin_file: Path | None = None,
        env: Mapping[str, str] | None = None,
        user: bool = True,
    ) -> None:
        """Start running ``code``; its end shows as :meth:`finished` returning it.

        Its stdin is /dev/null, or the bytes ``stdin``, or the file (FIFO) ``stdin_file``;
        ``env`` holds variables set for this command only. A ``user`` command sees ``$?``,
        ``$_`` and ``PIPESTATUS`` as the last one left them, and leaves its own.
        """
        if stdin is not None:
            self.files.stdin_path.write_bytes(stdin)
            self.stdin_written = True
            stdin_file = self.files.stdin_path
        # Temporary assignments need the plain `eval` (`builtin eval` does not keep them).
        tested = self.builtin_ok and not env
        replay, code, tail = self.carry.line(code, user, self.builtin_ok, tested)
        line = command_line(code, stdin_file, tested=tested, tail=tail)
        if env:
            line = assignments(env) + line
            # An `exit` in the command must not keep them (the EXIT trap saves the state).
            self.files.tmpenv_path.write_text(tmpenv_script([n for n in env if is_shell_name(n)]))
            self._tmpenv_written = True
        elif self._tmpenv_written:
            self.files.tmpenv_path.write_text("")
            self._tmpenv_written = False
        self._end = self._result = self._repair_rc = None
        self.repairing = False
        self.lines += 1
        self._write_line((replay + line).encode("utf-8", "surrogateescape"))

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
            data = os.read(fd, _OUTPUT_READ)
        except BlockingIOError:
            return b"", False
        except OSError:
            return b"", True
        if not data:
            return b"", True
        return self._without_tty_noise(fd, data), False

    def drain(self, fd: int) -> bytes:
        """Everything the output pipe ``fd`` holds now."""
        chunks: list[bytes] = []
        while True:
            try:
                data = os.read(fd, _OUTPUT_READ)
            except OSError:  # (BlockingIOError: empty now)
                break
            if not data:
                break
            chunks.append(data)
        return self._without_tty_noise(fd, b"".join(chunks))

    def _without_tty_noise(self, fd: int, data: bytes) -> bytes:
        """``data`` without the error our bash prints on the command's stderr after a job a
        signal ended (``yes | head -1``: yes dies of SIGPIPE): "bash: [PID: LEVEL (255)]
        tcsetattr: Inappropriate ioctl for device". An interactive bash puts back its terminal's
        settings then, and its terminal (fd 255) is the control pipe. Only the message naming
        this bash's pid goes, from its name on (what a program wrote before it on the same line
        stays); it is one write, whole in one read. (A session that set ``BASH_ARGV0`` keeps it:
        bash names itself by ``$0``.)"""
        if fd != self.stderr_fd or _TTY_NOISE_WORD not in data:
            return data
        name = re.escape(os.path.basename(self.shell).encode())
        noise = re.compile(name + rb": \[%d: \d+ \(\d+\)\] tcsetattr: [^\n]*\n" % self.pid)
        return noise.sub(b"", data)

    def read_control(self) -> None:
        """Read the control pipe and act on the markers in it."""
        if self.ctl_fd < 0:
            return
        while True:
            try:
                data = os.read(self.ctl_fd, _READ)
            except BlockingIOError:
                if self._report_started() and select.select([self.ctl_fd], [], [], _REPORT_WAIT)[0]:
                    continue
                return
            except OSError:
                data = b""
            if not data:
                self._on_detached()
                return
            for kind, payload in self.scanner.feed(data):
                self._on_marker(kind, payload)

    def _report_started(self) -> bool:
        """The first marker of the running command's end report came, its last not yet."""
        return self.ready and self._end is None and self._result is not None

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
        ending = self.reap() or self.exiting()
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
        if self.files.saved_state():
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
            pipes, _, function = payload.rpartition(";")
            self._probe_ok = not function
            if self.ready and self._result is not None:
                self.carry.reported(self._result[0], pipes)
        elif kind == KIND_REPAIR:
            with contextlib.suppress(ValueError):
                self._repair_rc = int(payload)
        elif kind == KIND_END:
            number, _, cwd = payload.partition(";")
            options, _, cwd = cwd.partition(";")
            try:
                line: int | None = int(number) if number else None  # None: LINENO was unset
            except ValueError:
                return  # not a report but the text of one (a trace)
            if cwd:
                self.cwd = cwd
            self.carry.verbose = "v" in options
            self.builtin_ok, self._probe_ok = self._probe_ok, False
            if not self.ready:
                self.ready = line in (0, None)
                if self.ready:
                    self.files.discard_state()  # read back (and late.sh has run): used up
                return
            if line is not None and line < self.lines:
                return  # a prompt shown again (a late Ctrl-C): it ended no line
            self._end = self._make_end()

    def _make_end(self) -> CommandEnd:
        if self.repairing:
            code = self._repair_rc if self._repair_rc is not None else -1
            if self.carry.capturing and self._result is not None and not self._result[1]:
                code = self._result[0]  # (CAPTURE's: the status before the line's tail)
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
        info = self.reading()
        if info is None:
            return False
        mine = os.fstat(self._cmd_w)
        return (info.st_dev, info.st_ino) == (mine.st_dev, mine.st_ino)

    def repair(self) -> None:
        """Put the end report back (the command unset PROMPT_COMMAND or replaced the array):
        one line that reports ``$?``, sets the hook again and leaves ``$?`` as it was."""
        self.repairing = True
        self.lines += 1
        self._write_line(repair_line(self.marker.decode(), self.marker_end.decode()).encode())
