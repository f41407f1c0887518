"""What a command leaves to the next one: ``$?``, ``PIPESTATUS`` and ``$_`` (docs/architecture.md,
"The shell session").

bash sets all three from the last command it ran, which for a session's line is the wrapper
(``eval CODE``: ``$_`` would be the code). So a user command's code gets one more line inside
its ``eval``, :data:`~.shell_scripts.CAPTURE`, which runs no command and saves them in
variables; the line ends with ``builtin true "$__stgL"``, which sets ``$_`` (PROMPT_COMMAND
keeps it for the next line); the end report sends the status and the pipeline's statuses and
unsets the variables; the next user command's line starts with :meth:`LastCommand.replay`,
builtins that set ``$?`` (and ``PIPESTATUS``) again and keep ``$_``.

:func:`capturable` says when the line must not be added: where a user would see it (``set -v``
echoes what `eval` reads; a DEBUG or RETURN trap would run for the builtins) or where it would
not be a line of its own (an unterminated here-document, a line continued with ``\\``, ``|``,
``&&``). Then the command's ``$_`` is its code, as it was before.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from .shell_scripts import CAPTURE, CAPTURE_PIPES, KEEP_LAST, KEPT_LAST, LAST_PLAIN, LAST_TESTED

_NOT_DIGITS = re.compile(r"[^0-9]")
_CONTINUED = re.compile(r"(\\|\||&&|\|&)[ \t]*$")
_HEREDOC = re.compile(r"(?<!<)<<-?[ \t]*(['\"]?)([^\s;&|<>()'\"]+)\1")
# What the capture or the replay would meet from a user: a function named `builtin`, `enable`
# (builtins disabled), `set -v` or `set -o verbose`...
_UNSAFE = re.compile(
    r"\bbuiltin[ \t]*\([ \t]*\)|\bfunction[ \t]+builtin\b|\benable\b|\bverbose\b"
    r"|\bset\b[^;&|\n]*[ \t]-[a-zA-Z]*v"
)
# ...and, for the rest of the session, a DEBUG or RETURN trap (it would run for the builtins
# before and after the code) and a BASH_ALIASES unset or replaced (CAPTURE expands a key of it).
_LASTING = re.compile(r"DEBUG|RETURN|BASH_ALIASES|\bunset\b[^\n]*\bcompgen\b")


def capturable(code: str) -> bool:
    """True if :data:`~.shell_scripts.CAPTURE` can follow ``code`` on a line of its own, seen
    by no one."""
    if _UNSAFE.search(code):
        return False
    lines = [line for line in code.split("\n") if line.strip()]
    if lines and _CONTINUED.search(lines[-1]):
        return False
    return "<<" not in code or _heredocs_closed(code)


def _heredocs_closed(code: str) -> bool:
    """Every here-document operator is followed, on a later line, by its delimiter (the usual
    case); anything else (``<<`` in a string, ``$((1<<2))``) counts as unterminated."""
    lines = code.split("\n")
    row = 0
    for number, line in enumerate(lines):
        if number < row:
            continue  # (a here-document's body)
        for match in _HEREDOC.finditer(line):
            word, strip = match.group(2), match.group().startswith("<<-")
            row = max(row, number + 1)
            while row < len(lines) and (lines[row].lstrip("\t") if strip else lines[row]) != word:
                row += 1
            if row >= len(lines):
                return False
            row += 1
    return True


class LastCommand:
    """``$?`` after a user command and, when it ended with a pipeline CAPTURE saw,
    ``PIPESTATUS`` and whether ``pipefail`` was on."""

    __slots__ = ("pipefail", "pipestatus", "status")

    def __init__(
        self, status: int, pipestatus: tuple[int, ...] = (), pipefail: bool = False
    ) -> None:
        self.status = status
        self.pipestatus = pipestatus
        self.pipefail = pipefail

    def replay(self, script: Path, pipeline: bool) -> str:
        """Builtins (ended by ``; ``) that set ``$?`` and, with ``pipeline``, ``PIPESTATUS``
        as they were, keeping ``$_``; as the first command of an ``&&`` list a failure runs no
        ERR trap and no ``set -e`` exit. No process is forked but for a pipeline's (the
        status, above 1, comes from ``return`` in ``script``); empty for a plain success."""
        pipes = self.pipestatus
        if pipeline and len(pipes) > 1:
            last = next((p for p in reversed(pipes) if p), 0) if self.pipefail else pipes[-1]
            if self.status in (last, int(not last)):
                run = " | ".join(f"(\\builtin exit {p})" for p in pipes)
                return self._finish(run, self.status != last)
        single = pipes[0] if len(pipes) == 1 else self.status
        if self.status not in (single, int(not single)):
            single = self.status
        if single == self.status == 0:
            return ""  # (the line ended with `builtin true`, or with the code's own success)
        if single in (0, 1):
            run = f'\\builtin {"false" if single else "true"} "$_"'
        else:
            run = f'\\builtin . {shlex.quote(str(script))} {single} "$_"'
        return self._finish(run, single != self.status)

    def _finish(self, run: str, negated: bool) -> str:
        tail = ' && \\builtin true "$_"' if self.status else ""  # (runs only after a success)
        return f"{'! ' if negated else ''}{run}{tail}; "


class Carry:
    """One session's ``$?``, ``PIPESTATUS`` and ``$_`` from a user command to the next (hidden
    lines of the agent's own, between them, keep ``$_``; the next user command's line sets
    ``$?`` again)."""

    def __init__(self, script: Path) -> None:
        self.script = script  # RETURN_SCRIPT's file
        self.capturing = False  # the running line's code is followed by CAPTURE
        self.user = False  # ...and is a user command's
        self.left: LastCommand | None = None  # what the last user command left
        self.verbose = False  # `set -v` was on at the last end report
        self.off = False  # no capture or replay in this session any more (see _LASTING)
        self.pipes = False  # a code mentioned PIPESTATUS: replay pipelines exactly (forks)

    def line(
        self, code: str, user: bool, builtin_ok: bool, tested: bool
    ) -> tuple[str, str, str | None]:
        """What goes before the line of ``code``, the code to run, and the line's tail
        (None: the usual)."""
        self.capturing, self.user = False, user
        if user:
            self.off = self.off or _LASTING.search(code) is not None
            self.pipes = self.pipes or "PIPESTATUS" in code
        if not builtin_ok or self.off:
            self.left = None if user else self.left
            return "", code, None
        if not user:
            return KEEP_LAST, code, KEPT_LAST
        left, self.left = self.left, None
        head = "" if left is None else left.replay(self.script, self.pipes)
        if self.verbose or not capturable(code):  # (`$_` after it: empty, not the code)
            return head, code, LAST_TESTED if tested else None
        self.capturing = True
        # (A pipeline's statuses cost ~12 microseconds more: for code with a pipeline or a `!`.)
        code += CAPTURE_PIPES if self.pipes or "|" in code or "!" in code else CAPTURE
        return head, code, LAST_TESTED if tested else LAST_PLAIN

    def reported(self, status: int, pipes: str) -> None:
        """The end report of a user line: its ``status`` and what CAPTURE_PIPES saw (the
        pipeline's length, its statuses joined by IFS, SHELLOPTS), if it ran."""
        if not self.user:
            return
        count, _, rest = pipes.partition(";")
        joined, _, options = rest.rpartition(";")
        statuses = _NOT_DIGITS.split(joined)
        if self.capturing and count == str(len(statuses)) and all(statuses):
            pipestatus = tuple(int(p) & 0xFF for p in statuses)
            self.left = LastCommand(status, pipestatus, "pipefail" in options.split(":"))
        else:
            self.left = LastCommand(status)

    def restarted(self) -> None:
        """A new bash: its ``$?`` is set already."""
        self.left, self.user, self.capturing = None, False, False
