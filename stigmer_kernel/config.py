"""Configuration: one frozen dataclass, built in one place.

Precedence, lowest to highest: defaults < config file < environment < explicit overrides
(CLI flags or keyword arguments). :func:`load_config` is the only function that builds a
:class:`Config`; the CLI only parses its arguments into ``overrides``.

The config file is TOML with flat ``key = value`` pairs named like the fields below. Its path is
``$STIGMER_CONFIG``, else ``$XDG_CONFIG_HOME/stigmer/config.toml``, else
``~/.config/stigmer/config.toml``. ``stigmer config set KEY VALUE`` writes it.
"""

from __future__ import annotations

import dataclasses
import enum
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ConfigError
from .lean_config import default_config_path as default_config_path  # re-exported
from .lean_config import default_runtime_dir as default_runtime_dir
from .names import EnvVar as EnvVar  # re-exported: `from stigmer_kernel.config import EnvVar`
from .names import ExecutionMode as ExecutionMode

TYPE_CHECKING = False  # not typing's: see stigmer_kernel/__init__.py
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any


def _env(var: EnvVar) -> dict[str, Any]:
    return {"env": var.value}


class _Pattern:
    """A regular expression compiled at its first :meth:`fullmatch`: only a setting given as
    text is checked, and compiling them all would cost every ``stigmer`` command's start."""

    __slots__ = ("_compiled", "flags", "source")

    def __init__(self, source: str, flags: int = 0) -> None:
        self.source = source
        self.flags = flags
        self._compiled: re.Pattern[str] | None = None

    def fullmatch(self, text: str) -> re.Match[str] | None:
        if self._compiled is None:
            self._compiled = re.compile(self.source, self.flags)
        return self._compiled.fullmatch(text)


#: Docker's memory syntax (bytes, or a number with b, k, m or g), as ``sandbox_memory`` takes it.
_MEMORY = (
    _Pattern(r"[0-9]+(\.[0-9]+)?([kmg]b?|b)?", re.IGNORECASE),
    "a size such as 512m, 2g or 2gb",
)
#: A tmpfs size as the kernel takes it (``size=0`` would mean no limit, so it is refused).
_TMPFS = (_Pattern(r"[1-9][0-9]*[kmg]?", re.IGNORECASE), "a size such as 256m or 1g")
#: Docker's storage-opt size syntax.
_DISK = (_Pattern(r"[1-9][0-9]*([kmgt]b?|b)?", re.IGNORECASE), "a size such as 10g")
#: ``UID:GID`` or ``UID``, neither of them 0: a sandbox never runs as root.
_SANDBOX_USER = (
    _Pattern(r"0*[1-9][0-9]{0,9}(:0*[1-9][0-9]{0,9})?"),
    "UID:GID or UID (numbers, e.g. 1000:1000), neither of them 0: sandboxes never run as root",
)


