"""The outcome of one command, as clients return it."""

from __future__ import annotations

from dataclasses import dataclass, field

TYPE_CHECKING = False  # not typing's: see stigmer_kernel/__init__.py
if TYPE_CHECKING:
    from typing import Any


@dataclass
class ExecResult:
    """What a command did. ``stdout``/``stderr`` are UTF-8 text (undecodable bytes replaced);
    ``stdout_bytes``/``stderr_bytes`` are exactly what the command wrote, up to the client's
    ``output_limit`` per stream. Past it, ``truncated`` is true and ``stdout_dropped`` /
    ``stderr_dropped`` count the bytes not kept (callbacks still got them all)."""

    kernel: str
    mode: str
    status: str  # ok | error | timeout | interrupted | aborted
    exit_code: int | None
    stdout_bytes: bytes = b""
    stderr_bytes: bytes = b""
    duration: float = 0.0
    execution_count: int | None = None
    cwd: str | None = None
    truncated: bool = False  # some output is missing from stdout_bytes/stderr_bytes
    lost_messages: int = 0  # output chunks the broker dropped because we read too slowly
    session_reset: bool = False
    ename: str | None = None
    evalue: str | None = None
    events: list[dict[str, Any]] = field(default_factory=list)
    #: A background start's process (``id``, ``pid``, ``command``, ``started``, ``cwd``);
    #: :meth:`AsyncClient.start` turns it into a handle.
    process: dict[str, Any] | None = None
    auto: dict[str, str] | None = None  # auto mode: {"mode", "rule", "reason"} of the decision
    stdout_dropped: int = 0  # bytes of stdout past the output limit, not kept
    stderr_dropped: int = 0  # bytes of stderr past the output limit, not kept

    @property
    def reason(self) -> str | None:
        """Why an auto-mode command ran where it did."""
        return self.auto.get("reason") if self.auto else None

    @property
    def rule(self) -> str | None:
        """Which auto-mode rule decided (``sticky``: the kernel's sandbox escalation)."""
        return self.auto.get("rule") if self.auto else None

    @property
    def stdout(self) -> str:
        return self.stdout_bytes.decode("utf-8", "replace")

    @property
    def stderr(self) -> str:
        return self.stderr_bytes.decode("utf-8", "replace")

    @property
    def stdout_truncated(self) -> bool:
        return self.stdout_dropped > 0

    @property
    def stderr_truncated(self) -> bool:
        return self.stderr_dropped > 0

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def __repr__(self) -> str:
        return (
            f"ExecResult(kernel={self.kernel!r}, status={self.status!r}, "
            f"exit_code={self.exit_code!r}, duration={self.duration:.4f}, "
            f"stdout={len(self.stdout_bytes)}B, stderr={len(self.stderr_bytes)}B"
            + (
                f", truncated: {self.stdout_dropped}B of stdout and {self.stderr_dropped}B of "
                "stderr not kept"
                if self.truncated
                else ""
            )
            + ")"
        )
