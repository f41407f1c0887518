"""Auto mode: decide, per command, whether it runs locally or in the sandbox.

The command is parsed as a shell would split it — pipelines, ``&&``, ``||``, ``;``, ``&``,
subshells, command substitutions, ``env VAR=x cmd``, leading assignments, quoting — and every
simple command in it is checked against the rules below. The first rule that matches sends the
whole command to the sandbox; when none does, it runs locally. ``echo pipeline`` and
``cat pip.log`` stay local (words, not substrings); ``cd app && npm install`` goes to the sandbox.

Rules (documented as a table in docs/sandbox/execution-modes.md):

* ``package-manager``: pip, pip3, ``python -m pip``, ``uv pip``/``uv add``, poetry add/install,
  conda/mamba install, npm/yarn/pnpm install/add (``npm i -g``), apt/apt-get, yum/dnf, apk,
  brew, gem, ``cargo install``, ``go install``/``go get``;
* ``requirements``: a requirements file came with the request;
* ``privilege``: sudo, doas, su;
* ``system-write``: a write to a system path (redirection, tee, cp/mv/rm/…, ``sed -i``);
* ``download-exec``: a download piped into (or substituted into) an interpreter.

Sticky escalation: a command that *changed* the sandbox (an install, a removal, a system write,
downloaded code run, privileges asked for; not a query such as ``pip --version`` or
``pip list``) escalates its kernel. From then on every command of that kernel follows it to the
sandbox (rule ``sticky``), so ``pip install six`` then ``python3 -c 'import six'`` uses what was
installed where it was installed, in one shell. The only exception is rule ``host-read``: a line
of read-only file tools (``cat``, ``ls``, ``grep``...) naming the user's own files outside the
workspace (``cat ~/.gitconfig``), which the sandbox cannot see, stays on the host. The
escalation lasts for the kernel's life (a restart of the kernel ends it); ``sticky=False``
(per request, or the ``auto_sticky`` setting) decides a command by the rules alone.
"""

from __future__ import annotations

import dataclasses
import os
import posixpath
import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass

#: Where writes change the system rather than the project.
SYSTEM_PATHS = (
    "/etc",
    "/usr",
    "/bin",
    "/sbin",
    "/lib",
    "/lib64",
    "/opt",
    "/boot",
    "/root",
    "/sys",
    "/proc",
    "/var/lib",
    "/var/cache",
    "/var/log",
    "/srv",
)
_OPERATORS = {";", "&&", "||", "|", "|&", "&", "(", ")", "{", "}", "\n", "!"}
_REDIRECTS = {">", ">>", ">|", "&>", "&>>", "<>"}
_WRAPPERS = {
    "command",
    "exec",
    "nohup",
    "time",
    "nice",
    "ionice",
    "stdbuf",
    "timeout",
    "xargs",
    "builtin",
    "then",
    "do",
    "else",
    "elif",
    "if",
    "while",
    "until",
}
_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\[[^\]]*\])?\+?=")
_PIP = re.compile(r"^pip(\d+(\.\d+)?)?$")
_PYTHON = re.compile(r"^python(\d+(\.\d+)?)?$")
_ALWAYS_SANDBOX = {
    "apt",
    "apt-get",
    "aptitude",
    "dpkg",
    "yum",
    "dnf",
    "microdnf",
    "apk",
    "zypper",
    "pacman",
    "snap",
    "flatpak",
}
_INSTALL_WORDS = {
    "install",
    "i",
    "add",
    "ci",
    "uninstall",
    "remove",
    "rm",
    "update",
    "upgrade",
    "create",
    "sync",
    "tap",
    "link",
    "reinstall",
}
_INTERPRETERS = {
    "sh",
    "bash",
    "zsh",
    "dash",
    "ksh",
    "fish",
    "python",
    "python3",
    "perl",
    "ruby",
    "node",
    "sudo",
    "source",
    ".",
}
_DOWNLOADERS = {"curl", "wget", "fetch", "aria2c"}
_SHELLS = {"sh", "bash", "zsh", "dash", "ksh"}
_WRITERS = {
    "cp",
    "mv",
    "rm",
    "rmdir",
    "mkdir",
    "ln",
    "install",
    "chmod",
    "chown",
    "chgrp",
    "touch",
    "truncate",
    "dd",
    "rsync",
    "tee",
    "unlink",
}


#: Package-manager subcommands that only look (``pip list``, ``apt show``): they run in the
#: sandbox but do not escalate the kernel. So does a manager named with no subcommand at all
#: (``pip --version``, ``dpkg -l``).
_QUERIES = {
    "list",
    "show",
    "freeze",
    "check",
    "help",
    "search",
    "index",
    "inspect",
    "debug",
    "info",
    "policy",
    "hash",
    "completion",
}
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
#: Longest command text an escalation quotes in a reason.
_QUOTE_LIMIT = 80


