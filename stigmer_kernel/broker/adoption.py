"""Re-adopting kernels after the broker itself died (SIGKILL, crash, power cut of the process).

Agents outlive their broker for a while (they exit after ``orphan_timeout`` without an answer),
and a broker restarted on the same runtime directory binds the same sockets, so they reconnect
by themselves. What the new broker lacks is its predecessor's memory, so every kernel
incarnation leaves a small record, ``records/<id>.json`` (0600, in the 0700 runtime dir; never
in the kernel's own directory, which a sandbox container mounts):
name, mode, cwd, TTL, its agent's key and pid, its Jupyter connection. At start the broker
re-creates those kernels in the starting state; the first heartbeat signed with a kernel's key
re-attaches its agent, with the session state (cwd, variables, functions) it kept. Kernels whose
agent does not show up within a few heartbeat intervals are removed — containers included.

Requests in flight when the broker died are lost, never replayed: clients are told the server
restarted and decide whether to retry (no command is ever executed twice by the broker).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..auto import Escalation
from ..protocol import Session
from .model import AGENT_REPLAY_WINDOW, POOL_BACKEND, Incarnation, Kernel

if TYPE_CHECKING:
    from .service import Hub

log = logging.getLogger("stigmer.broker")

RECORDS = "records"


class Records:
    """The records of this server's kernel incarnations, in ``<runtime>/records``."""

    def __init__(
        self,
        runtime_path: Path,
        pooled: Callable[[Kernel], bool],
        curve_public: Callable[[str], bytes | None],
    ) -> None:
        self.runtime_path = runtime_path
        self.pooled = pooled  # a warm container nobody uses yet: after a crash it is removed
        self.curve_public = curve_public  # a sandbox agent over tcp: the key it comes back with

    def save(self, kernel: Kernel) -> None:
        """Write (or refresh) the record of ``kernel``'s current incarnation."""
        if not kernel.id or kernel.session is None or kernel.mode == "auto":
            return
        if self.pooled(kernel):
            return
        workdir = self._workdir(kernel)
        if not workdir.is_dir():
            return  # removed already
        directory = self.runtime_path / RECORDS
        directory.mkdir(mode=0o700, exist_ok=True)
        parent, handle = kernel.parent, kernel.handle
        record = {
            "name": kernel.name,
            "mode": kernel.mode,
            "id": kernel.id,
            "key": kernel.session.key.decode(),
            "cwd": kernel.cwd,
            "ttl": kernel.ttl,
            "image": kernel.image,
            "requirements": kernel.requirements,
            "workspace": kernel.workspace,
            "parent": parent.name if parent else None,
            "parent_cwd": parent.cwd if parent else None,
            # Auto: what made the parent's later commands follow it to the sandbox (sticky).
            "escalation": parent.escalation.to_dict() if parent and parent.escalation else None,
            # Local: the agent's and bash's pids, each with its start time (the proof asked of a
            # pid before a restarted server signals it).
            **(handle.record() if handle is not None else {}),
            "jupyter": kernel.channels.connection_info if kernel.channels else None,
            "workdir": workdir.name,
            # A sandbox container restarted for this incarnation keeps its first one's labels.
            "container": handle.resource_id if handle is not None else None,
            # A sandbox agent over tcp: the CurveZMQ key it may come back with.
            "curve_public": (self.curve_public(kernel.id) or b"").decode() or None,
        }
        tmp = directory / f"{kernel.id}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            json.dump(record, out)
        os.replace(tmp, directory / f"{kernel.id}.json")

    def forget(self, kernel_id: str) -> None:
        forget(self.runtime_path, kernel_id)

    def _workdir(self, kernel: Kernel) -> Path:
        """The kernel's directory: ``kernels/<id>``, unless its agent runs in a restarted
        sandbox container, whose mounts still name the directory it was created with."""
        workdir = kernel.handle.workdir if kernel.handle is not None else None
        if workdir is not None:
            return workdir
        return self.runtime_path / "kernels" / kernel.id


