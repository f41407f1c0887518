"""The settings a plain ``stigmer run`` reads, without building a :class:`~.config.Config`.

``Config`` is a frozen dataclass of ``Path`` values: importing dataclasses (with inspect and
ast) and pathlib (with urllib.parse and ipaddress) and building one cost ``stigmer run -- true``
about a fifth of its time. :func:`lean_settings` gives the few settings a run reads, with the
values :func:`~.config.load_config` would give them (the runtime directory as the string of its
``Path``), whenever that is sure without it: no config file, and no setting in the environment
but the runtime directory and the execution mode. Otherwise it returns None and the caller
builds the ``Config``, which also reports a wrong setting as always. tests/test_lean_config.py
holds the two to the same values.

The default paths live here, for both (config.py re-exports them).
"""

from __future__ import annotations

import os

TYPE_CHECKING = False  # not typing's: see stigmer_kernel/__init__.py
if TYPE_CHECKING:
    from collections.abc import Mapping
    from pathlib import Path

    from .names import ExecutionMode

#: The variables this module reads, by name: their :class:`~.names.EnvVar` members' values
#: (tests/test_lean_config.py checks), not the members, whose enum (with :mod:`enum`'s import)
#: would cost a plain run more than the rest of its settings.
_CONFIG = "STIGMER_CONFIG"
_RUNTIME_DIR = "STIGMER_RUNTIME_DIR"
_EXECUTION_MODE = "STIGMER_EXECUTION_MODE"
#: What every variable of stigmer-kernel's starts with (``EnvVar``'s values all do).
_PREFIX = "STIGMER_"


def default_runtime_dir() -> Path:
    """``$XDG_RUNTIME_DIR/stigmer`` when that directory exists, else ``/tmp/stigmer-<uid>``."""
    from pathlib import Path

    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg and os.path.isdir(xdg):
        return Path(xdg) / "stigmer"
    return Path("/tmp") / f"stigmer-{os.getuid()}"


def default_config_path(env: Mapping[str, str] | None = None) -> Path:
    from pathlib import Path

    env = os.environ if env is None else env
    explicit = env.get(_CONFIG)
    if explicit:
        return Path(explicit).expanduser()
    base = env.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "stigmer" / "config.toml"


#: The variables of :class:`~.names.EnvVar` that set no ``Config`` field, by name
#: (tests/test_lean_config.py checks that every other one does).
NOT_SETTINGS = frozenset(
    {_CONFIG, "STIGMER_POOL_SERVER_KEY", "STIGMER_POOL_CURVE_SECRET", "STIGMER_AGENT_KEY"}
    | {"STIGMER_KERNEL"}
)


def _settings_by_name() -> frozenset[str]:
    """The names of the variables that are settings (``EnvVar``'s, less :data:`NOT_SETTINGS`):
    asked only when a ``STIGMER_*`` variable is set, as ``load_config`` ignores the others
    (a script's own, say)."""
    from .names import EnvVar

    return frozenset(var.value for var in EnvVar) - NOT_SETTINGS


#: The settings :func:`lean_settings` reads from the environment itself.
_READ = frozenset({_RUNTIME_DIR, _EXECUTION_MODE})


class LeanSettings:
    """The values of the ``Config`` fields a plain run reads: the runtime directory (as
    ``str(config.runtime_dir)``: no ``Path``), the execution mode and ``explicit`` as given, the
    others at ``Config``'s defaults."""

    __slots__ = ("_mode", "explicit", "runtime_dir")

    output_limit = 32 * 1024 * 1024
    kernel_cwd: str | None = None
    sandbox_image = "ghcr.io/stigmer/agent-sandbox-basic:latest"
    kernel_ttl = 3600.0
    sandbox_ttl = 3600.0
    command_timeout: float | None = None
    auto_sticky = True

    def __init__(self, runtime_dir: str, execution_mode: str, explicit: frozenset[str]) -> None:
        self.runtime_dir = runtime_dir
        self._mode = execution_mode  # an ExecutionMode's value
        self.explicit = explicit

    @property
    def execution_mode(self) -> ExecutionMode:
        from .names import ExecutionMode  # read when the mode was given (``explicit``) only

        return ExecutionMode(self._mode)