@dataclass(frozen=True)
class Decision:
    mode: str  # "local" | "sandbox"
    rule: str  # which rule decided ("default" when none matched)
    reason: str  # one sentence for humans
    escalates: bool = True  # sandbox: it may change the sandbox, so later commands follow it

    def to_dict(self) -> dict[str, str]:
        return {"mode": self.mode, "rule": self.rule, "reason": self.reason}


@dataclass(frozen=True)
class Escalation:
    """The command that first changed an auto kernel's sandbox: later ones follow it there."""

    command: str  # its text, shortened for messages ("": not known, e.g. after a server restart)
    rule: str
    reason: str

    @classmethod
    def of(cls, code: str, decision: Decision) -> Escalation:
        line = " ".join(code.split())
        if len(line) > _QUOTE_LIMIT:
            line = line[: _QUOTE_LIMIT - 1] + "\u2026"
        return cls(line, decision.rule, decision.reason)

    @classmethod
    def from_dict(cls, data: object) -> Escalation | None:
        """The escalation a kernel's info or record holds (None when there is none)."""
        if not isinstance(data, Mapping):
            return None
        fields = [data.get(k) for k in ("command", "rule", "reason")]
        if not all(isinstance(f, str) for f in fields):
            return None
        return cls(*(str(f) for f in fields))

    def to_dict(self) -> dict[str, str]:
        return {"command": self.command, "rule": self.rule, "reason": self.reason}

    @property
    def by(self) -> str:
        """What escalated the kernel, as a reason quotes it."""
        return f"`{self.command}`" if self.command else "a command before the server restarted"


LOCAL = Decision("local", "default", "no sandbox rule matched: read-only or everyday command")


def decide(
    code: str,
    requirements: bool = False,
    *,
    escalation: Escalation | None = None,
    sticky: bool = True,
    workspace: str | None = None,
) -> Decision:
    """Where ``code`` should run in auto mode, and why.

    ``escalation``: what took the kernel to the sandbox, if anything did; with ``sticky`` its
    later commands follow (rule ``sticky``) unless they only read the user's files outside
    ``workspace`` (the kernel's, on the host), rule ``host-read``.
    """
    found = _decide(code, requirements)
    if found.mode == "sandbox" or escalation is None:
        return found
    if not sticky:
        return Decision(
            "local",
            found.rule,
            f"{found.reason} (the kernel escalated by {escalation.by}, but stickiness is off)",
        )
    read = _host_read(code, workspace)
    if read is not None:
        return Decision(
            "local",
            "host-read",
            f"it only reads {read}, outside the workspace, which the sandbox cannot see",
        )
    return Decision(
        "sandbox",
        "sticky",
        f"kernel escalated by {escalation.by}, so later commands follow it to the sandbox",
    )


def _decide(code: str, requirements: bool = False) -> Decision:
    """The rules alone."""
    if requirements:
        return Decision("sandbox", "requirements", "a requirements file came with the request")
    query: Decision | None = None  # a sandbox-bound query, while no change is found
    for inner in _raw_substitutions(code):
        found = _decide(inner)
        if found.mode == "sandbox":
            found = dataclasses.replace(found, reason=f"{found.reason} (in a command substitution)")
            if found.escalates:
                return found
            query = query or found
            continue
        if _first_word(inner) in _DOWNLOADERS and re.search(
            r"(^|[;&|(\s])(sh|bash|zsh|python3?|perl|ruby|node)\s+(-c\s+)?[\"']?(\$\(|`)", code
        ):
            return Decision(
                "sandbox",
                "download-exec",
                "it runs downloaded code ($(curl ...) given to an interpreter)",
            )
    try:
        tokens = _tokens(code)
    except ValueError:
        # Unbalanced quotes and the like: bash rejects it before running anything.
        return query or Decision(
            "local", "default", "the command does not parse; the shell will say why"
        )
    return _prefer(query, _check(tokens)) or LOCAL


def _prefer(first: Decision | None, later: Decision | None) -> Decision | None:
    """The first sandbox decision of a line, unless only a later one escalates."""
    if later is not None and (later.escalates or first is None):
        return later
    return first


def _raw_substitutions(code: str) -> list[str]:
    """Text inside backticks and innermost ``$(...)``, found before any tokenizing."""
    return [
        t for t in re.findall(r"`([^`]*)`", code) + re.findall(r"\$\(([^()]*)\)", code) if t.strip()
    ]


