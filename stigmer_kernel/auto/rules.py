"""The per-command rules of auto mode (listed in :mod:`stigmer_kernel.auto` and in
docs/sandbox/execution-modes.md): which simple commands send a line to the sandbox, and whether
they change it (a :class:`~.decision.Decision` that ``escalates``) or only look.
"""

from __future__ import annotations

import dataclasses
import re

from .decision import LOCAL, Decision
from .words import OPERATORS, REDIRECTS, command_words, first_word, lex, raw_substitutions

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


def by_rules(code: str, requirements: bool = False) -> Decision:
    """Where ``code`` runs by the rules alone (no sticky escalation)."""
    if requirements:
        return Decision("sandbox", "requirements", "a requirements file came with the request")
    query: Decision | None = None  # a sandbox-bound query, while no change is found
    for inner in raw_substitutions(code):
        found = by_rules(inner)
        if found.mode == "sandbox":
            found = dataclasses.replace(found, reason=f"{found.reason} (in a command substitution)")
            if found.escalates:
                return found
            query = query or found
            continue
        if first_word(inner) in _DOWNLOADERS and re.search(
            r"(^|[;&|(\s])(sh|bash|zsh|python3?|perl|ruby|node)\s+(-c\s+)?[\"']?(\$\(|`)", code
        ):
            return Decision(
                "sandbox",
                "download-exec",
                "it runs downloaded code ($(curl ...) given to an interpreter)",
            )
    try:
        tokens = lex(code)
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
        if token in REDIRECTS or (token.startswith(">") and set(token) <= {">", "&", "|"}):
            expect_redirect_target = True
            continue
        if token in ("|", "|&"):
            pipeline.append(command)
            command = []
            continue
        if token in OPERATORS or token.startswith(("&", ";")):
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
    words = [command_words(c) for c in pipeline if c]
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
        inner = by_rules(args[args.index("-c") + 1])  # sh -c "pip install x"
        if inner.mode == "sandbox":
            return Decision(
                "sandbox", inner.rule, f"{inner.reason} (in {name} -c)", inner.escalates
            )
    if name in _INTERPRETERS and any(s.startswith("<(") for s in args):
        return Decision("sandbox", "download-exec", f"{name} runs a process substitution")
    return None
