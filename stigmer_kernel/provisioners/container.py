"""How a sandbox container is specified: what ``containers.create`` is given for one kernel.

The container runs the same agent module as local mode, from this very package (mounted
read-only at /opt/stigmer), so the agent always matches the broker. It reaches the broker through
the runtime directory's ``agents/`` folder mounted read-only at /run/stigmer (a unix socket
crosses a bind mount, and connecting to it needs no write access to the mount, so the container's
network can be off and its code cannot remove or replace ``agents.sock``). Its key comes in a
file of its own per-kernel directory, read and deleted by the agent before any command runs; that
directory stays writable, as the agent keeps its session files there (bashrc, exit.sh, late.sh,
state.sh, stdin, stdin.fifo).

Hardened by default: never runs as root (the server's own uid, SUDO_UID or nobody for a root
server, or STIGMER_SANDBOX_USER: workspace.py), ``--cap-drop ALL``, no-new-privileges, the
agent as PID 1 with its seccomp filter (no set-uid/set-gid file: agent/nosuid.py), runtime and
config directories in the workspace hidden (workspace.py), pids/memory/CPU limits, tmpfs /tmp
and /var/tmp of a set size, by default a network of the server's own that sandboxes cannot cross
to each other or to the host (network.py), optional read-only root. Every container is labelled
with its server and kernel, so the server can find its own and those of dead servers.

No Docker call is made here: the provisioner (docker.py) hands in the network mode and the
writable layer's size limit, which need the engine.
"""

from __future__ import annotations

import hashlib
import logging
import os
import pwd
import re
from pathlib import Path
from typing import Any

from ..config import Config
from ..runtime import RuntimeDir
from .base import AgentSpec
from .workspace import SandboxUser, hidden_paths

log = logging.getLogger("stigmer.sandbox")

LABEL_SERVER = "stigmer.server"
LABEL_RUNTIME = "stigmer.runtime_dir"
LABEL_KERNEL = "stigmer.kernel"
LABEL_KERNEL_ID = "stigmer.kernel_id"
#: Where things are inside a sandbox container.
AGENT_SOCKET_DIR = "/run/stigmer"
KERNEL_DIR = "/run/stigmer-kernel"
PACKAGE_DIR = "/opt/stigmer"
WORKSPACE = "/workspace"
HOME = "/tmp/home"
#: World-writable directories of the image, each a tmpfs of STIGMER_SANDBOX_TMPFS_SIZE.
SCRATCH_DIRS = ("/tmp", "/var/tmp")
#: Debian's other world-writable directory, for lock files: a small tmpfs of fixed size.
LOCK_DIR = "/run/lock"
LOCK_DIR_SIZE = "8m"
#: The empty read-only tmpfs over a runtime or config directory inside the workspace.
MASK_OPTIONS = "ro,nosuid,nodev,noexec,size=4k"
#: The name a sandbox reaches the broker's host by (STIGMER_SANDBOX_TRANSPORT=tcp).
TCP_HOST = "host.docker.internal"


def server_id(runtime: RuntimeDir) -> str:
    """The value of :data:`LABEL_SERVER` for the server of ``runtime``."""
    return hashlib.sha256(str(runtime.path.resolve()).encode()).hexdigest()[:16]


