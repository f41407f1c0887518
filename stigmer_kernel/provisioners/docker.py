"""Sandbox mode: the agent runs inside a Docker container, one container per kernel.

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
and /var/tmp of a set size, by default a
network of the server's own that sandboxes cannot cross to each other or to the host
(network.py), optional read-only root. Every container is labelled with its server and kernel;
the server removes its containers when they expire and when it stops, and at start it removes
those of dead servers.

Nothing here blocks the broker's event loop: Docker calls run on a small thread pool, and the
engine check (:meth:`DockerProvisioner.check_available`) pings on a thread of its own.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import hashlib
import logging
import os
import pwd
import re
import shutil
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..config import Config
from ..curve import write_agent_keys
from ..errors import ModeUnavailable, RequestError
from ..protocol import ErrorName
from ..runtime import RuntimeDir
from .base import AgentHandle, AgentSpec, Provisioner
from .images import ImageResolver, Progress
from .network import SandboxNetwork, reap_networks
from .workspace import SandboxUser, check_workspace, hidden_paths, sandbox_user

log = logging.getLogger("stigmer.sandbox")

#: The basic tier's published tag: the only image built from sandbox/ when it cannot be had.
BASIC_TIER_TAG = "ghcr.io/stigmer/agent-sandbox-basic:latest"
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
#: Seconds an answer of the engine check is trusted, whether the engine answered or not.
ENGINE_CHECK_TTL = 2.0
#: Seconds the event loop waits for a fresh ping (a local engine, or a missing socket, answers in
#: milliseconds); a slower ping goes on in the background.
ENGINE_CHECK_WAIT = 0.5
#: Seconds a ping may take before the engine counts as not reachable.
ENGINE_PING_TIMEOUT = 3


def engine_unreachable() -> str:
    """The one line that says there is no engine, and what to do."""
    host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    return f"Docker engine not reachable at {host} — start Docker or use --mode local"


def ping_engine() -> tuple[str | None, float]:
    """(None if the engine answered, else :func:`engine_unreachable`; monotonic time of the answer).

    Blocks for up to :data:`ENGINE_PING_TIMEOUT` seconds: never call it on the event loop.
    """
    try:
        import docker

        probe = docker.from_env(timeout=ENGINE_PING_TIMEOUT)
        try:
            probe.ping()
        finally:
            probe.close()
    except Exception:  # DockerException, ConnectionError, FileNotFoundError...
        return engine_unreachable(), time.monotonic()
    return None, time.monotonic()


def server_id(runtime: RuntimeDir) -> str:
    return hashlib.sha256(str(runtime.path.resolve()).encode()).hexdigest()[:16]


class DockerAgent(AgentHandle):
    """A sandbox container (being) started for one kernel incarnation."""

    def __init__(self, provisioner: DockerProvisioner, spec: AgentSpec) -> None:
        self.provisioner = provisioner
        self.spec = spec
        self.image = spec.image or provisioner.config.sandbox_image
        self.container_id: str | None = None
        self.failure: str | None = None  # why it could not start, or how it ended
        self.removed = False
        self.future: concurrent.futures.Future[None] | None = None
        self.last_oom = 0.0  # monotonic time of the container's last out-of-memory event
        self.runnable: str | None = None  # the image the container runs (``image`` resolved)
        self._removing = threading.Lock()  # kill() and cleanup() may both queue _remove
        self.reused = False  # a stopped container of an earlier kernel of this name, restarted
        self.user: str | None = None  # uid:gid its commands run as

    @property
    def workdir(self) -> Path:
        """The kernel's directory on the host (mounted at KERNEL_DIR)."""
        return self.spec.workdir

    @property
    def pid(self) -> int | None:
        return None  # a process of another pid namespace: never signalled from the host

    @property
    def resource_id(self) -> str | None:
        return self.container_id

    def poll(self) -> str | None:
        return self.failure

    def kill(self) -> None:
        self.provisioner.submit(self._remove)

    def exit_hint(self, since: float) -> str | None:
        if self.last_oom >= since:
            return (
                f"killed by the out-of-memory killer: the sandbox's memory limit is "
                f"{self.provisioner.config.sandbox_memory} (STIGMER_SANDBOX_MEMORY)"
            )
        return None

    def cleanup(self) -> None:
        self.provisioner.submit(self._remove)

    def _remove(self) -> None:
        with self._removing:
            self._remove_once()

    def _remove_once(self) -> None:
        if self.removed:
            return
        if self.future is not None:
            with contextlib.suppress(Exception):
                self.future.result(timeout=120)  # let a start in flight finish first
        self.removed = True
        keep = False
        if self.container_id:
            # An orderly end (the agent exited 0 when asked: expiry, shutdown, restart) leaves a
            # container worth restarting for the next kernel of this name; a crash does not.
            keep = self.failure is not None and self.failure.endswith("(code 0)")
            keep = self.provisioner.remove_container(self.container_id, reusable=keep)
        if self.failure is None:
            self.failure = "the sandbox container was removed"  # poll() now says it ended
        shutil.rmtree(self.spec.workdir, ignore_errors=True)
        if keep and self.container_id and self.runnable:
            self.provisioner.keep_stopped(self)

    def describe(self) -> dict[str, Any]:
        return {
            "pid": None,
            "container": self.container_id[:12] if self.container_id else None,
            "image": self.image,
            "container_reused": self.reused,
            "sandbox_user": self.user,
            **self.provisioner.network.describe(),
        }

    def renamed(self, kernel_name: str) -> None:
        """A named kernel took this (pooled) container over: keep it for that name."""
        self.spec = dataclasses.replace(self.spec, kernel_name=kernel_name)


