"""What an agent is started with: :class:`AgentOptions`, built by ``__main__`` from its command
line (or by a test)."""

from __future__ import annotations

from .processes import JOURNAL_BYTES

TYPE_CHECKING = False  # not typing's: see stigmer_kernel/__init__.py
if TYPE_CHECKING:
    from pathlib import Path

    from ..curve import ClientKeys


class AgentOptions:
    # A plain class, not a dataclass: an agent's start imports no dataclasses (inspect, ast).

    endpoint: str
    kernel_id: str
    key: bytes
    cwd: str
    workdir: Path
    shell: str
    heartbeat_interval: float
    orphan_timeout: float
    command_timeout: float | None
    output_limit: int  # bytes of output sent per command at most (0: no limit)
    join: str | None  # a remote agent: the kernel name it offers to serve
    curve: ClientKeys | None  # CurveZMQ to the broker over TCP (remote, sandbox on tcp)
    env: dict[str, str] | None  # the shell's environment (None: the agent's own)
    journal_bytes: int  # bytes kept per stream of a background process

    def __init__(
        self,
        endpoint: str,
        kernel_id: str,
        key: bytes,
        cwd: str,
        workdir: Path,
        shell: str = "bash",
        heartbeat_interval: float = 1.0,
        orphan_timeout: float = 60.0,
        command_timeout: float | None = None,
        output_limit: int = 0,
        join: str | None = None,
        curve: ClientKeys | None = None,
        env: dict[str, str] | None = None,
        journal_bytes: int = JOURNAL_BYTES,
    ) -> None:
        self.endpoint = endpoint
        self.kernel_id = kernel_id
        self.key = key
        self.cwd = cwd
        self.workdir = workdir
        self.shell = shell
        self.heartbeat_interval = heartbeat_interval
        self.orphan_timeout = orphan_timeout
        self.command_timeout = command_timeout
        self.output_limit = output_limit
        self.join = join
        self.curve = curve
        self.env = env
        self.journal_bytes = journal_bytes
