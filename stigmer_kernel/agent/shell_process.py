"""The bash process of a session: waiting for it, signalling it, reading its state in ``/proc``.

:class:`ShellProcess` holds the process handle that
:class:`~stigmer_kernel.agent.shell.BashSession` (its subclass) starts and replaces; nothing
here knows about the session's pipes or files.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
from pathlib import Path

from . import procs

#: The signal that makes bash end the command line whatever its traps do with SIGINT: bash runs
#: its EXIT trap (the state snapshot) for it, then dies of it; the agent restores the state.
ABORT_SIGNAL = signal.SIGUSR1

# read(2) and readv(2) syscall numbers by machine (as in stdin.py).
_READ_SYSCALLS = {0, 19, 63, 65}
_PF_EXITING = 0x4  # in the flags of /proc/PID/stat from the start of exit(), before its files close


class ShellProcess:
    """One bash process (``proc``), started in its own session, and its exit status."""

    def __init__(self, shell: str = "bash") -> None:
        self.shell = shell
        self.proc: subprocess.Popen[bytes] | None = None
        self.pidfd = -1  # readable when bash exits (Linux >= 5.3), else -1
        self.exit_status: int | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid if self.proc else -1

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.exit_status is None

    # -- its exit -----------------------------------------------------------------------------
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

    def exiting(self) -> bool:
        """True if bash is exiting (or gone): its descriptors closing is no sign of an exec."""
        try:
            with open(f"/proc/{self.pid}/stat", "rb") as handle:
                fields = handle.read().rsplit(b")", 1)[1].split()
            return fields[0] in (b"Z", b"X") or bool(int(fields[6]) & _PF_EXITING)
        except (OSError, IndexError, ValueError):
            return True

    # -- what it does -------------------------------------------------------------------------
    def reading(self) -> os.stat_result | None:
        """The file bash is blocked reading (in read(2) on one of its descriptors), else None."""
        if not self.alive:
            return None
        try:
            fields = Path(f"/proc/{self.pid}/syscall").read_text().split()
            if len(fields) < 2 or int(fields[0]) not in _READ_SYSCALLS:
                return None
            return os.stat(f"/proc/{self.pid}/fd/{int(fields[1], 16)}")
        except (OSError, ValueError):
            return None

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

    # -- signals ------------------------------------------------------------------------------
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