class DockerProvisioner(Provisioner):
    mode = "sandbox"

    def __init__(self, config: Config, runtime: RuntimeDir) -> None:
        self.config = config
        self.runtime = runtime
        self.server = server_id(runtime)
        self._client: Any = None
        self._client_lock = threading.Lock()
        self._pool = concurrent.futures.ThreadPoolExecutor(4, thread_name_prefix="stigmer-docker")
        self._handles: dict[str, DockerAgent] = {}
        self._events: Any = None
        self._watcher: threading.Thread | None = None
        # The engine check: the ping in flight, and the last answer (None: the engine answered).
        self._pinger = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="stigmer-ping")
        self._ping: concurrent.futures.Future[tuple[str | None, float]] | None = None
        self._engine_error: str | None = None
        self._checked_at: float | None = None  # monotonic time of the last answer
        # sandbox_cleanup=false: stopped containers by kernel name, restarted by the next kernel
        # of that name (same image and workspace) instead of creating a new one.
        self._stopped: dict[str, _Stopped] = {}
        self.tcp_host_address = "host-gateway"  # set by the broker for the tcp transport
        self._stopped_lock = threading.Lock()
        self.images = ImageResolver(
            self.client, BASIC_TIER_TAG, runtime.path / "images.json", config.sandbox_ca_file
        )
        owner = {LABEL_SERVER: self.server, LABEL_RUNTIME: str(runtime.path)}
        self.network = SandboxNetwork(self.client, self.server, owner, config.sandbox_network)
        self._storage: tuple[str, str] | None = None  # the engine's (storage driver, backing fs)

    # -- the engine -----------------------------------------------------------------------------
    def client(self) -> Any:
        with self._client_lock:
            if self._client is None:
                import docker

                self._client = docker.from_env(timeout=120)
            return self._client

    def check_available(self) -> None:
        """Raise :class:`ModeUnavailable` at once when no Docker engine answers.

        Called on the event loop, so it never waits on the engine for long: the engine is pinged
        on a thread of its own and each answer, yes or no, is trusted for
        :data:`ENGINE_CHECK_TTL` seconds. When the answer is stale a new ping starts, and the
        loop waits :data:`ENGINE_CHECK_WAIT` seconds at most for it; a ping still out after that
        leaves the previous answer in force. With no answer yet, the request goes through and
        :meth:`_start` waits for the ping (off the loop), failing the kernel with the same line.
        """
        self._take_ping_answer()
        stale = self._checked_at is None or time.monotonic() - self._checked_at >= ENGINE_CHECK_TTL
        if self._ping is None and stale:
            self._ping = self._pinger.submit(ping_engine)
            concurrent.futures.wait([self._ping], timeout=ENGINE_CHECK_WAIT)
            self._take_ping_answer()
        if self._engine_error is not None:
            raise ModeUnavailable(self._engine_error, ErrorName.MODE_UNAVAILABLE)
        if self._checked_at is not None:
            self._ensure_watcher()

    def _take_ping_answer(self) -> None:
        """Adopt the answer of the ping in flight, if it has come (on the loop thread only)."""
        ping = self._ping
        if ping is not None and ping.done():
            self._ping = None
            self._engine_error, self._checked_at = ping.result()

    def submit(self, fn: Any, *args: Any) -> concurrent.futures.Future[Any]:
        return self._pool.submit(fn, *args)

    # -- starting -------------------------------------------------------------------------------
    def start(self, spec: AgentSpec) -> DockerAgent:
        handle = DockerAgent(self, spec)
        handle.future = self._pool.submit(self._start, handle, self._ping)
        return handle

    def _start(
        self, handle: DockerAgent, ping: concurrent.futures.Future[tuple[str | None, float]] | None
    ) -> None:
        """Start the container (on the pool). ``ping``: the engine check still out when the
        kernel was let through, whose answer comes first."""
        spec = handle.spec
        progress: Progress = spec.on_progress or (lambda _text: None)
        unreachable = ping.result()[0] if ping is not None else None
        if unreachable is not None:
            handle.failure = f"could not start the sandbox: {unreachable}"
            log.error("sandbox %s: %s", spec.kernel_name, handle.failure)
            return
        try:
            runnable = self.images.resolve(
                handle.image, self.config.sandbox_auto_pull, spec.requirements, progress
            )
            handle.runnable = runnable
            try:  # checked when the kernel was made; again here for the pool and restarts
                check_workspace(spec.workspace or spec.cwd, self.config)
                user = sandbox_user(self.config)
            except RequestError as exc:
                raise _StartError(str(exc)) from None
            handle.user = str(user)
            stopped = self._take_stopped(spec.kernel_name, runnable, spec.workspace or spec.cwd)
            if stopped is not None:
                # Its mounts are fixed: this incarnation uses the directory it was made with.
                handle.spec = spec = dataclasses.replace(spec, workdir=stopped.workdir)
            spec.workdir.mkdir(mode=0o700, parents=True, exist_ok=True)
            (spec.workdir / "kernel_id").write_text(spec.kernel_id, encoding="ascii")
            if spec.curve is not None:
                write_agent_keys(spec.workdir / "curve", spec.curve)
            key_file = spec.workdir / "key"
            fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(spec.key)
            self._hand_over(spec.workdir, user)
            container = self._restart_stopped(handle, stopped) if stopped is not None else None
            if container is None:
                container = self.client().containers.create(**self._create_args(spec, runnable))
                handle.container_id = container.id
                self._handles[container.id] = handle
                container.start()
            log.info(
                "sandbox %s: container %s (%s%s)",
                spec.kernel_name,
                container.id[:12],
                runnable,
                ", stopped one restarted" if handle.reused else "",
            )
        except _StartError as exc:
            handle.failure = f"could not start the sandbox: {exc}"
            log.error("sandbox %s: %s", spec.kernel_name, handle.failure)
        except Exception as exc:
            text = str(getattr(exc, "explanation", None) or exc).strip().splitlines()
            detail = text[-1] if text else type(exc).__name__
            if "Connection aborted" in detail or "connect" in detail.lower():
                detail = engine_unreachable()
            handle.failure = f"could not start the sandbox: {detail}"
            log.error("sandbox %s: %s", spec.kernel_name, handle.failure)

    def _create_args(self, spec: AgentSpec, image: str) -> dict[str, Any]:
        config = self.config
        package = Path(__file__).resolve().parents[1]
        workspace = spec.workspace or spec.cwd
        user = sandbox_user(config)
        tcp = spec.curve is not None  # the agent reaches spec.endpoint over the network
        endpoint = (
            spec.endpoint if tcp else f"ipc://{AGENT_SOCKET_DIR}/{self.runtime.agent_socket.name}"
        )
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
            "--sandbox",  # its seccomp filter: no set-uid/set-gid file ever (agent/nosuid.py)
            *(["--curve-file", f"{KERNEL_DIR}/curve"] if tcp else []),
        ]  # fmt: skip
        volumes = {
            # Read-only: connecting to agents.sock needs no write access to the mount, and
            # code in the sandbox must not remove or replace the socket other kernels use.
            str(self.runtime.agents_dir): {"bind": AGENT_SOCKET_DIR, "mode": "ro"},
            # Writable: the agent deletes its key and writes bashrc, exit.sh, stdin and
            # stdin.fifo here (its own kernel's directory only).
            str(spec.workdir): {"bind": KERNEL_DIR, "mode": "rw"},
            str(package): {"bind": f"{PACKAGE_DIR}/stigmer_kernel", "mode": "ro"},
            str(workspace): {"bind": WORKSPACE, "mode": "rw"},
        }
        if tcp:
            del volumes[str(self.runtime.agents_dir)]  # no unix socket to cross the mount
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
            "extra_hosts": {TCP_HOST: self.tcp_host_address} if tcp else None,
            "working_dir": WORKSPACE,
            "labels": {
                LABEL_SERVER: self.server,
                LABEL_RUNTIME: str(self.runtime.path),
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
            "network_mode": self.network.mode(
                int(spec.endpoint.rsplit(":", 1)[1]) if tcp else None
            ),
            "read_only": config.sandbox_read_only,
            # Capped scratch space; a container kept for reuse keeps its /tmp (and HOME) on disk.
            "tmpfs": tmpfs_mounts(config.sandbox_tmpfs_size)
            if config.sandbox_cleanup or config.sandbox_read_only
            else None,
            "storage_opt": self._storage_opt(),
        }
        self._hide(create, workspace)
        return create

    def _hide(self, create: dict[str, Any], workspace: str) -> None:
        """Cover the runtime and config directories (and files) inside the workspace with
        empty read-only mounts: the sandbox sees an empty directory, or /dev/null."""
        dirs, files = hidden_paths(workspace, self.config)
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

    def _hand_over(self, workdir: Path, user: SandboxUser) -> None:
        """A root server gives its sandbox uid what the agent must reach: its kernel directory
        (and the files in it) and the agent socket. The runtime directory stays 0700 root, so
        no host user reaches either; ``agents/`` (holding nothing else) becomes 0755."""
        if os.getuid() != 0 or user.uid == 0:
            return
        for path in (workdir, *workdir.iterdir()):
            os.chown(path, user.uid, user.gid, follow_symlinks=False)
        self._share_agent_socket(user)

    def _share_agent_socket(self, user: SandboxUser) -> None:
        agents = self.runtime.agents_dir
        with contextlib.suppress(FileNotFoundError):  # tcp transport: no socket to share
            os.chown(self.runtime.agent_socket, user.uid, user.gid, follow_symlinks=False)
            os.chmod(agents, 0o755)

    def _storage_opt(self) -> dict[str, str] | None:
        """The writable layer's size limit (STIGMER_SANDBOX_DISK); refused at once, with what to
        do, where the storage driver cannot apply it (overlay2 needs xfs with pquota)."""
        size = self.config.sandbox_disk
        if size is None:
            return None
        if self._storage is None:
            info = self.client().info()
            backing = dict(info.get("DriverStatus") or []).get("Backing Filesystem", "")
            self._storage = (str(info.get("Driver", "")), str(backing))
        driver, backing = self._storage
        if driver == "overlay2" and backing != "xfs":
            raise _StartError(
                f"STIGMER_SANDBOX_DISK={size}: Docker's overlay2 storage driver limits a "
                f"container's disk only on xfs mounted with pquota, and here it is on "
                f"{backing or 'another filesystem'} — unset STIGMER_SANDBOX_DISK"
            )
        return {"size": size}

    # -- stopped containers kept for reuse (sandbox_cleanup=false) -------------------------------
    def keep_stopped(self, handle: DockerAgent) -> None:
        """Remember ``handle``'s stopped container for the next kernel of its name."""
        assert handle.container_id is not None and handle.runnable is not None
        spec = handle.spec
        entry = _Stopped(
            handle.container_id, spec.workdir, handle.runnable, spec.workspace or spec.cwd
        )
        with self._stopped_lock:
            older = self._stopped.pop(spec.kernel_name, None)
            self._stopped[spec.kernel_name] = entry
        if older is not None and older.container_id != entry.container_id:
            self._discard(older.container_id)  # one stopped container per kernel name
        log.info("sandbox %s: container %s stopped for reuse", spec.kernel_name, entry.short)

    def _take_stopped(self, name: str, runnable: str, workspace: str) -> _Stopped | None:
        if self.config.sandbox_cleanup:
            return None
        with self._stopped_lock:
            entry = self._stopped.get(name)
            if entry is None or (entry.image, entry.workspace) != (runnable, workspace):
                return None  # another image or workspace: a new container (the old one stays)
            del self._stopped[name]
        return entry

    def _restart_stopped(self, handle: DockerAgent, entry: _Stopped) -> Any:
        """Start ``entry``'s container again for ``handle``; None (and the container removed)
        if it cannot be."""
        try:
            container = self.client().containers.get(entry.container_id)
            handle.container_id = container.id
            self._handles[container.id] = handle  # before start: its events are ours
            container.start()
        except Exception as exc:
            log.info("stopped container %s not reusable (%s): a new one", entry.short, exc)
            self._handles.pop(entry.container_id, None)
            handle.container_id = None
            self._discard(entry.container_id)
            return None
        handle.reused = True
        return container

    def _discard(self, container_id: str) -> None:
        with contextlib.suppress(Exception):
            self.client().containers.get(container_id).remove(force=True)

    # -- removal and leftovers ------------------------------------------------------------------
    def remove_container(self, container_id: str, reusable: bool = False) -> bool:
        """Remove the container, or with ``sandbox_cleanup=false`` only stop it.

        True if it was stopped and ``reusable``: the caller keeps it for the next kernel.
        """
        import docker.errors

        kept = False
        try:
            container = self.client().containers.get(container_id)
            if self.config.sandbox_cleanup:
                container.remove(force=True)
            else:
                container.stop(timeout=2)
                kept = reusable
        except docker.errors.NotFound:
            pass
        except Exception as exc:
            log.warning("could not remove container %s: %s", container_id[:12], exc)
        self._handles.pop(container_id, None)
        return kept

    def can_pool(self, image: str | None, requirements: str | None) -> bool:
        return not requirements and (not image or image == self.config.sandbox_image)

    def set_tcp_host(self, address: str) -> None:
        self.tcp_host_address = address  # what TCP_HOST names inside containers

    def adopt(self, record: Mapping[str, Any], workdir: Path) -> DockerAgent:
        """A handle on the container a previous broker started for the record's kernel (the one
        of its ``container`` if known: a restarted stopped container is labelled with its first
        incarnation)."""
        kernel_id, kernel_name = str(record["id"]), str(record["name"])
        container = record.get("container")
        container_id = container if isinstance(container, str) else None
        spec = AgentSpec(
            kernel_id=kernel_id,
            kernel_name=kernel_name,
            key=b"",
            endpoint="",
            cwd=WORKSPACE,
            workdir=workdir,
            shell="bash",
            heartbeat_interval=0,
            orphan_timeout=0,
            command_timeout=None,
            output_limit=0,
        )
        handle = DockerAgent(self, spec)
        try:
            found = self.client().containers.list(
                all=True,
                ignore_removed=True,
                filters={"id": container_id, "label": f"{LABEL_SERVER}={self.server}"}
                if container_id
                else {"label": f"{LABEL_KERNEL_ID}={kernel_id}"},
            )
        except Exception as exc:
            handle.failure = f"cannot find its container: {exc}"
            return handle
        if not found:
            handle.failure = "its container is gone"
            return handle
        handle.container_id = found[0].id
        handle.image = found[0].labels.get("stigmer.image", handle.image)
        handle.runnable = handle.image
        handle.user = found[0].attrs.get("Config", {}).get("User") or None
        for mount in found[0].attrs.get("Mounts") or []:
            if mount.get("Destination") == WORKSPACE and mount.get("Source"):
                handle.spec = dataclasses.replace(spec, workspace=str(mount["Source"]))
        self._handles[found[0].id] = handle
        if os.getuid() == 0:
            with contextlib.suppress(RequestError):  # its agent comes back to a new socket
                self._share_agent_socket(sandbox_user(self.config))
        self._ensure_watcher()
        return handle

    def reap_leftovers(
        self, keep: set[str] | None = None, before: float | None = None
    ) -> int | None:
        """Remove containers left by servers that are not running (this one's past included),
        except those of kernels in ``keep`` (being re-adopted) and the still running containers
        of another runtime directory's server (it may be restarting). Returns how many went,
        or None if the engine could not be asked (the caller tries again later)."""
        removed = 0
        unreachable, _ = ping_engine()  # a hung engine costs a few seconds, not the client's 120
        if unreachable is not None:
            log.info("no leftover check yet: %s", unreachable)
            return None
        try:
            containers = self.client().containers.list(
                all=True, ignore_removed=True, filters={"label": LABEL_SERVER}
            )
        except Exception as exc:
            log.info("no leftover check yet: %s", exc)
            return None
        for container in containers:
            labels = container.labels or {}
            if labels.get(LABEL_KERNEL_ID) in (keep or set()) or container.id in (keep or set()):
                continue
            if before is not None and _created(container) >= before:
                continue  # started by this very server (e.g. its warm pool) meanwhile
            owner = labels.get(LABEL_RUNTIME)
            if labels.get(LABEL_SERVER) == self.server:
                alive = False  # we hold this runtime dir's lock: it is a dead server's container
            elif container.status == "running":
                # Another server's, its agent still running: that server may be restarting and
                # re-adopt it (or live where its runtime directory cannot be seen from here, as
                # in the compose setup). An agent whose server stays away exits after its orphan
                # timeout; the stopped container is removed next time.
                alive = True
            else:
                alive = isinstance(owner, str) and RuntimeDir(Path(owner)).server_running()
            if not alive:
                with contextlib.suppress(Exception):
                    container.remove(force=True)
                    removed += 1
        if removed:
            log.info("removed %d leftover sandbox container(s) of stopped servers", removed)

        def network_dead(labels: Any) -> bool:
            if labels.get(LABEL_SERVER) == self.server:
                return False  # this server's own (maybe with re-adopted containers): close()
            owner = labels.get(LABEL_RUNTIME)
            return not (isinstance(owner, str) and RuntimeDir(Path(owner)).server_running())

        try:
            reap_networks(self.client(), LABEL_SERVER, network_dead)
        except Exception as exc:
            log.info("no leftover network check: %s", exc)
        return removed

    def _ensure_watcher(self) -> None:
        if self._watcher is None or not self._watcher.is_alive():
            self._watcher = threading.Thread(
                target=self._watch, name="stigmer-docker-events", daemon=True
            )
            self._watcher.start()

    def _watch(self) -> None:
        """Container deaths (exit, OOM kill) from Docker's event stream."""
        try:
            self._events = self.client().events(
                decode=True,
                filters={
                    "type": "container",
                    "label": f"{LABEL_SERVER}={self.server}",
                    "event": ["die", "oom"],
                },
            )
            for event in self._events:
                handle = self._handles.get(str(event.get("id", "")))
                if handle is None:
                    continue
                attrs = (event.get("Actor") or {}).get("Attributes") or {}
                action = event.get("Action") or event.get("status")
                if action == "oom":
                    # A process of the sandbox hit the memory limit; the kernel may live on.
                    handle.last_oom = time.monotonic()
                    continue
                if handle.failure is not None or handle.removed:
                    continue
                code = attrs.get("exitCode")
                if time.monotonic() - handle.last_oom < 5:
                    handle.failure = (
                        f"the sandbox ran out of memory (limit {self.config.sandbox_memory}) "
                        "and its container was killed"
                    )
                elif code == "137":
                    handle.failure = "the sandbox container was killed (SIGKILL, e.g. docker kill)"
                else:
                    said = self._agent_said(str(event.get("id", ""))) if code != "0" else ""
                    handle.failure = f"the sandbox container exited (code {code}){said}"
        except Exception as exc:  # the stream closes at shutdown, or the engine went away
            log.debug("docker event stream ended: %s", exc)

    def _agent_said(self, container_id: str) -> str:
        """The agent's last words, after a colon, if it refused to start (``agent: ...`` on
        stderr, e.g. no seccomp filter); else an empty string."""
        try:
            tail = self.client().containers.get(container_id).logs(tail=1, stdout=False)
        except Exception:
            return ""
        line = bytes(tail).decode("utf-8", "replace").strip()
        return f": {line.removeprefix('agent: ')}" if line.startswith("agent: ") else ""

    def close(self) -> None:
        """Remove every container of this server, then its network (at shutdown)."""
        self._pinger.shutdown(wait=False, cancel_futures=True)
        if self._client is None:
            self._pool.shutdown(wait=False)
            return
        with self._stopped_lock:
            self._stopped.clear()  # removed below with every other container of this server
        for handle in list(self._handles.values()):
            with contextlib.suppress(Exception):
                handle._remove()
        leftovers: list[Any] = []
        with contextlib.suppress(Exception):
            leftovers = self.client().containers.list(
                all=True, ignore_removed=True, filters={"label": f"{LABEL_SERVER}={self.server}"}
            )
        for container in leftovers:  # one that is already gone does not spare the others
            with contextlib.suppress(Exception):
                container.remove(force=True)
        if self._events is not None:
            with contextlib.suppress(Exception):
                self._events.close()
        self._pool.shutdown(wait=True, cancel_futures=True)
        with contextlib.suppress(Exception):
            self.network.close()  # no start can follow: remove it, and its firewall rules
        with contextlib.suppress(Exception):
            self._client.close()


class _StartError(Exception):
    """A sandbox that cannot start for a reason of ours, said as it is."""


@dataclasses.dataclass(frozen=True)
class _Stopped:
    """A stopped container kept for the next kernel of its name."""

    container_id: str
    workdir: Path  # its kernel directory mount's source: where the next agent's key goes
    image: str
    workspace: str

    @property
    def short(self) -> str:
        return self.container_id[:12]


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


def _created(container: Any) -> float:
    """A container's creation time (epoch seconds); 0 if unknown."""
    from datetime import datetime

    text = str(container.attrs.get("Created", ""))
    try:
        return datetime.fromisoformat(text[:26].rstrip("Z") + "+00:00").timestamp()
    except ValueError:
        return 0.0
