"""Completion, inspection and completeness checks for bash code (Jupyter's complete,
inspect and is_complete requests).

Completion and inspection run *inside* the kernel's session (so functions, aliases, variables
and the cwd of the session count) as hidden commands whose output is parsed here; they leave
``$?`` as the last user command left it (their last line is ``(exit N)``: bash runs commands at
top level, where ``return`` is an error). ``is_complete`` only parses, with ``bash -n``.
"""

from __future__ import annotations

import re
import shlex
import subprocess
from typing import NamedTuple

#: Characters that end a word for completion purposes.
_WORD_RE = re.compile(r"[^\s;|&<>()`\"'=]*$")
#: Text before a word that puts the word in command position.
_COMMAND_POSITION_RE = re.compile(
    r"(^|[;&|(`{]|\$\(|\b(then|do|else|elif|sudo|env|exec|time|nohup|xargs|command))\s*$"
)
_MAX_MATCHES = 1000


# Not a frozen dataclass: an agent's start imports no dataclasses (with inspect, ast).
class CompletionQuery(NamedTuple):
    word: str
    cursor_start: int
    cursor_end: int
    kind: str  # "variable" | "command" | "file"


def completion_query(code: str, cursor_pos: int | None) -> CompletionQuery:
    cursor = len(code) if cursor_pos is None else max(0, min(cursor_pos, len(code)))
    before = code[:cursor]
    match = _WORD_RE.search(before)
    word = match.group(0) if match else ""
    start = cursor - len(word)
    prefix = before[:start]
    if word.startswith("$"):
        kind = "variable"
    elif "/" not in word and _COMMAND_POSITION_RE.search(prefix):
        kind = "command"
    else:
        kind = "file"
    return CompletionQuery(word, start, cursor, kind)


def completion_code(query: CompletionQuery, last_status: int) -> str:
    """Hidden bash code printing one candidate per line."""
    limit = f" | head -n {_MAX_MATCHES}"
    if query.kind == "variable":
        bare = query.word.lstrip("${")
        body = f"compgen -v -- {shlex.quote(bare)}{limit}"
    elif query.kind == "command":
        body = f"compgen -c -- {shlex.quote(query.word)} | sort -u{limit}"
    else:
        word = query.word
        body = (
            f"compgen -f -- {shlex.quote(word)}{limit} | while IFS= read -r __stg_x; do "
            'if [[ -d $__stg_x ]]; then printf "%s/\\n" "$__stg_x"; '
            'else printf "%s\\n" "$__stg_x"; fi; done'
        )
    return f"{body}\n{restore_status(last_status)}"


def completion_matches(query: CompletionQuery, output: str) -> list[str]:
    seen: dict[str, None] = {}
    for line in output.splitlines():
        if not line:
            continue
        if query.kind == "variable":
            line = ("${" if query.word.startswith("${") else "$") + line
        seen.setdefault(line, None)
    return list(seen)


def word_at(code: str, cursor_pos: int | None) -> str:
    """The whole word under (or just before) the cursor."""
    cursor = len(code) if cursor_pos is None else max(0, min(cursor_pos, len(code)))
    left = re.search(r"[\w.\-:+/]*$", code[:cursor])
    right = re.match(r"[\w.\-:+/]*", code[cursor:])
    return (left.group(0) if left else "") + (right.group(0) if right else "")


def inspect_code(word: str, last_status: int) -> str:
    """Hidden bash code describing ``word``: type, help for builtins, value of variables."""
    quoted = shlex.quote(word)
    return (
        f"__stg_w={quoted}\n"
        'if type -a -- "$__stg_w" 2>/dev/null; then\n'
        '  case "$(type -t -- "$__stg_w")" in\n'
        '    builtin|keyword) echo; help -- "$__stg_w" 2>/dev/null;;\n'
        "    function) :;;\n"
        "    file) if command -v man >/dev/null 2>&1; then echo; "
        'MANWIDTH=80 man -P cat -- "$__stg_w" 2>/dev/null | head -n 60; fi;;\n'
        "  esac\n"
        'elif declare -p -- "$__stg_w" >/dev/null 2>&1; then declare -p -- "$__stg_w"\n'
        "else echo __stg_not_found__\n"
        "fi\n"
        "unset __stg_w\n"
        f"{restore_status(last_status)}"
    )


def restore_status(status: int) -> str:
    """The last line of hidden code: it leaves ``$?`` as the user's last command left it."""
    return f"(\\builtin exit {status & 0xFF})"


def inspect_result(output: str) -> tuple[bool, str]:
    text = output.strip("\n")
    if text == "__stg_not_found__" or not text:
        return False, ""
    return True, text + "\n"


def is_complete(code: str, shell: str = "bash") -> str:
    """``complete``, ``incomplete`` or ``invalid``, as Jupyter's is_complete_reply wants."""
    stripped = code.rstrip("\n")
    if re.search(r"(?<!\\)(\\\\)*\\$", stripped):
        return "incomplete"  # line continuation
    try:
        proc = subprocess.run(
            [shell, "-n"], input=code.encode(), capture_output=True, timeout=5, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    err = proc.stderr.decode(errors="replace")
    if "unexpected end of file" in err or "here-document" in err or "unexpected EOF" in err:
        return "incomplete"
    if proc.returncode != 0:
        return "invalid"
    return "complete"
