"""The workspace: which host directory a sandbox gets at /workspace, what it must never see
there, and which uid writes in it.

A sandbox sees its workspace read-write, so the workspace must not hold what would let code in
the sandbox act on the host:

- ``/``, your home directory, or a directory that holds it (a sandbox would change your
  dotfiles: ``~/.bashrc``, ``~/.ssh``): refused (:func:`check_workspace`, one line, BadRequest);
- a stigmer runtime directory (its ``key`` and ``clients.sock`` run code on the host) or the
  config directory (a ``shell`` setting written there would run on the host): a workspace
  inside one is refused; one inside the workspace is hidden in the container under an empty
  read-only mount (:func:`hidden_paths`). Masking, not refusing: ``/tmp`` or a project that
  keeps ``STIGMER_RUNTIME_DIR`` inside it stay usable as workspaces. Found cheaply: this
  server's runtime directory, the default locations (``/tmp/stigmer-*``,
  ``$XDG_RUNTIME_DIR/stigmer``, ``/run/user/*/stigmer``), the workspace's own subdirectories
  that carry the runtime marker, and the config directories. A runtime directory made later,
  or elsewhere deeper in the workspace, is still out of reach: every server's ``clients.sock``
  refuses peers of another mount namespace (broker/peers.py).

Who writes there (:func:`sandbox_user`): ``STIGMER_SANDBOX_USER`` if set; else a server that
is not root runs sandboxes as itself; a root server as the user who ran sudo (``SUDO_UID``), else
as nobody (65534:65534). Never as uid 0: a file a sandbox writes never belongs to root.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from ..config import Config, EnvVar, default_config_path, default_runtime_dir
from ..errors import ModeUnavailable, RequestError
from ..protocol import ErrorName
from ..runtime import MARKER

#: nobody:nogroup, for a root server with no other choice.
NOBODY = 65534
#: Where other servers' runtime directories are, by default (config.default_runtime_dir).
RUNTIME_GLOBS = ("/tmp/stigmer-*", "/run/user/*/stigmer")
#: Subdirectories of a workspace looked at for the runtime marker (more are not looked at).
SCAN_LIMIT = 4096
#: How to choose a workspace, said in every refusal.
HOW_TO_CHOOSE = (
    "run from a project directory (cd into it, or --cwd DIR), or set "
    "STIGMER_SANDBOX_WORKSPACE to one"
)


@dataclass(frozen=True)
class SandboxUser:
    """The uid:gid sandbox commands run as, and why that one."""

    uid: int
    gid: int
    source: str  # what chose it, as the docs name it

    def __str__(self) -> str:
        return f"{self.uid}:{self.gid}"


def sandbox_user(config: Config, env: Mapping[str, str] | None = None) -> SandboxUser:
    """Who sandbox commands run as (see the module docstring); never uid or gid 0.

    Raises :class:`ModeUnavailable` for a ``sandbox_user`` that a server which is not root
    cannot give (the kernel directory and the agent socket must be its sandboxes' own)."""
    env = os.environ if env is None else env
    own = os.getuid()
    if config.sandbox_user:
        uid_text, _, gid_text = config.sandbox_user.partition(":")
        uid = int(uid_text)
        if own != 0 and uid != own:
            raise ModeUnavailable(
                f"{EnvVar.SANDBOX_USER.value}={config.sandbox_user}: a server running as uid "
                f"{own} can only run its sandboxes as itself — unset it, or run the server as root",
                ErrorName.MODE_UNAVAILABLE,
            )
        gid = int(gid_text) if gid_text else _primary_group(uid)
        return SandboxUser(uid, gid, EnvVar.SANDBOX_USER.value)
    if own != 0:
        return SandboxUser(own, os.getgid(), "the server's own uid")
    sudo_uid = _number(env.get("SUDO_UID"))
    if sudo_uid:
        return SandboxUser(
            sudo_uid, _number(env.get("SUDO_GID")) or _primary_group(sudo_uid), "SUDO_UID"
        )
    return SandboxUser(NOBODY, NOBODY, "nobody")


def _number(text: str | None) -> int:
    """A positive number, else 0."""
    return int(text) if text and text.isdigit() and int(text) > 0 else 0


def _primary_group(uid: int) -> int:
    """``uid``'s group on this host; the same number if it has no account (never 0)."""
    try:
        gid = pwd.getpwuid(uid).pw_gid
    except KeyError:
        return uid
    return gid or NOBODY


def check_workspace(workspace: object, config: Config) -> str:
    """The workspace a sandbox may have, resolved; RequestError (BadRequest) if it may not."""
    if not isinstance(workspace, str) or not os.path.isdir(workspace):
        raise RequestError(f"workspace {workspace!r} does not exist", ErrorName.BAD_REQUEST)
    real = os.path.realpath(workspace)
    if real == "/":
        raise RequestError(
            f"workspace / would give a sandbox the whole host — {HOW_TO_CHOOSE}",
            ErrorName.BAD_REQUEST,
        )
    user = sandbox_user(config)
    homes = {os.path.realpath(os.path.expanduser("~"))}
    with contextlib.suppress(KeyError):
        homes.add(os.path.realpath(pwd.getpwuid(user.uid).pw_dir))
    for home in sorted(homes):
        if home != "/" and _within(home, real) and os.path.isdir(home):
            what = "is" if home == real else "holds"
            raise RequestError(
                f"workspace {real} {what} the home directory {home}, which a sandbox must not "
                f"see or change — {HOW_TO_CHOOSE}",
                ErrorName.BAD_REQUEST,
            )
    holder = _sensitive_holder(real, config)
    if holder is not None:
        raise RequestError(
            f"workspace {real} is inside {holder}, which a sandbox must not see — {HOW_TO_CHOOSE}",
            ErrorName.BAD_REQUEST,
        )
    if not _can_enter(real, user):
        raise RequestError(
            f"workspace {real} cannot be entered by uid {user.uid}, which sandbox commands run "
            f"as ({user.source}) — give it access (chown {user} or chmod o+rx), or set "
            f"{EnvVar.SANDBOX_USER.value} to its owner",
            ErrorName.BAD_REQUEST,
        )
    return real


def _within(path: str, root: str) -> bool:
    """True if ``path`` is ``root`` or lies under it (both resolved)."""
    return path == root or path.startswith(root.rstrip("/") + "/")


def _config_dirs(env: Mapping[str, str]) -> list[str]:
    """The config directories of this server's user (not STIGMER_CONFIG's: it names a file)."""
    dirs = [str(default_config_path({}).parent)]  # ~/.config/stigmer
    if env.get("XDG_CONFIG_HOME"):
        dirs.append(str(Path(env["XDG_CONFIG_HOME"]) / "stigmer"))
    return [os.path.realpath(os.path.expanduser(d)) for d in dirs]


def _sensitive_holder(real: str, config: Config) -> str | None:
    """A runtime or config directory that holds (or is) the workspace ``real``, if any."""
    own = os.path.realpath(config.runtime_dir)
    if _within(real, own):
        return f"this server's runtime directory {own}"
    for directory in _config_dirs(os.environ):
        if _within(real, directory):
            return f"the stigmer config directory {directory}"
    path = Path(real)
    for ancestor in (path, *path.parents):
        if (ancestor / MARKER).exists():
            return f"the stigmer runtime directory {ancestor}"
    return None


def _can_enter(path: str, user: SandboxUser) -> bool:
    """Whether ``user`` may enter the directory ``path`` by its mode bits (an ACL is trusted)."""
    info = os.stat(path)
    if info.st_uid == user.uid:
        bit = stat.S_IXUSR
    elif info.st_gid == user.gid:
        bit = stat.S_IXGRP
    else:
        bit = stat.S_IXOTH
    if info.st_mode & bit:
        return True
    try:
        os.getxattr(path, "system.posix_acl_access")
    except OSError:
        return False
    return True  # an ACL may let it in: the container says so if not


def hidden_paths(workspace: str, config: Config) -> tuple[list[str], list[str]]:
    """(directories, files) inside the resolved ``workspace`` that a sandbox must not see:
    runtime directories and config directories (made if missing, so that they can be hidden
    and no sandbox can create them), and the config file ``STIGMER_CONFIG`` names."""
    env = os.environ
    found = {os.path.realpath(config.runtime_dir), os.path.realpath(default_runtime_dir())}
    for pattern in RUNTIME_GLOBS:
        found.update(os.path.realpath(p) for p in glob.glob(pattern))
    if env.get("XDG_RUNTIME_DIR"):
        found.add(os.path.realpath(Path(env["XDG_RUNTIME_DIR"]) / "stigmer"))
    with contextlib.suppress(OSError), os.scandir(workspace) as entries:
        for count, entry in enumerate(entries):
            if count >= SCAN_LIMIT:
                break
            if entry.is_dir(follow_symlinks=False) and os.path.exists(
                os.path.join(entry.path, MARKER)
            ):
                found.add(entry.path)
    dirs = {d for d in found if d != workspace and _within(d, workspace) and os.path.isdir(d)}
    for directory in _config_dirs(env):
        if directory != workspace and _within(directory, workspace):
            with contextlib.suppress(OSError):
                os.makedirs(directory, mode=0o700, exist_ok=True)
                dirs.add(directory)
    files = []
    explicit = env.get(EnvVar.CONFIG.value)
    if explicit:
        path = os.path.realpath(os.path.expanduser(explicit))
        if _within(path, workspace) and not any(_within(path, d) for d in dirs):
            with contextlib.suppress(OSError):
                if not os.path.lexists(path):
                    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
                if os.path.isdir(path):
                    dirs.add(path)
                else:
                    files.append(path)
    # A directory inside another hidden one is hidden with it.
    kept = sorted(d for d in dirs if not any(o != d and _within(d, o) for o in dirs))
    return kept, sorted(files)
