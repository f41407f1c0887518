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

from .decision import LOCAL, Decision, Escalation
from .host_read import host_read
from .rules import SYSTEM_PATHS, by_rules

__all__ = ["LOCAL", "SYSTEM_PATHS", "Decision", "Escalation", "decide", "explain"]


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
    found = by_rules(code, requirements)
    if found.mode == "sandbox" or escalation is None:
        return found
    if not sticky:
        return Decision(
            "local",
            found.rule,
            f"{found.reason} (the kernel escalated by {escalation.by}, but stickiness is off)",
        )
    read = host_read(code, workspace)
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