def _record_workdir(runtime_path: Path, record: dict[str, Any]) -> Path:
    name = str(record.get("workdir") or record["id"])
    if "/" in name or name in (".", ".."):
        raise ValueError(f"bad kernel directory {name!r}")
    return runtime_path / "kernels" / name


def forget(runtime_path: Path, kernel_id: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        (runtime_path / RECORDS / f"{kernel_id}.json").unlink()


def load(runtime_path: Path) -> list[dict[str, Any]]:
    """Records left by a previous broker; kernel directories without one are removed."""
    records = []
    known = set()
    for path in sorted((runtime_path / RECORDS).glob("*.json")):
        try:
            record = json.loads(path.read_text())
            if not isinstance(record, dict) or not isinstance(record.get("key"), str):
                raise ValueError("bad record")
            if record.get("id") != path.stem or path.stem in (".", ".."):
                raise ValueError("a record of another kernel")
            known.add(_record_workdir(runtime_path, record).name)
            records.append(record)
        except (OSError, ValueError):
            path.unlink(missing_ok=True)
    for directory in (runtime_path / "kernels").glob("*"):
        if directory.name not in known:
            shutil.rmtree(directory, ignore_errors=True)
    return records


def adopt_all(hub: Hub, records: list[dict[str, Any]]) -> None:
    """Re-create the kernels of ``records``; their agents re-attach by heartbeat."""
    for record in records:
        try:
            _adopt(hub, record)
        except Exception as exc:  # one bad or stale record must not keep the server from starting
            log.warning("could not re-adopt kernel record %s: %s", record.get("id"), exc)
            forget(hub.runtime.path, str(record.get("id")))
            hub.agents.retired(str(record.get("id")))
            with contextlib.suppress(Exception):
                shutil.rmtree(_record_workdir(hub.runtime.path, record))


def _adopt(hub: Hub, record: dict[str, Any]) -> None:
    name, mode, kernel_id = str(record["name"]), str(record["mode"]), str(record["id"])
    workdir = _record_workdir(hub.runtime.path, record)
    pool = record.get("pool")
    provisioner = hub.lifecycle.provisioners.get(POOL_BACKEND if pool else mode)
    if provisioner is None:  # a mode this server does not have
        shutil.rmtree(workdir, ignore_errors=True)
        forget(hub.runtime.path, kernel_id)
        return
    inc = Incarnation(
        id=kernel_id,
        session=Session(str(record["key"]).encode(), replay_window=AGENT_REPLAY_WINDOW),
    )
    # Its CurveZMQ key first: the agent may come back while the provisioner looks for it.
    public = record.get("curve_public")
    sandbox_sock = hub.agents.sandbox_sock
    if isinstance(public, str) and sandbox_sock is None:
        log.warning(
            "kernel %s: its sandbox agent used the tcp transport, which this server does "
            "not listen on (STIGMER_SANDBOX_TRANSPORT): it cannot come back",
            name,
        )
    if isinstance(public, str) and sandbox_sock is not None:
        hub.agents.remote.ephemeral[kernel_id] = public.encode()
        inc.sock = sandbox_sock
    if pool:
        inc.sock = hub.agents.tcp_sock  # its member comes back where it joined
    inc.handle = provisioner.adopt(record, workdir)
    if inc.handle is None:  # a backend that cannot re-adopt
        hub.agents.retired(kernel_id)
        shutil.rmtree(workdir, ignore_errors=True)
        forget(hub.runtime.path, kernel_id)
        return
    kernel = hub.creation.adopted(
        name,
        mode,
        inc,
        ttl=float(record["ttl"]),
        cwd=str(record["cwd"]),
        sandbox=(record.get("image"), record.get("requirements"), record.get("workspace")),
        parent=record.get("parent"),
        parent_cwd=record.get("parent_cwd"),
        escalation=Escalation.from_dict(record.get("escalation")),
    )
    kernel.pool = pool if isinstance(pool, str) else None
    if record.get("jupyter") and kernel.parent is None:
        with contextlib.suppress(Exception):
            hub.jupyter.open_channels(kernel, record["jupyter"])
    log.info("kernel %s (%s): waiting for its agent to re-attach", name, kernel.id)