def lean_settings(
    runtime_dir: str | None = None, env: Mapping[str, str] | None = None
) -> LeanSettings | None:
    """What ``load_config({"runtime_dir": runtime_dir}, env)`` gives the fields of
    :class:`LeanSettings`, or None when only ``load_config`` can tell (a config file, another
    setting in ``env``, a value it would refuse)."""
    env = os.environ if env is None else env
    for name, value in env.items():  # any other setting
        other = name.startswith(_PREFIX) and name not in _READ and name not in NOT_SETTINGS
        if value and other and name in _settings_by_name():
            return None
    given = env.get(_CONFIG)
    if given:
        config_file = _path(given, absolute=False)
    else:
        home = env.get("XDG_CONFIG_HOME") or _path("~/.config", absolute=False)
        config_file = f"{home}/stigmer/config.toml" if home else None
    if config_file is None:
        return None  # load_config cannot tell where it is, and says so
    try:
        os.stat(config_file)
    except FileNotFoundError:
        pass  # no config file: an empty one
    except OSError:  # load_config says what is wrong
        return None
    else:
        return None
    explicit: set[str] = set()
    mode = "local"  # Config's default
    given = env.get(_EXECUTION_MODE)
    if given:
        from .names import ExecutionMode

        try:
            mode = ExecutionMode(given.strip().lower()).value
        except ValueError:
            return None
        explicit.add("execution_mode")
    path: str | None = None
    for text in (env.get(_RUNTIME_DIR) or None, runtime_dir):  # the override wins
        if text is not None:
            path = _path(text)
            if path is None:
                return None
            explicit.add("runtime_dir")
    if path is None:
        xdg = os.environ.get("XDG_RUNTIME_DIR")  # as default_runtime_dir, without a Path
        if xdg and os.path.isdir(xdg):
            path = _normal(*_split(f"{xdg}/stigmer"))
        else:
            path = f"/tmp/stigmer-{os.getuid()}"
    return LeanSettings(path, mode, frozenset(explicit))


def _path(text: str, absolute: bool = True) -> str | None:
    """``str(Path(text).expanduser())``, with ``absolute`` ``str(Path(text.strip())
    .expanduser().absolute())`` (how ``Config`` takes a path setting), without pathlib; None
    when pathlib would raise, or ``Config`` refuse it."""
    if absolute:
        text = text.strip()
        if not text:
            return None
    root, parts = _split(text)
    if not root and parts and parts[0][:1] == "~":
        home = os.path.expanduser(parts[0])
        if home[:1] == "~":
            return None  # no such user, or no home: pathlib raises
        root, home_parts = _split(home)
        parts = home_parts + parts[1:]
    if not root and absolute:
        try:
            root, cwd_parts = _split(os.getcwd())
        except OSError:  # the current directory is gone
            return None
        parts = cwd_parts + parts
    return _normal(root, parts)


def _normal(root: str, parts: list[str]) -> str:
    """The path of ``root`` and ``parts`` as ``str(Path(...))`` writes it."""
    return root + "/".join(parts) or "."


def _split(text: str) -> tuple[str, list[str]]:
    """A POSIX path's root (``/``, or ``//`` as POSIX keeps it) and its parts, as pathlib
    splits it: no empty or ``.`` part."""
    stripped = text.lstrip("/")
    slashes = len(text) - len(stripped)
    root = "" if not slashes else "//" if slashes == 2 else "/"
    return root, [part for part in stripped.split("/") if part and part != "."]


__all__ = ["LeanSettings", "default_config_path", "default_runtime_dir", "lean_settings"]
