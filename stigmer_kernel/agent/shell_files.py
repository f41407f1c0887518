"""The files of a bash session in its work directory: the scripts each bash runs, a command's
stdin, and the state a bash that exits saves for the next one (docs/architecture.md,
"The shell session"). The text of the scripts comes from :mod:`.shell_scripts`.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from .shell_scripts import RETURN_SCRIPT, STATE_DONE, exit_script, late_script, rc_file


class SessionFiles:
    """Where a session's files are, and writing, checking and removing them."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.rc_path = workdir / "bashrc"
        self.stdin_path = workdir / "stdin"
        self.exit_path = workdir / "exit.sh"
        self.late_path = workdir / "late.sh"
        self.state_path = workdir / "state.sh"
        self.traps_path = workdir / "traps.sh"
        #: The names of the running command's own variables, for the EXIT trap (empty if none).
        self.tmpenv_path = workdir / "tmpenv.sh"
        #: Sets ``$?`` without a fork (agent/last_command.py).
        self.return_path = workdir / "return.sh"

    def write_scripts(
        self, restore: bool, status: int, out_fd: int, err_fd: int, marker: str, end: str
    ) -> None:
        """The rc file and EXIT trap script of a new bash that reports with ``marker`` and ``end``
        (see :func:`~.shell_scripts.rc_file`); with ``restore``, the script that sets the saved
        options and traps again at its first prompt."""
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
                marker=marker,
                end=end,
                exit_sh=self.exit_path,
                state=self.state_path if restore else None,
                late_sh=self.late_path if restore else None,
                status=status,
            ),
            self.return_path: RETURN_SCRIPT,
        }
        if restore:
            text[self.late_path] = late_script(traps=self.traps_path, marker=marker, end=end)
        for path, content in text.items():
            path.write_text(content, encoding="utf-8", errors="surrogateescape")

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
