"""What auto mode decides for a command (:class:`Decision`) and what escalated a kernel
(:class:`Escalation`): plain values, built by :mod:`.rules` and :func:`~stigmer_kernel.auto.decide`,
kept by the broker.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

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
