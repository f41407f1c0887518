"""The outcome of one command, as clients return it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class ExecResult:
    """What a command did. ``stdout``/``stderr`` are UTF-8 text (undecodable bytes replaced);
    ``stdout_bytes``/``stderr_bytes`` are exactly what the command wrote."""

    kernel: str
    mode: str
    status: str  # ok | error | timeout | interrupted | aborted
    exit_code: int | None
    stdout_bytes: bytes = b""
    stderr_bytes: bytes = b""
    duration: float = 0.0
    execution_count: int | None = None
    cwd: str | None = None
    truncated: bool = False
    lost_messages: int = 0  # output chunks the broker dropped because we read too slowly
    session_reset: bool = False
    ename: str | None = None
    evalue: str | None = None
    events: list[dict[str, Any]] = field(default_factory=list)
    auto: dict[str, str] | None = None  # auto mode: {"mode", "rule", "reason"} of the decision

    @property
    def reason(self) -> str | None:
        """Why an auto-mode command ran where it did."""
        return self.auto.get("reason") if self.auto else None

    @property
    def stdout(self) -> str:
        return self.stdout_bytes.decode("utf-8", "replace")

    @property
    def stderr(self) -> str:
        return self.stderr_bytes.decode("utf-8", "replace")

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def __repr__(self) -> str:
        return (
            f"ExecResult(kernel={self.kernel!r}, status={self.status!r}, "
            f"exit_code={self.exit_code!r}, duration={self.duration:.4f}, "
            f"stdout={len(self.stdout_bytes)}B, stderr={len(self.stderr_bytes)}B)"
        )
