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
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..auto import Escalation
from ..protocol import KernelState, Session
from .kernels import AGENT_REPLAY_WINDOW, Kernel

if TYPE_CHECKING:
    from .server import Broker

log = logging.getLogger("stigmer.broker")

RECORDS = "records"


def save(broker: Broker, kernel: Kernel) -> None:
    """Write (or refresh) the record of ``kernel``'s current incarnation."""
    if not kernel.id or kernel.session is None or kernel.mode == "auto":
        return
    if kernel in broker.pool.kernels:
        return  # a warm container nobody uses yet: after a crash it is simply removed
    workdir = _workdir(broker, kernel)
    if not workdir.is_dir():
        return  # removed already
    directory = broker.runtime.path / RECORDS
    directory.mkdir(mode=0o700, exist_ok=True)
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
        "parent": kernel.parent.name if kernel.parent else None,
        "parent_cwd": kernel.parent.cwd if kernel.parent else None,
        # Auto: what made the parent's later commands follow it to the sandbox (sticky).
        "escalation": kernel.parent.escalation.to_dict()
        if kernel.parent and kernel.parent.escalation
        else None,
        # Local: the agent's and bash's pids, each with its start time (the proof asked of a
        # pid before a restarted server signals it).
        **(kernel.handle.record() if kernel.handle is not None else {}),
        "jupyter": kernel.channels.connection_info if kernel.channels else None,
        "workdir": workdir.name,
        # A sandbox container restarted for this incarnation keeps its first one's labels.
        "container": kernel.handle.resource_id if kernel.handle is not None else None,
        # A sandbox agent over tcp: the CurveZMQ key it may come back with.
        "curve_public": (broker.remote.ephemeral.get(kernel.id) or b"").decode() or None,
    }
    tmp = directory / f"{kernel.id}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(record, handle)
    os.replace(tmp, directory / f"{kernel.id}.json")


def _workdir(broker: Broker, kernel: Kernel) -> Path:
    """The kernel's directory: ``kernels/<id>``, unless its agent runs in a restarted sandbox
    container, whose mounts still name the directory it was created with."""
    workdir = kernel.handle.workdir if kernel.handle is not None else None
    if workdir is not None:
        return workdir
    return broker.runtime.path / "kernels" / kernel.id


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


def adopt_all(broker: Broker, records: list[dict[str, Any]]) -> None:
    """Re-create the kernels of ``records``; their agents re-attach by heartbeat."""
    for record in records:
        try:
            _adopt(broker, record)
        except Exception as exc:  # one bad or stale record must not keep the server from starting
            log.warning("could not re-adopt kernel record %s: %s", record.get("id"), exc)
            forget(broker.runtime.path, str(record.get("id")))
            broker.remote.ephemeral.pop(str(record.get("id")), None)
            with contextlib.suppress(Exception):
                shutil.rmtree(_record_workdir(broker.runtime.path, record))


def _adopt(broker: Broker, record: dict[str, Any]) -> None:
    name, mode = str(record["name"]), str(record["mode"])
    workdir = _record_workdir(broker.runtime.path, record)
    parent = None
    if record.get("parent"):
        parent = broker.registry.by_name.get(str(record["parent"]))
        if parent is None:
            parent = broker.auto.create(
                str(record["parent"]),
                str(record.get("parent_cwd") or record["cwd"]),
                record.get("ttl"),
                {"workspace": record.get("workspace")},
            )
        parent.escalation = parent.escalation or Escalation.from_dict(record.get("escalation"))
    kernel = Kernel(
        name=name, mode=mode, ttl=float(record["ttl"]), cwd=str(record["cwd"]), parent=parent
    )
    kernel.id = str(record["id"])
    kernel.session = Session(str(record["key"]).encode(), replay_window=AGENT_REPLAY_WINDOW)
    kernel.session_id = os.urandom(16).hex()
    kernel.image, kernel.requirements = record.get("image"), record.get("requirements")
    kernel.workspace = record.get("workspace")
    kernel.state = KernelState.STARTING
    kernel.adopting = True
    kernel.started_at = time.monotonic()
    provisioner = broker.provisioners.get(mode)
    if provisioner is None:  # a mode this server does not have
        shutil.rmtree(workdir, ignore_errors=True)
        forget(broker.runtime.path, kernel.id)
        return
    # Its CurveZMQ key first: the agent may come back while the provisioner looks for it.
    public = record.get("curve_public")
    if isinstance(public, str) and broker.sandbox_tcp_sock is None:
        log.warning(
            "kernel %s: its sandbox agent used the tcp transport, which this server does "
            "not listen on (STIGMER_SANDBOX_TRANSPORT): it cannot come back",
            name,
        )
    if isinstance(public, str) and broker.sandbox_tcp_sock is not None:
        broker.remote.ephemeral[kernel.id] = public.encode()
        kernel.agent_sock = broker.sandbox_tcp_sock
    handle = provisioner.adopt(record, workdir)
    if handle is None:  # a backend that cannot re-adopt
        broker.remote.ephemeral.pop(kernel.id, None)
        shutil.rmtree(workdir, ignore_errors=True)
        forget(broker.runtime.path, kernel.id)
        return
    kernel.handle = handle
    if parent is not None:
        parent.children[mode] = kernel
        kernel.channels = parent.channels
    broker.registry.add(kernel)
    broker.registry.index(kernel)
    if record.get("jupyter") and parent is None:
        with contextlib.suppress(Exception):
            broker.jupyter.open_channels(kernel, record["jupyter"])
    log.info("kernel %s (%s): waiting for its agent to re-attach", name, kernel.id)


def attach(broker: Broker, kernel: Kernel, identity: bytes, content: dict[str, Any]) -> None:
    """The first heartbeat of a surviving agent: it serves this kernel again."""
    kernel.agent_identity = identity.removesuffix(b":hb")
    kernel.came_up = True
    kernel.adopting = False
    pid = content.get("pid")
    if kernel.mode == "local" and isinstance(pid, int):
        kernel.agent_pid = pid
    kernel.state = KernelState.IDLE
    kernel.last_activity = time.monotonic()
    log.info("kernel %s re-adopted with its session (agent %s)", kernel.name, pid)
    if kernel.channels is not None:
        kernel.channels.publish_status("idle", None)
    save(broker, kernel)
    broker.advance(kernel)
