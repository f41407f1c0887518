"""Rule ``host-read``: on an escalated kernel, a line that only reads the user's own files
outside the workspace (``cat ~/.gitconfig``), which the sandbox cannot see, stays on the host.
"""

from __future__ import annotations

import os
import posixpath
import re

from .words import OPERATORS, REDIRECTS, command_words, lex

#: Read-only file tools: a line made only of these, naming the user's files outside the
#: workspace, stays on the host on an escalated kernel (rule ``host-read``).
_READERS = {
    "cat",
    "ls",
    "head",
    "tail",
    "wc",
    "stat",
    "file",
    "less",
    "more",
    "grep",
    "egrep",
    "fgrep",
    "rg",
    "diff",
    "cmp",
    "du",
    "tree",
    "find",
    "realpath",
    "readlink",
    "md5sum",
    "sha1sum",
    "sha256sum",
}
_FIND_ACTIONS = {"-exec", "-execdir", "-ok", "-okdir", "-delete", "-fprint", "-fprintf", "-fls"}
#: Where the user's own files live, outside any project: what ``host-read`` keeps on the host.
_USER_ROOTS = ("/home", "/Users", "/mnt", "/media", "/Volumes")


def host_read(code: str, workspace: str | None) -> str | None:
    """The first of the user's own paths outside the workspace that ``code`` names, if all it
    does is read files with :data:`_READERS` (no substitution, no redirect but to /dev/null)."""
    if re.search(r"\$\(|`|<\(|>\(", code):
        return None
    try:
        tokens = lex(code)
    except ValueError:
        return None
    home = os.path.expanduser("~")
    named: str | None = None
    command: list[str] = []
    redirect = False
    for token in [*tokens, ";"]:
        if redirect:
            if token != "/dev/null":
                return None
            redirect = False
        elif token in REDIRECTS or (token.startswith(">") and set(token) <= {">", "&", "|"}):
            redirect = True
        elif token in ("<", "<<", "<<<"):
            return None
        elif token in OPERATORS or token.startswith(("&", ";")):
            words = command_words(command)
            command = []
            if not words:
                continue
            if words[0] not in _READERS or (
                words[0] == "find" and _FIND_ACTIONS.intersection(words)
            ):
                return None
            for arg in words[1:]:
                where = _where(arg, workspace, home)
                if where == "other":
                    return None
                if where == "user" and named is None:
                    named = arg
        elif not re.fullmatch(r"\d+", token):
            command.append(token)
    return named


def _where(arg: str, workspace: str | None, home: str) -> str:
    """``arg`` of a read-only tool: "user" (the user's files outside the workspace), "shared"
    (inside the workspace, seen alike on both sides), "relative" (an option, a pattern or a
    path from the cwd) or "other" (a place the sandbox has its own of, or unknown)."""
    if arg.startswith("-"):
        return "relative"
    for prefix in ("~/", "$HOME/", "${HOME}/"):
        if arg.startswith(prefix):
            arg = posixpath.join(home, arg[len(prefix) :])
            break
    else:
        if arg in ("~", "$HOME", "${HOME}"):
            arg = home
        elif arg.startswith("~"):
            return "user"  # ~name: another user's home
    if "$" in arg:
        return "other"
    if not arg.startswith("/"):
        return "relative"
    path = posixpath.normpath(arg)
    if workspace and _under(path, workspace):
        return "shared"
    if (home not in ("", "/") and _under(path, home)) or any(_under(path, r) for r in _USER_ROOTS):
        return "user"
    return "other"


def _under(path: str, root: str) -> bool:
    root = root.rstrip("/")
    return path == root or path.startswith(root + "/")