def create_args(
    spec: AgentSpec,
    image: str,
    user: SandboxUser,
    *,
    config: Config,
    runtime: RuntimeDir,
    server: str,
    tcp_host_address: str,
    network_mode: str,
    storage_opt: dict[str, str] | None,
    package: Path | None = None,
) -> dict[str, Any]:
    """The keyword arguments of ``containers.create`` for ``spec``'s agent in ``image``, run as
    ``user``. ``server``: :func:`server_id`; ``tcp_host_address``: what :data:`TCP_HOST` names;
    ``network_mode`` and ``storage_opt``: from the provisioner, which asks the engine;
    ``package``: the directory mounted as the package (by default this very one)."""
    package = package or Path(__file__).resolve().parents[1]  # or its compiled copy (bytecode.py)
    workspace = spec.workspace or spec.cwd
    tcp = spec.curve is not None  # the agent reaches spec.endpoint over the network
    endpoint = spec.endpoint if tcp else f"ipc://{AGENT_SOCKET_DIR}/{runtime.agent_socket.name}"
    args = [
        "python3", "-m", "stigmer_kernel.agent",
        "--endpoint", endpoint,
        "--kernel-id-file", f"{KERNEL_DIR}/kernel_id",  # a restart may serve a new id
        "--key-file", f"{KERNEL_DIR}/key",
        "--cwd", WORKSPACE,
        "--workdir", KERNEL_DIR,
        "--shell", "bash",
        "--heartbeat-interval", str(spec.heartbeat_interval),
        "--orphan-timeout", str(spec.orphan_timeout),
        "--timeout", str(spec.command_timeout or 0),
        "--output-limit", str(spec.output_limit),
        "--journal-bytes", str(spec.journal_bytes),
        "--sandbox",  # its seccomp filter: no set-uid/set-gid file ever (agent/nosuid.py)
        *(["--curve-file", f"{KERNEL_DIR}/curve"] if tcp else []),
    ]  # fmt: skip
    volumes = {
        # Read-only: connecting to agents.sock needs no write access to the mount, and
        # code in the sandbox must not remove or replace the socket other kernels use.
        str(runtime.agents_dir): {"bind": AGENT_SOCKET_DIR, "mode": "ro"},
        # Writable: the agent deletes its key and writes bashrc, exit.sh, stdin and
        # stdin.fifo here (its own kernel's directory only).
        str(spec.workdir): {"bind": KERNEL_DIR, "mode": "rw"},
        str(package): {"bind": f"{PACKAGE_DIR}/stigmer_kernel", "mode": "ro"},
        str(workspace): {"bind": WORKSPACE, "mode": "rw"},
    }
    if tcp:
        del volumes[str(runtime.agents_dir)]  # no unix socket to cross the mount
    create: dict[str, Any] = {
        "image": image,
        "command": args,
        "entrypoint": [],
        "user": str(user),  # never root (workspace.py)
        "environment": {
            "PYTHONPATH": PACKAGE_DIR,
            "PYTHONDONTWRITEBYTECODE": "1",
            "HOME": HOME,
            "USER": _user_name(user),
            "STIGMER_SANDBOX": "1",
            # A disposable sandbox: let pip install into Debian-based Pythons (PEP 668).
            "PIP_BREAK_SYSTEM_PACKAGES": "1",
        },
        "volumes": volumes,
        # tcp: the broker's host by a name that works on Linux and Docker Desktop alike.
        "extra_hosts": {TCP_HOST: tcp_host_address} if tcp else None,
        "working_dir": WORKSPACE,
        "labels": {
            LABEL_SERVER: server,
            LABEL_RUNTIME: str(runtime.path),
            LABEL_KERNEL: spec.kernel_name,
            LABEL_KERNEL_ID: spec.kernel_id,
            "stigmer.image": image,
        },
        "name": "stigmer-" + re.sub(r"[^a-zA-Z0-9_.-]", "_", spec.kernel_id),
        "hostname": "sandbox",
        # No init: the agent is PID 1, so every process of the container has its seccomp
        # filter (an unfiltered docker-init could be ptraced by a command into chmod 4755).
        "init": False,
        "cap_drop": ["ALL"],
        "security_opt": ["no-new-privileges"],
        "pids_limit": config.sandbox_pids,
        "mem_limit": config.sandbox_memory,
        "nano_cpus": int(config.sandbox_cpus * 1e9),
        # The isolated network is made ready first (firewall: the tcp broker port let in).
        "network_mode": network_mode,
        "read_only": config.sandbox_read_only,
        # Capped scratch space; a container kept for reuse keeps its /tmp (and HOME) on disk.
        "tmpfs": tmpfs_mounts(config.sandbox_tmpfs_size)
        if config.sandbox_cleanup or config.sandbox_read_only
        else None,
        "storage_opt": storage_opt,
    }
    hide(create, workspace, config)
    return create


def hide(create: dict[str, Any], workspace: str, config: Config) -> None:
    """Cover the runtime and config directories (and files) inside the workspace with
    empty read-only mounts: the sandbox sees an empty directory, or /dev/null."""
    dirs, files = hidden_paths(workspace, config)
    if dirs:
        tmpfs = dict(create.get("tmpfs") or {})
        for path in dirs:
            tmpfs[_inside(workspace, path)] = MASK_OPTIONS
        create["tmpfs"] = tmpfs
    if files:
        from docker.types import Mount

        create["mounts"] = [
            Mount(_inside(workspace, path), "/dev/null", type="bind", read_only=True)
            for path in files
        ]
    if dirs or files:
        log.info("sandbox workspace %s: hidden in it: %s", workspace, ", ".join(dirs + files))


def tmpfs_mounts(size: str) -> dict[str, str]:
    """The tmpfs mounts over the image's world-writable directories: what a sandbox that runs as
    an unprivileged uid can write outside /workspace and its kernel directory, capped."""
    options = "rw,exec,nosuid,nodev,mode=1777,size="
    mounts = {path: options + size for path in SCRATCH_DIRS}
    mounts[LOCK_DIR] = options + LOCK_DIR_SIZE
    return mounts


def _inside(workspace: str, path: str) -> str:
    """Where the host ``path`` inside ``workspace`` is in the container."""
    return f"{WORKSPACE}/{os.path.relpath(path, workspace)}"


def _user_name(user: SandboxUser) -> str:
    """$USER in a sandbox: the host's name for its uid, else "stigmer"."""
    if user.uid == os.getuid():
        return os.environ.get("USER", "stigmer")
    try:
        return pwd.getpwuid(user.uid).pw_name
    except KeyError:
        return "stigmer"
