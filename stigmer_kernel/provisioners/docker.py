"""Sandbox mode: the agent runs inside a Docker container, one container per kernel.

The provisioner: it creates each kernel's container on a small thread pool (what the container
is given, and how it is hardened: container.py), restarts a stopped one for the next kernel of
its name with ``sandbox_cleanup=false``, re-adopts a previous server's containers, follows their
deaths on Docker's event stream and removes them (the handle: docker_agent.py). The server
removes its containers when they expire and when it stops, and at start it removes those of
dead servers.

Nothing here blocks the broker's event loop: Docker calls run on the thread pool, and the
engine check (:meth:`DockerProvisioner.check_available`, engine.py) pings on a thread of its own.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import functools
import logging
import os
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..config import Config
from ..curve import write_agent_keys
from ..errors import ModeUnavailable, RequestError
from ..protocol import ErrorName
from ..runtime import RuntimeDir
from .base import AgentSpec, Provisioner
from .bytecode import AgentPackage
from .container import (
    LABEL_KERNEL_ID,
    LABEL_RUNTIME,
    LABEL_SERVER,
    WORKSPACE,
    create_args,
    server_id,
)
from .docker_agent import DockerAgent
from .engine import EngineCheck, engine_unreachable
from .images import ImageResolver, Progress
from .leftovers import reap_leftovers
from .netns import LABEL_NETNS, Holders, holder_args, joined
from .network import SandboxNetwork
from .stopped import Stopped, StoppedContainers
from .workspace import SandboxUser, check_workspace, sandbox_user

log = logging.getLogger("stigmer.sandbox")

#: The basic tier's published tag: the only image built from sandbox/ when it cannot be had.
BASIC_TIER_TAG = "ghcr.io/stigmer/agent-sandbox-basic:latest"


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
        self._engine = EngineCheck()
        self._stopped = StoppedContainers()  # (sandbox_cleanup=false)
        self.tcp_host_address = "host-gateway"  # set by the broker for the tcp transport
        self.images = ImageResolver(
            self.client, BASIC_TIER_TAG, runtime.path / "images.json", config.sandbox_ca_file
        )
        self.owner = {LABEL_SERVER: self.server, LABEL_RUNTIME: str(runtime.path)}
        self.network = SandboxNetwork(self.client, self.server, self.owner, config.sandbox_network)
        # Network namespaces made ahead (netns.py): containers kept for reuse never join one.
        self.holders = Holders(self._run, self._discard, self._pool.submit)
        self._holder_of: dict[str, str] = {}  # container id -> the holder it joined
        self._storage: tuple[str, str] | None = None  # the engine's (storage driver, backing fs)
        self.package = AgentPackage(Path(__file__).resolve().parents[1], runtime.path)

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
        :data:`~.engine.ENGINE_CHECK_TTL` seconds. When the answer is stale a new ping starts,
        and the loop waits :data:`~.engine.ENGINE_CHECK_WAIT` seconds at most for it; a ping
        still out after that leaves the previous answer in force (:class:`~.engine.EngineCheck`).
        With no answer yet, the request goes through and :meth:`_start` waits for the ping (off
        the loop), failing the kernel with the same line.
        """
        error = self._engine.error()
        if error is not None:
            raise ModeUnavailable(error, ErrorName.MODE_UNAVAILABLE)
        if self._engine.answered:
            self._ensure_watcher()

    def can_pool(self, image: str | None, requirements: str | None) -> bool:
        """A pooled container runs the configured image with no requirements."""
        return not requirements and (not image or image == self.config.sandbox_image)

    def submit(self, fn: Any, *args: Any) -> concurrent.futures.Future[Any]:
        return self._pool.submit(fn, *args)

    # -- starting -------------------------------------------------------------------------------
    def start(self, spec: AgentSpec) -> DockerAgent:
        handle = DockerAgent(self, spec)
        self.package.ensure()  # at the first start, for the next ones
        handle.future = self._pool.submit(self._start, handle, self._engine.in_flight)
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
                container_id = self._create_and_start(
                    handle, self._create_args(spec, runnable, user)
                )
            else:
                container_id = container.id
            log.info(
                "sandbox %s: container %s (%s%s)",
                spec.kernel_name,
                container_id[:12],
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

    def _create(self, create: dict[str, Any]) -> str:
        """Create the container; its id. As ``containers.create`` without the inspect that
        follows it there (one Docker round trip fewer: nothing of it is needed)."""
        client = self.client()
        try:  # the SDK's own translation of containers.create's arguments (a private helper)
            from docker.models.containers import _create_container_args
        except ImportError:  # an SDK without it: its public call, inspect included
            return str(client.containers.create(**create).id)
        kwargs = {**create, "version": client.api._version}
        return str(client.api.create_container(**_create_container_args(kwargs))["Id"])

    def _create_and_start(self, handle: DockerAgent, create: dict[str, Any]) -> str:
        """Create and start ``handle``'s container in the ready network holder's namespace if
        there is one (netns.py), else in one of its own; its id."""
        import docker.errors

        args = holder_args(create, self.owner)
        holder = self.holders.take(args) if self.config.sandbox_cleanup else None
        if holder is not None:
            try:
                container_id = self._run(joined(create, holder), handle)
                self._holder_of[container_id] = holder
                return container_id
            except docker.errors.APIError as exc:  # the holder is gone, or stopped
                self.holders.failed(holder, str(exc.explanation or exc))
        return self._run(create, handle)

    def _run(self, create: dict[str, Any], handle: DockerAgent | None = None) -> str:
        """Create and start a container (a kernel's: ``handle``'s, else a holder); its id. One
        that does not start is removed."""
        container_id = self._create(create)
        if handle is not None:
            handle.container_id = container_id
            self._handles[container_id] = handle  # before start: its events are ours
        try:
            self.client().api.start(container_id)
        except Exception:
            self._handles.pop(container_id, None)
            if handle is not None:
                handle.container_id = None
            self._discard(container_id)
            raise
        return container_id

    def _create_args(self, spec: AgentSpec, image: str, user: SandboxUser) -> dict[str, Any]:
        """``containers.create``'s arguments (container.py), with what only the engine knows: the
        network, made ready first (the tcp broker port let in), and the disk limit."""
        tcp_port = int(spec.endpoint.rsplit(":", 1)[1]) if spec.curve is not None else None
        network_mode = self.network.mode(tcp_port)
        return create_args(
            spec,
            image,
            user,
            config=self.config,
            runtime=self.runtime,
            server=self.server,
            tcp_host_address=self.tcp_host_address,
            network_mode=network_mode,
            storage_opt=self._storage_opt(),
            package=self.package.source(),
        )

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
        entry = Stopped(
            handle.container_id, spec.workdir, handle.runnable, spec.workspace or spec.cwd
        )
        older = self._stopped.keep(spec.kernel_name, entry)
        if older is not None:
            self._discard(older.container_id)  # one stopped container per kernel name
        log.info("sandbox %s: container %s stopped for reuse", spec.kernel_name, entry.short)

    def _take_stopped(self, name: str, runnable: str, workspace: str) -> Stopped | None:
        if self.config.sandbox_cleanup:
            return None
        return self._stopped.take(name, runnable, workspace)

    def _restart_stopped(self, handle: DockerAgent, entry: Stopped) -> Any:
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
        holder = self._holder_of.pop(container_id, None)
        if holder is not None:
            self._discard(holder)  # its network namespace goes with it
        return kept

    def workspace_root(self, workspace: str) -> str:
        return WORKSPACE  # every sandbox mounts its workspace there

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
        holder = (found[0].labels or {}).get(LABEL_NETNS)
        if holder:
            self._holder_of[found[0].id] = holder
        if os.getuid() == 0:
            with contextlib.suppress(RequestError):  # its agent comes back to a new socket
                self._share_agent_socket(sandbox_user(self.config))
        self._ensure_watcher()
        return handle

    def reap_leftovers(
        self, keep: set[str] | None = None, before: float | None = None
    ) -> int | None:
        """leftovers.py's :func:`reap_leftovers` for this server."""
        return reap_leftovers(self.client, self.server, keep or set(), before)

    def _ensure_watcher(self) -> None:
        if self._watcher is None or not self._watcher.is_alive():
            self._watcher = threading.Thread(
                target=self._watch, name="stigmer-docker-events", daemon=True
            )
            self._watcher.start()

    def _watch(self) -> None:
        """Container deaths (exit, OOM kill) from Docker's event stream, told to their handles."""
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
                container_id = str(event.get("id", ""))
                handle = self._handles.get(container_id)
                if handle is None:
                    self.holders.died(container_id)
                    continue
                attrs = (event.get("Actor") or {}).get("Attributes") or {}
                handle.container_event(
                    event.get("Action") or event.get("status"),
                    attrs.get("exitCode"),
                    functools.partial(self._agent_said, container_id),
                )
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
        self._engine.close()
        self.holders.close()
        if self._client is None:
            self._pool.shutdown(wait=False)
            self.package.close()
            return
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
        self.package.close()
        with contextlib.suppress(Exception):
            self._client.close()


class _StartError(Exception):
    """A sandbox that cannot start for a reason of ours, said as it is."""