def _first_word(code: str) -> str:
    words = code.split()
    return words[0].rsplit("/", 1)[-1] if words else ""


def _tokens(code: str) -> list[str]:
    lexer = shlex.shlex(_strip_comments(code), posix=True, punctuation_chars=";&|()<>")
    lexer.whitespace = " \t\r"
    lexer.whitespace_split = True
    lexer.commenters = ""
    out: list[str] = []
    for token in lexer:
        out.extend(_split_newlines(token))
    return out


def _strip_comments(code: str) -> str:
    """``code`` without shell comments: a ``#`` that starts a word, outside quotes, to the end
    of its line (``x.sh#v1`` and ``"#"`` are not comments)."""
    out: list[str] = []
    quote = ""
    i = 0
    while i < len(code):
        ch = code[i]
        if quote:
            if ch == "\\" and quote == '"' and i + 1 < len(code):
                out.append(code[i : i + 2])
                i += 2
                continue
            if ch == quote:
                quote = ""
        elif ch == "\\" and i + 1 < len(code):
            out.append(code[i : i + 2])
            i += 2
            continue
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or code[i - 1] in " \t\n;&|()"):
            end = code.find("\n", i)
            i = len(code) if end < 0 else end
            continue
        out.append(ch)
        i += 1
    return "".join(out)


def _split_newlines(token: str) -> list[str]:
    if "\n" not in token or token.strip() == "":
        return ["\n"] if "\n" in token else [token]
    parts: list[str] = []
    for index, piece in enumerate(token.split("\n")):
        if index:
            parts.append("\n")
        if piece:
            parts.append(piece)
    return parts


def _check(tokens: list[str]) -> Decision | None:
    query: Decision | None = None
    pipeline: list[list[str]] = []
    command: list[str] = []
    expect_redirect_target = False
    for token in tokens:
        if expect_redirect_target:
            expect_redirect_target = False
            if token.startswith(SYSTEM_PATHS) and _is_system(token):
                return Decision("sandbox", "system-write", f"it writes to the system path {token}")
            continue
        if token in _REDIRECTS or (token.startswith(">") and set(token) <= {">", "&", "|"}):
            expect_redirect_target = True
            continue
        if token in ("|", "|&"):
            pipeline.append(command)
            command = []
            continue
        if token in _OPERATORS or token.startswith(("&", ";")):
            pipeline.append(command)
            found = _check_pipeline(pipeline)
            if found and found.escalates:
                return found
            query = query or found
            pipeline, command = [], []
            continue
        if token in ("<", "<<", "<<<") or re.fullmatch(r"\d+", token):
            continue
        command.append(token)
    pipeline.append(command)
    return _prefer(query, _check_pipeline(pipeline))


def _check_pipeline(pipeline: list[list[str]]) -> Decision | None:
    words = [_command_words(c) for c in pipeline if c]
    words = [w for w in words if w]
    query: Decision | None = None
    for command in words:
        found = _check_command(command)
        if found and found.escalates:
            return found
        query = query or found
    for index, command in enumerate(words[:-1]):
        if command[0] in _DOWNLOADERS and any(c[0] in _INTERPRETERS for c in words[index + 1 :]):
            later = next(c[0] for c in words[index + 1 :] if c[0] in _INTERPRETERS)
            return Decision(
                "sandbox", "download-exec", f"it pipes a download ({command[0]}) into {later}"
            )
    return query


def _command_words(command: list[str]) -> list[str]:
    """The words of a simple command after assignments and wrappers (env, nohup, time...)."""
    words = list(command)
    while words:
        head = words[0]
        if _ASSIGNMENT.match(head):
            words.pop(0)
        elif head == "env":
            words.pop(0)
            while words and (words[0].startswith("-") or _ASSIGNMENT.match(words[0])):
                option = words.pop(0)
                if option in ("-u", "-C", "--unset", "--chdir", "-S") and words:
                    words.pop(0)
        elif head in _WRAPPERS:
            words.pop(0)
            while words and words[0].startswith("-"):
                words.pop(0)
            if head == "timeout" and words and re.fullmatch(r"[\d.]+[smhd]?", words[0]):
                words.pop(0)
        else:
            break
    if words:
        words[0] = words[0].rsplit("/", 1)[-1]  # /usr/bin/pip -> pip
    return words


def _is_system(path: str) -> bool:
    return any(path == p or path.startswith(p + "/") for p in SYSTEM_PATHS)