@dataclass(frozen=True)
class Config:
    """All settings of a server, an agent or a client. Build it with :func:`load_config`."""

    runtime_dir: Path = field(
        default_factory=default_runtime_dir, metadata=_env(EnvVar.RUNTIME_DIR)
    )
    """Private directory (mode 0700) holding the server's sockets, key, lock and log. Two
    servers with different runtime directories are fully independent."""

    execution_mode: ExecutionMode = field(
        default=ExecutionMode.LOCAL, metadata=_env(EnvVar.EXECUTION_MODE)
    )
    """Default mode for requests that do not name one: local, sandbox or auto."""

    kernel_ttl: float = field(default=3600.0, metadata=_env(EnvVar.KERNEL_TTL))
    """Seconds without execute activity after which an idle kernel is shut down."""

    heartbeat_interval: float = field(default=1.0, metadata=_env(EnvVar.HEARTBEAT_INTERVAL))
    """Seconds between agent heartbeats."""

    heartbeat_misses: int = field(default=3, metadata=_env(EnvVar.HEARTBEAT_MISSES))
    """Missed heartbeats after which an agent is declared dead."""

    command_timeout: float | None = field(default=None, metadata=_env(EnvVar.TIMEOUT))
    """Default per-command timeout in seconds for new kernels (none: no limit)."""

    output_limit: int = field(default=32 * 1024 * 1024, metadata=_env(EnvVar.OUTPUT_LIMIT))
    """Bytes of each stream (stdout, stderr) a client keeps in a command's result; the rest is
    counted (``ExecResult.stdout_dropped``, ``truncated``). Output streamed to callbacks and by
    ``stigmer run`` is never cut. 0 keeps none."""

    process_journal_bytes: int = field(
        default=4 * 1024 * 1024, metadata=_env(EnvVar.PROCESS_JOURNAL_BYTES)
    )
    """Bytes of each stream (stdout, stderr) of a background process its kernel's agent keeps
    (``stigmer logs``); older output is dropped and counted. For kernels started after it is
    set."""

    expire_with_processes: bool = field(default=False, metadata=_env(EnvVar.EXPIRE_WITH_PROCESSES))
    """Let an idle kernel expire at its TTL even while a background process of it runs (and
    ends with it). Default: a kernel with a running background process is not idle."""

    kernel_cwd: str | None = field(default=None, metadata={**_env(EnvVar.WORKDIR), "path": True})
    """Working directory of new kernels (none: the directory the client asked from)."""

    client_endpoint: str | None = field(default=None, metadata=_env(EnvVar.CLIENT_ENDPOINT))
    """TCP endpoint (e.g. tcp://0.0.0.0:5700) for clients on other hosts, besides the ipc
    socket: CurveZMQ-encrypted, keys authorized in RUNTIME_DIR/curve/authorized/."""

    agent_endpoint: str | None = field(default=None, metadata=_env(EnvVar.AGENT_ENDPOINT))
    """TCP endpoint for agents on other hosts (``--join``), CurveZMQ like client_endpoint."""

    allow_plain_tcp: bool = field(default=False, metadata=_env(EnvVar.ALLOW_PLAIN_TCP))
    """Serve the TCP endpoints without CurveZMQ — refused unless they are on loopback."""

    log_level: str = field(
        default="INFO",
        metadata={
            **_env(EnvVar.LOG_LEVEL),
            "choices": ("debug", "info", "warning", "warn", "error", "critical"),
        },
    )
    """Log level of the server log (DEBUG, INFO, WARNING, ERROR)."""

    shell: str = field(default="bash", metadata=_env(EnvVar.SHELL))
    """The bash executable agents run (a name on PATH or a path)."""

    sandbox_image: str = field(
        default="ghcr.io/stigmer/agent-sandbox-basic:latest", metadata=_env(EnvVar.SANDBOX_IMAGE)
    )
    """Image of sandbox kernels (sandbox mode)."""

    sandbox_auto_pull: bool = field(default=True, metadata=_env(EnvVar.SANDBOX_AUTO_PULL))
    """Pull the sandbox image when it is missing locally (sandbox mode)."""

    sandbox_cleanup: bool = field(default=True, metadata=_env(EnvVar.SANDBOX_CLEANUP))
    """Remove (true) or only stop (false) expired sandbox containers (sandbox mode)."""

    sandbox_ttl: float = field(default=3600.0, metadata=_env(EnvVar.SANDBOX_TTL))
    """Idle seconds after which a sandbox kernel and its container expire (sandbox mode)."""

    sandbox_network: str = field(default="isolated", metadata=_env(EnvVar.SANDBOX_NETWORK))
    """Docker network of sandbox containers: isolated (a network of this server's own: outbound
    access for package installs, but no sandbox reaches another one or, with a root server, a
    service on this host), bridge (Docker's default: they reach each other and the host), none,
    or the name of a Docker network."""

    sandbox_transport: str = field(
        default="ipc", metadata={**_env(EnvVar.SANDBOX_TRANSPORT), "choices": ("ipc", "tcp")}
    )
    """How a sandbox's agent reaches the broker: ipc (the agent socket mounted into the container;
    works with the network off) or tcp (CurveZMQ over the container network, for engines where a
    unix socket cannot cross a mount, e.g. Docker Desktop)."""

    sandbox_agent_bind: str | None = field(default=None, metadata=_env(EnvVar.SANDBOX_AGENT_BIND))
    """Address the broker listens on for tcp sandbox agents (default: the docker0 bridge's
    address if this host has one, else 127.0.0.1)."""

    sandbox_memory: str = field(
        default="2g", metadata={**_env(EnvVar.SANDBOX_MEMORY), "pattern": _MEMORY}
    )
    """Memory limit of a sandbox container (Docker syntax: 512m, 2g)."""

    sandbox_cpus: float = field(
        default=2.0, metadata={**_env(EnvVar.SANDBOX_CPUS), "hint": "a positive number of CPUs"}
    )
    """CPU limit of a sandbox container, in CPUs."""

    sandbox_pids: int = field(default=512, metadata=_env(EnvVar.SANDBOX_PIDS))
    """Most processes a sandbox container may hold at once."""

    sandbox_read_only: bool = field(default=False, metadata=_env(EnvVar.SANDBOX_READ_ONLY))
    """Read-only root filesystem for sandboxes (with a writable tmpfs /tmp)."""

    sandbox_tmpfs_size: str = field(
        default="1g", metadata={**_env(EnvVar.SANDBOX_TMPFS_SIZE), "pattern": _TMPFS}
    )
    """Size of each of a sandbox's /tmp and /var/tmp (tmpfs: what is written there counts
    against STIGMER_SANDBOX_MEMORY). Containers kept for reuse (sandbox_cleanup=false) keep /tmp
    and /var/tmp on their disk unless the root filesystem is read-only."""

    sandbox_disk: str | None = field(
        default=None, metadata={**_env(EnvVar.SANDBOX_DISK), "pattern": _DISK}
    )
    """Size limit of a sandbox container's writable layer (none: no limit). Only storage drivers
    with quotas apply it (overlay2 on xfs mounted with pquota, btrfs, zfs); with others a
    sandbox fails to start and says so."""

    sandbox_user: str | None = field(
        default=None, metadata={**_env(EnvVar.SANDBOX_USER), "pattern": _SANDBOX_USER}
    )
    """UID:GID (or UID, with that user's group) sandbox commands run as, and so what files they
    write in the workspace belong to (none: the server's own uid:gid; a root server takes
    SUDO_UID:SUDO_GID when set, else 65534:65534, nobody:nogroup). Never 0; a server that is not
    root can only give its sandboxes its own uid."""

    sandbox_workspace: str | None = field(
        default=None, metadata={**_env(EnvVar.SANDBOX_WORKSPACE), "path": True}
    )
    """Host directory mounted at /workspace in sandboxes (none: where the client asked from)."""

    sandbox_warm: int = field(default=0, metadata={**_env(EnvVar.SANDBOX_WARM), "zero_ok": True})
    """Started sandbox containers kept ready, so a new sandbox kernel skips container start."""

    sandbox_pool: str | None = field(default=None, metadata=_env(EnvVar.SANDBOX_POOL))
    """The agent pool new sandbox kernels are claimed from (none: containers on this host's
    Docker engine). Members join with ``stigmer agent join --pool NAME``; a request's own
    ``pool`` (``stigmer run --pool NAME``) wins."""

    pool_wait: float = field(default=60.0, metadata=_env(EnvVar.POOL_WAIT))
    """Seconds a kernel waits for an idle member of its pool before it fails (KernelDied,
    naming the pool and its size)."""

    sandbox_ca_file: Path = field(
        default=Path("/etc/ssl/certs/ca-certificates.crt"), metadata=_env(EnvVar.SANDBOX_CA_FILE)
    )
    """CA bundle lent to image builds (the tiers, ``--requirements`` layers) for their downloads,
    e.g. behind a TLS-intercepting proxy; only their discarded download stages see it, no layer
    of an image holds it. A missing file lends none."""

    auto_local_fallback: bool = field(default=False, metadata=_env(EnvVar.AUTO_LOCAL_FALLBACK))
    """Auto mode: run sandbox-bound commands on the host when no Docker engine is reachable
    (default: they fail with a clear error instead)."""

    auto_sticky: bool = field(default=True, metadata=_env(EnvVar.AUTO_STICKY))
    """Auto mode: once a command of a kernel changed its sandbox (``pip install six``, a system
    write; not a query such as ``pip list``), the kernel's later commands follow it there, so
    what was installed is used where it was installed; only reads of the user's files outside
    the workspace (``cat ~/.gitconfig``) stay on the host. Until the kernel is restarted or
    gone. Off: each command is decided by the rules alone. A client that sets it sends it with
    each request (``execute(sticky=...)`` for one command)."""

    max_kernels: int = field(default=256, metadata=_env(EnvVar.MAX_KERNELS))
    """Most kernels a server holds at once (an auto kernel counts once); a request for one
    more is refused with ``TooManyKernels``."""

    max_kernels_per_client: int = field(default=64, metadata=_env(EnvVar.MAX_KERNELS_PER_CLIENT))
    """Most live kernels one client connection may have created; beyond, ``TooManyKernels``."""

    explicit: frozenset[str] = field(default=frozenset(), compare=False, repr=False)
    """The settings given by a config file, the environment or an override (the rest are
    defaults). A client sends its execution mode only when it is one of these, so that a server
    started with another default mode applies it."""

    max_message_bytes: int = 32 * 1024 * 1024
    """Largest frame the broker accepts from native clients (ZeroMQ's MAXMSGSIZE, per frame: a
    request's code and its stdin travel in one frame): a peer that sends a bigger one is
    disconnected by ZeroMQ before the broker sees it. Agents and Jupyter channels have their own,
    smaller limits (broker/connections.py)."""

    broker_memory_mb: int = field(
        default=1024, metadata={**_env(EnvVar.BROKER_MEMORY_MB), "zero_ok": True}
    )
    """MiB of resident memory past which the broker closes the connections of its exposed
    sockets (agents.sock, Jupyter channels, TCP endpoints) that deliver no message (0: never)."""

    def __post_init__(self) -> None:
        # A Config built by hand (not by load_config) counts what it changed as set.
        changed = {
            f.name
            for f in dataclasses.fields(self)
            if "env" in f.metadata and getattr(self, f.name) != _default_of(f)
        }
        object.__setattr__(self, "explicit", frozenset(self.explicit | changed))

    @property
    def dead_after(self) -> float:
        """Seconds of agent silence after which it is declared dead."""
        return self.heartbeat_interval * self.heartbeat_misses

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            if f.name == "explicit":
                continue
            value = getattr(self, f.name)
            if isinstance(value, Path):
                value = str(value)
            elif isinstance(value, enum.Enum):
                value = value.value
            out[f.name] = value
        return out


