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
"""

from __future__ import annotations

import re
import shlex
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


@dataclass(frozen=True)
class Decision:
    mode: str  # "local" | "sandbox"
    rule: str  # which rule decided ("default" when none matched)
    reason: str  # one sentence for humans

    def to_dict(self) -> dict[str, str]:
        return {"mode": self.mode, "rule": self.rule, "reason": self.reason}


LOCAL = Decision("local", "default", "no sandbox rule matched: read-only or everyday command")


def decide(code: str, requirements: bool = False) -> Decision:
    """Where ``code`` should run in auto mode, and why."""
    if requirements:
        return Decision("sandbox", "requirements", "a requirements file came with the request")
    for inner in _raw_substitutions(code):
        found = decide(inner)
        if found.mode == "sandbox":
            return Decision("sandbox", found.rule, f"{found.reason} (in a command substitution)")
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
        return Decision("local", "default", "the command does not parse; the shell will say why")
    return _check(tokens) or LOCAL


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
            if found:
                return found
            pipeline, command = [], []
            continue
        if token in ("<", "<<", "<<<") or re.fullmatch(r"\d+", token):
            continue
        command.append(token)
    pipeline.append(command)
    return _check_pipeline(pipeline)


def _check_pipeline(pipeline: list[list[str]]) -> Decision | None:
    words = [_command_words(c) for c in pipeline if c]
    words = [w for w in words if w]
    for command in words:
        found = _check_command(command)
        if found:
            return found
    for index, command in enumerate(words[:-1]):
        if command[0] in _DOWNLOADERS and any(c[0] in _INTERPRETERS for c in words[index + 1 :]):
            later = next(c[0] for c in words[index + 1 :] if c[0] in _INTERPRETERS)
            return Decision(
                "sandbox", "download-exec", f"it pipes a download ({command[0]}) into {later}"
            )
    return None


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
    first = next((a for a in args if not a.startswith("-")), "")
    pm = Decision("sandbox", "package-manager", f"{name} is a package manager")
    if name in ("sudo", "doas", "su"):
        return Decision("sandbox", "privilege", f"it asks for privileges ({name})")
    if _PIP.match(name) or name in _ALWAYS_SANDBOX:
        return pm
    if _PYTHON.match(name) and "-m" in args:
        module = args[args.index("-m") + 1] if args.index("-m") + 1 < len(args) else ""
        if module in ("pip", "ensurepip"):
            return Decision("sandbox", "package-manager", f"{name} -m {module} installs packages")
    if name == "uv" and first in ("pip", "add", "sync", "tool"):
        return Decision("sandbox", "package-manager", f"uv {first} installs packages")
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
    if name in _WRITERS or (name == "sed" and any(a.startswith("-i") for a in args)):
        target = next((a for a in args if _is_system(a)), None)
        if target:
            return Decision("sandbox", "system-write", f"{name} writes to the system path {target}")
    if name in _SHELLS and "-c" in args and args.index("-c") + 1 < len(args):
        inner = decide(args[args.index("-c") + 1])  # sh -c "pip install x"
        if inner.mode == "sandbox":
            return Decision("sandbox", inner.rule, f"{inner.reason} (in {name} -c)")
    if name in _INTERPRETERS and any(s.startswith("<(") for s in args):
        return Decision("sandbox", "download-exec", f"{name} runs a process substitution")
    return None


def explain(code: str, requirements: bool = False) -> str:
    decision = decide(code, requirements)
    return f"{decision.mode}: {decision.reason} (rule: {decision.rule})"