def _check_command(words: list[str]) -> Decision | None:
    name, args = words[0], words[1:]
    positional = [a for a in args if not a.startswith("-")]
    first = positional[0] if positional else ""
    if name in ("sudo", "doas", "su"):
        return Decision("sandbox", "privilege", f"it asks for privileges ({name})")
    if _PIP.match(name) or name in _ALWAYS_SANDBOX:
        changes = bool(first) and first not in _QUERIES  # pip --version, pip list: queries
        return Decision("sandbox", "package-manager", f"{name} is a package manager", changes)
    if _PYTHON.match(name) and "-m" in args:
        at = args.index("-m") + 1
        module = args[at] if at < len(args) else ""
        if module in ("pip", "ensurepip"):
            rest = [a for a in args[at + 1 :] if not a.startswith("-")]
            changes = module == "ensurepip" or (bool(rest) and rest[0] not in _QUERIES)
            return Decision(
                "sandbox", "package-manager", f"{name} -m {module} installs packages", changes
            )
    if name == "uv" and first in ("pip", "add", "sync", "tool"):
        changes = not (first == "pip" and len(positional) > 1 and positional[1] in _QUERIES)
        return Decision("sandbox", "package-manager", f"uv {first} installs packages", changes)
    if name == "pipx" and first in _INSTALL_WORDS | {"inject", "run", "runpip"}:
        return Decision("sandbox", "package-manager", f"pipx {first} installs packages")
    if name == "poetry" and first in ("add", "install", "update", "remove"):
        return Decision("sandbox", "package-manager", f"poetry {first} installs packages")
    if name in ("conda", "mamba", "micromamba") and first in _INSTALL_WORDS:
        return Decision("sandbox", "package-manager", f"{name} {first} changes environments")
    if name in ("npm", "yarn", "pnpm", "bun") and (
        first in _INSTALL_WORDS
        or "-g" in args
        or "--global" in args
        or (name == "yarn" and not args)
    ):
        what = f"{name} {first}" if first else name
        return Decision("sandbox", "package-manager", f"{what} installs packages")
    if name in ("brew", "gem") and first in _INSTALL_WORDS:
        return Decision("sandbox", "package-manager", f"{name} {first} installs packages")
    if name == "cargo" and first == "install":
        return Decision("sandbox", "package-manager", "cargo install installs binaries")
    if name == "go" and first in ("install", "get"):
        return Decision("sandbox", "package-manager", f"go {first} installs packages")
    if name in ("bundle", "bundler", "deno") and first in ("install", "add", "update"):
        return Decision("sandbox", "package-manager", f"{name} {first} installs packages")
    if name == "rustup" and any(a in ("install", "add", "update") for a in positional):
        return Decision("sandbox", "package-manager", "rustup installs toolchains")
    if name == "git" and first == "clone":
        target = next((a for a in positional[1:] if _is_system(a)), None)
        if target:
            return Decision(
                "sandbox", "system-write", f"git clone writes to the system path {target}"
            )
    if name in _WRITERS or (name == "sed" and any(a.startswith("-i") for a in args)):
        target = next((a for a in args if _is_system(a)), None)
        if target:
            return Decision("sandbox", "system-write", f"{name} writes to the system path {target}")
    if name in _SHELLS and "-c" in args and args.index("-c") + 1 < len(args):
        inner = _decide(args[args.index("-c") + 1])  # sh -c "pip install x"
        if inner.mode == "sandbox":
            return Decision(
                "sandbox", inner.rule, f"{inner.reason} (in {name} -c)", inner.escalates
            )
    if name in _INTERPRETERS and any(s.startswith("<(") for s in args):
        return Decision("sandbox", "download-exec", f"{name} runs a process substitution")
    return None


def _host_read(code: str, workspace: str | None) -> str | None:
    """The first of the user's own paths outside the workspace that ``code`` names, if all it
    does is read files with :data:`_READERS` (no substitution, no redirect but to /dev/null)."""
    if re.search(r"\$\(|`|<\(|>\(", code):
        return None
    try:
        tokens = _tokens(code)
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
        elif token in _REDIRECTS or (token.startswith(">") and set(token) <= {">", "&", "|"}):
            redirect = True
        elif token in ("<", "<<", "<<<"):
            return None
        elif token in _OPERATORS or token.startswith(("&", ";")):
            words = _command_words(command)
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


def explain(
    code: str,
    requirements: bool = False,
    *,
    escalation: Escalation | None = None,
    sticky: bool = True,
    workspace: str | None = None,
) -> str:
    """``decide``'s answer as ``stigmer run --explain`` prints it."""
    decision = decide(code, requirements, escalation=escalation, sticky=sticky, workspace=workspace)
    return f"{decision.mode}: {decision.reason} (rule: {decision.rule})"
