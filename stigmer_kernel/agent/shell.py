"""A warm bash session: one long-lived interactive bash per kernel.

How it works (see docs/architecture.md, "The shell session"):

* bash runs as ``bash --rcfile RC --noediting -i`` in its own session, reading command lines
  from a pipe on its stdin. Interactive mode gives terminal semantics without a terminal:
  SIGINT aborts the whole command line (not just the current program) and returns to the prompt.
* Each command is written to a file and run with ``. FILE </dev/null``: sourcing at top level
  keeps cwd, variables (``declare`` too), functions and aliases; ``exit N`` is aliased to
  ``return N``, which ends the sourced command with status N and keeps the session.
* ``PROMPT_COMMAND`` (read-only) writes an end marker carrying ``$?`` and ``$PWD`` to stdout and
  a marker to stderr, through saved descriptors 61/62 that point at the same pipes. When both
  markers arrived, every byte the command wrote before finishing has been read, in order.
* The markers hold a random token, so output cannot forge them by accident.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from . import procs

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

_RC_TEMPLATE = r"""
exec 61>&1 62>&2
PS1=''; PS2=''; PS0=''; PS4='+ '
unset HISTFILE MAILCHECK PROMPT_COMMAND
set +o history
shopt -s expand_aliases
shopt -u checkwinsize 2>/dev/null
alias exit=return
__stg_m=$'{marker}'
__stg_f={cmdfile}
__stg_prompt() {{
  local __stg_rc=$?
  printf '%s%d;%s\0' "$__stg_m" "$__stg_rc" "$PWD" >&61
  printf '%s' "$__stg_m" >&62
}}
readonly __stg_m __stg_f
readonly -f __stg_prompt
PROMPT_COMMAND=__stg_prompt
readonly PROMPT_COMMAND
"""


#: Output written between commands (by background jobs) is kept for the next command up to
#: this many bytes per stream; the rest is counted and dropped, so the agent's memory stays bounded.
BETWEEN_COMMANDS_LIMIT = 1024 * 1024


class MarkerScanner:
    """Finds ``marker`` in a byte stream split into arbitrary chunks.

    ``feed`` returns the bytes before the marker (safe to forward now) and whether the marker
    was seen. Only a tail that could be the start of the marker is held back. With
    ``payload_end`` set, the bytes after the marker up to that terminator are the payload.
    Bytes after that (output between commands) go to ``after``, at most ``after_limit`` of
    them; ``dropped`` counts the bytes past the limit.
    """

    def __init__(
        self,
        marker: bytes,
        payload_end: bytes | None = None,
        after_limit: int = BETWEEN_COMMANDS_LIMIT,
    ) -> None:
        self.marker = marker
        self.payload_end = payload_end
        self.after_limit = after_limit
        self._pending = b""
        self.found = False
        self.payload: bytes | None = None
        self.after = bytearray()  # bytes that followed the marker (output between commands)
        self.dropped = 0  # bytes of output between commands discarded past after_limit
        self.stale = 0  # markers of prompts that ended no command, dropped

    def reset(self) -> None:
        """Start looking for the next marker; output kept since the last one comes first.

        A whole marker among that output ended no command: bash showed its prompt again (a
        Ctrl-C reached it after the last command ended). It is dropped, so it cannot be taken
        for the end of the command about to start.
        """
        self.found = False
        self.payload = None
        kept = bytes(self.after)
        start = 0
        while (index := kept.find(self.marker, start)) >= 0:
            end = index + len(self.marker)
            if self.payload_end is not None:
                close = kept.find(self.payload_end, end)
                if close < 0:
                    break  # not whole yet: left as it is
                end = close + len(self.payload_end)
            kept = kept[:index] + kept[end:]
            start = index
            self.stale += 1
        self._pending = kept
        self.after = bytearray()

    def take_pending(self) -> bytes:
        """Bytes held back at a chunk boundary (call when the stream will not continue)."""
        data, self._pending = self._pending, b""
        return data

    def take_after(self) -> bytes:
        """Remove and return the output kept since the marker (set aside for a hidden run)."""
        data = bytes(self.after)
        self.after = bytearray()
        return data

    def restore_after(self, held: bytes) -> None:
        """Put ``held`` (from :meth:`take_after`) back before what arrived since, within the cap."""
        since = self.take_after()
        self._keep_after(held)
        self._keep_after(since)

    def feed(self, data: bytes) -> bytes:
        if self.found:
            if self.payload is None and self.payload_end is not None:
                return self._feed_payload(data)
            self._keep_after(data)
            return b""
        buf = self._pending + data
        index = buf.find(self.marker)
        if index >= 0:
            self.found = True
            self._pending = b""
            rest = buf[index + len(self.marker) :]
            if self.payload_end is None:
                self._keep_after(rest)
            else:
                self._feed_payload(rest)
            return buf[:index]
        keep = self._partial_suffix(buf)
        self._pending = buf[len(buf) - keep :] if keep else b""
        return buf[: len(buf) - keep] if keep else buf

    def _feed_payload(self, data: bytes) -> bytes:
        self._pending += data
        assert self.payload_end is not None
        end = self._pending.find(self.payload_end)
        if end >= 0:
            self.payload = self._pending[:end]
            rest = self._pending[end + len(self.payload_end) :]
            self._pending = b""
            self._keep_after(rest)
        return b""

    def _keep_after(self, data: bytes) -> None:
        room = max(0, self.after_limit - len(self.after))
        if len(data) > room:
            self.dropped += len(data) - room
            data = data[:room]
        self.after += data

    def _partial_suffix(self, buf: bytes) -> int:
        """Length of the longest suffix of ``buf`` that is a proper prefix of the marker."""
        first = self.marker[:1]
        start = max(0, len(buf) - len(self.marker) + 1)
        index = buf.find(first, start)
        while index >= 0:
            if self.marker.startswith(buf[index:]):
                return len(buf) - index
            index = buf.find(first, index + 1)
        return 0


@dataclass
class CommandEnd:
    exit_code: int
    cwd: str | None
    session_ended: bool = False  # bash itself exited; the session was reset


class BashSession:
    """One interactive bash process plus the pipes and files to drive it."""

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
        self.stdout_fd = -1
        self.stderr_fd = -1
        self._stdin_fd = -1
        self.exit_status: int | None = None
        self.token = os.urandom(12).hex()
        self.marker = b"\x1e\x1fSTGM" + self.token.encode()
        self.out_scan = MarkerScanner(self.marker, payload_end=b"\0")
        self.err_scan = MarkerScanner(self.marker)
        self.cmd_path = workdir / "command.sh"
        self.stdin_path = workdir / "stdin"
        self.rc_path = workdir / "bashrc"

    @property
    def pid(self) -> int:
        return self.proc.pid if self.proc else -1

    # -- life cycle ---------------------------------------------------------------------------
    def spawn(self) -> None:
        """Start bash; the caller must then read until :meth:`ready` (the first prompt)."""
        self.workdir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.token = os.urandom(12).hex()
        self.marker = b"\x1e\x1fSTGM" + self.token.encode()
        self.out_scan = MarkerScanner(self.marker, payload_end=b"\0")
        self.err_scan = MarkerScanner(self.marker)
        marker_literal = "".join(f"\\x{b:02x}" for b in self.marker)
        self.rc_path.write_text(
            _RC_TEMPLATE.format(marker=marker_literal, cmdfile=shlex.quote(str(self.cmd_path)))
        )
        cwd = self.cwd if os.path.isdir(self.cwd) else os.path.expanduser("~")
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        in_r, in_w = os.pipe()
        try:
            self.proc = subprocess.Popen(
                [self.shell, "--rcfile", str(self.rc_path), "--noediting", "-i"],
                stdin=in_r,
                stdout=out_w,
                stderr=err_w,
                cwd=cwd,
                env=self.env,
                start_new_session=True,
                close_fds=True,
            )
        finally:
            for fd in (out_w, err_w, in_r):
                os.close(fd)
        os.set_blocking(out_r, False)
        os.set_blocking(err_r, False)
        self.stdout_fd, self.stderr_fd, self._stdin_fd = out_r, err_r, in_w
        self.exit_status = None

    def close(self) -> None:
        """End bash and every process of its session; close the pipes."""
        if self.proc is not None and self.exit_status is None:
            procs.kill_session(self.proc.pid)
            self.reap(block=True)
        for fd in (self.stdout_fd, self.stderr_fd, self._stdin_fd):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self.stdout_fd = self.stderr_fd = self._stdin_fd = -1

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

    # -- commands -----------------------------------------------------------------------------
    def begin(self, code: str, stdin: bytes | None = None, stdin_file: Path | None = None) -> None:
        """Start running ``code``; its end shows as both markers arriving.

        Its stdin is /dev/null, or the bytes ``stdin``, or the file (FIFO) ``stdin_file``.
        """
        self.out_scan.reset()
        self.err_scan.reset()
        self.cmd_path.write_bytes(code.encode("utf-8", "surrogateescape") + b"\n")
        if stdin is not None:
            self.stdin_path.write_bytes(stdin)
            stdin_file = self.stdin_path
        if stdin_file is None:
            line = b'. "$__stg_f" </dev/null\n'
        else:
            line = b'. "$__stg_f" <' + shlex.quote(str(stdin_file)).encode() + b"\n"
        os.write(self._stdin_fd, line)

    def read(self, fd: int) -> tuple[bytes, bool]:
        """Read what is available on ``fd``: (output bytes, eof)."""
        try:
            data = os.read(fd, 65536)
        except BlockingIOError:
            return b"", False
        except OSError:
            return b"", True
        if not data:
            return b"", True
        scan = self.out_scan if fd == self.stdout_fd else self.err_scan
        return scan.feed(data), False

    def finished(self) -> CommandEnd | None:
        """The command's end once both markers arrived, else None."""
        if not (self.out_scan.found and self.err_scan.found and self.out_scan.payload is not None):
            return None
        payload = self.out_scan.payload.decode("utf-8", "surrogateescape")
        status, _, cwd = payload.partition(";")
        try:
            code = int(status)
        except ValueError:
            code = -1
        if cwd:
            self.cwd = cwd
        return CommandEnd(exit_code=code, cwd=cwd or None)

    def take_dropped(self) -> int:
        """Bytes of output between commands dropped past the limit since the last call."""
        dropped = self.out_scan.dropped + self.err_scan.dropped
        self.out_scan.dropped = self.err_scan.dropped = 0
        return dropped

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

    def interrupt(self) -> None:
        """Like Ctrl-C at a terminal: SIGINT to bash and its foreground processes."""
        if self.proc is not None:
            procs.signal_group(self.proc.pid, signal.SIGINT)

    def signal_shell(self, sig: int) -> None:
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, sig)