def _default_of(f: dataclasses.Field[Any]) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


FIELDS: dict[str, dataclasses.Field[Any]] = {f.name: f for f in dataclasses.fields(Config)}
USER_KEYS = tuple(name for name, f in FIELDS.items() if "env" in f.metadata)

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def parse_value(key: str, raw: Any) -> Any:
    """Convert ``raw`` (a string from the environment or CLI, or a TOML value) for ``key``."""
    if key not in FIELDS:
        known = ", ".join(USER_KEYS)
        raise ConfigError(f"unknown setting {key!r}; known settings: {known}")
    typ = str(FIELDS[key].type)
    text = raw.strip() if isinstance(raw, str) else raw
    try:
        if typ == "Path":
            if not str(text):
                raise ValueError(text)
            return Path(str(text)).expanduser().absolute()  # relative: to where it was given
        if typ == "ExecutionMode":
            return ExecutionMode(str(text).lower())
        if typ == "bool":
            if isinstance(text, bool):
                return text
            low = str(text).lower()
            if low in _TRUE:
                return True
            if low in _FALSE:
                return False
            raise ValueError(text)
        if typ == "int":
            value = int(text)
            if value < 0 or (value == 0 and not FIELDS[key].metadata.get("zero_ok")):
                raise ValueError(text)
            return value
        if typ in ("float", "float | None"):
            if typ.endswith("None") and (text is None or str(text).lower() in ("", "none", "0")):
                return None
            number = float(text)
            if number <= 0:
                raise ValueError(text)
            return number
        if typ == "str | None":
            if text in (None, "", "none"):
                return None
            if FIELDS[key].metadata.get("path"):
                return str(Path(str(text)).expanduser().absolute())
            optional = FIELDS[key].metadata.get("pattern")
            if optional and not optional[0].fullmatch(str(text)):
                raise ValueError(text)
            return str(text)
        choices = FIELDS[key].metadata.get("choices")
        if choices and str(text).lower() not in choices:
            raise ValueError(text)
        pattern = FIELDS[key].metadata.get("pattern")
        if pattern and not pattern[0].fullmatch(str(text)):
            raise ValueError(text)
        if choices and key == "log_level":
            return {"warn": "WARNING"}.get(str(text).lower(), str(text).upper())
        return str(text).lower() if choices else str(text)
    except (TypeError, ValueError):
        hint = {
            "ExecutionMode": "one of local, sandbox, auto",
            "bool": "true or false",
            "int": "a non-negative integer"
            if FIELDS[key].metadata.get("zero_ok")
            else "a positive integer",
            "float": "a positive number of seconds",
            "float | None": "a positive number of seconds, or none",
        }.get(typ, "a string")
        if FIELDS[key].metadata.get("choices"):
            hint = "one of " + ", ".join(FIELDS[key].metadata["choices"])
        if FIELDS[key].metadata.get("pattern"):
            hint = FIELDS[key].metadata["pattern"][1]
        hint = FIELDS[key].metadata.get("hint", hint)
        raise ConfigError(f"invalid value {raw!r} for {key}: expected {hint}") from None


def read_config_file(path: Path) -> dict[str, Any]:
    """Read the TOML config file; a missing file is an empty config (and no TOML parser is
    imported for it)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - exercised on 3.10 only
        import tomli as tomllib
    try:
        parsed = tomllib.loads(data.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    return dict(parsed)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    text = str(value.value if isinstance(value, enum.Enum) else value)
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def write_config_file(path: Path, values: Mapping[str, Any]) -> None:
    """Write ``values`` as flat TOML, atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ["# stigmer-kernel settings; see `stigmer config list`"]
    for key in sorted(values):
        value = values[key]
        if value is None:
            continue
        lines.append(f"{key} = {_toml_value(value)}")
    tmp = path.with_suffix(".tmp")
    tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def load_config(
    overrides: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
    config_path: Path | None = None,
) -> Config:
    """Build the configuration: defaults < config file < environment < ``overrides``."""
    env = os.environ if env is None else env
    path = config_path or default_config_path(env)
    values: dict[str, Any] = {}
    for key, raw in read_config_file(path).items():
        if key not in USER_KEYS:
            raise ConfigError(f"unknown setting {key!r} in {path}; known: {', '.join(USER_KEYS)}")
        values[key] = parse_value(key, raw)
    for key in USER_KEYS:
        var = FIELDS[key].metadata["env"]
        if var in env and env[var] != "":
            try:
                values[key] = parse_value(key, env[var])
            except ConfigError as exc:
                raise ConfigError(f"{var}: {exc}") from None
    for key, raw in (overrides or {}).items():
        if raw is not None:
            if isinstance(raw, Path):
                raw = str(raw)
            checked = isinstance(raw, (str, int, float)) and not isinstance(raw, bool)
            values[key] = parse_value(key, raw) if checked else raw
    return Config(**values, explicit=frozenset(values))
