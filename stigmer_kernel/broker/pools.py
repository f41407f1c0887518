"""Agent pools: agents that joined to serve one kernel each, and the backend that claims them.

An agent started with ``--pool NAME`` dials the agent TCP socket (CurveZMQ), registers as an
idle member of pool NAME — its key must be authorized for that pool (``stigmer curve authorize
--pool NAME KEYFILE``) and its version must be the broker's — and heartbeats. A sandbox kernel
asked for with a pool is started by :class:`PoolProvisioner`: its handle waits (first come,
first served) up to ``pool_wait`` seconds for an idle member, which is then sent
``agent_claim`` with the new incarnation's id and key over the encrypted link. The member
becomes that kernel's agent: it registers again as the incarnation, from a connection that
must present the CurveZMQ key the member made for it and gave at registration (``claimed``,
checked in agents.py; replicas that share the pool's key are told apart by it). When its kernel
ends the member exits, and the cluster engine starts a fresh one: no state passes from one
kernel to the next.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import shutil
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._version import __version__
from ..curve import POOL_NAME_RE, is_key
from ..errors import ProtocolError, RequestError
from ..protocol import ErrorName, MsgType, Session
from ..provisioners import AgentHandle, AgentSpec, Provisioner
from .model import AGENT_REPLAY_WINDOW

if TYPE_CHECKING:
    from .service import Hub

log = logging.getLogger("stigmer.broker")

#: A member's routing id starts with this (a kernel id never does: names start with a letter
#: or digit).
MEMBER_PREFIX = b"@"
#: Pool figures for operators and autoscalers, in the runtime directory.
POOLS_JSON = "pools.json"
POOLS_PROM = "pools.prom"


@dataclass
class Member:
    id: str
    pool: str
    key: str  # the z85 CurveZMQ key its kernel's connection must present (its own, fresh)
    join_key: str = ""  # the pool's key its joining connection presented
    identity: bytes | None = None  # its routing id (None: a busy member adopted after a restart)
    session: Session | None = None  # signs with the key it chose at registration
    hostname: str = ""
    last_beat: float = 0.0
    kernel_id: str | None = None  # busy: the incarnation it serves


class PoolHandle(AgentHandle):
    """A kernel's agent from a pool: waiting for a member, then that member."""

    def __init__(self, pools: Pools, pool: str, kernel_id: str, workdir: Path) -> None:
        self.pools = pools
        self.pool = pool
        self.kernel_id = kernel_id
        self.work = workdir
        self.spec: AgentSpec | None = None
        self.asked_at = time.monotonic()
        self.deadline = self.asked_at + pools.hub.config.pool_wait
        self.member: Member | None = None
        self.claimed_at = 0.0
        self.failed: str | None = None
        self.released = False

    @property
    def pid(self) -> int | None:
        return None

    @property
    def due_from(self) -> float | None:
        return None if self.member is None else self.claimed_at

    def poll(self) -> str | None:
        if self.released:
            return "released by the broker"
        if self.failed is None and self.member is None and time.monotonic() > self.deadline:
            self.failed = self.pools.gave_up(self)
        return self.failed

    def kill(self) -> None:
        self.release()

    def release(self) -> None:
        if not self.released:
            self.released = True
            self.pools.done(self)

    def cleanup(self) -> None:
        shutil.rmtree(self.work, ignore_errors=True)

    def record(self) -> dict[str, Any]:
        member = self.member
        return {"pool": self.pool, "member_key": member.key if member else None}

    def describe(self) -> dict[str, Any]:
        member = self.member
        return {
            "pid": None,
            "pool": self.pool,
            "member": member.id if member else None,
            "host": member.hostname if member else None,
        }


class PoolProvisioner(Provisioner):
    """Sandbox kernels from agent pools (the backend of a kernel with a ``pool``)."""

    mode = "sandbox"

    def __init__(self, pools: Pools) -> None:
        self.pools = pools

    def check_available(self) -> None:
        if self.pools.sock is None:
            raise RequestError(
                "sandbox pools need the agent TCP endpoint, where members dial — start the "
                "server with STIGMER_AGENT_ENDPOINT=tcp://HOST:PORT (CurveZMQ)",
                ErrorName.MODE_UNAVAILABLE,
            )

    def start(self, spec: AgentSpec) -> AgentHandle:
        assert spec.pool is not None
        spec.workdir.mkdir(mode=0o700, parents=True, exist_ok=True)  # its record's anchor
        handle = PoolHandle(self.pools, spec.pool, spec.kernel_id, spec.workdir)
        handle.spec = spec
        self.pools.queue(handle)
        return handle

    def adopt(self, record: Mapping[str, Any], workdir: Path) -> AgentHandle | None:
        pool, key = record.get("pool"), record.get("member_key")
        if not isinstance(pool, str) or not isinstance(key, str):
            return None  # it never got a member: nothing to come back
        return self.pools.adopted(str(record["id"]), pool, key, workdir)


class Pools:
    """The members of every pool, the kernels waiting for one, and the figures."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.sock: Any = None  # the agent TCP socket (None: no pools)
        self.members: dict[str, Member] = {}
        self.waiting: dict[str, collections.deque[PoolHandle]] = {}
        self.joined: collections.Counter[str] = collections.Counter()
        self.left: collections.Counter[str] = collections.Counter()
        #: Claimed kernel incarnations: the CurveZMQ key their agent must present.
        self.claimed: dict[str, str] = {}
        self._written: dict[str, Any] | None = None

    # -- members ----------------------------------------------------------------------------
    def on_message(self, identity: bytes, frames: list[bytes], curve_user: str | None) -> None:
        """A message from a pool member (routing id ``@...``) on the agent TCP socket."""
        member_id = identity.split(b":", 1)[0].decode("ascii", "replace")
        member = self.members.get(member_id)
        if member is None or member.identity != identity or member.session is None:
            self._register(member_id, identity, frames, curve_user)
            return
        try:
            member.session.verify_frames(frames)
            msg = member.session.decode(frames)
        except ProtocolError as exc:
            self.hub.stats["dropped_bad"] += 1
            self.hub.reactor.drop_log("a pool member", exc)
            return
        self.hub.connections.prove(self.sock)
        member.last_beat = time.monotonic()
        if msg.msg_type == MsgType.AGENT_HEARTBEAT.value:
            self._send(member, MsgType.AGENT_HEARTBEAT, {}, msg)
        elif msg.msg_type == MsgType.AGENT_GOODBYE.value and member.kernel_id is None:
            self._drop(member, "it left")

    def _register(
        self, member_id: str, identity: bytes, frames: list[bytes], curve_user: str | None
    ) -> None:
        try:
            msg = Session(b"").decode(frames)
        except ProtocolError:
            return
        content = msg.content
        pool, key = content.get("pool"), content.get("key")
        if msg.msg_type != MsgType.AGENT_REGISTER.value or not isinstance(key, str):
            return  # a heartbeat from before a restart: it registers again by itself
        session = Session(key.encode(), replay_window=AGENT_REPLAY_WINDOW)
        try:
            session.verify_frames(frames)
        except ProtocolError as exc:
            self.hub.stats["dropped_bad"] += 1
            self.hub.reactor.drop_log("a pool member", exc)
            return
        if curve_user is None:
            self.hub.reactor.drop_log("a pool member", "joining needs CurveZMQ")
            return
        if not isinstance(pool, str) or not POOL_NAME_RE.fullmatch(pool):
            self._refuse(session, identity, msg, f"bad pool name {pool!r}")
            return
        if pool not in self.hub.remote.pool_keys.pools_of(curve_user.encode()):
            self._refuse(
                session,
                identity,
                msg,
                f"its CurveZMQ key is not authorized for pool {pool!r} — on the broker's host "
                f"run `stigmer curve authorize --pool {pool} KEYFILE`",
            )
            return
        own = content.get("curve_key")
        if not isinstance(own, str) or not is_key(own.encode()):
            self._refuse(session, identity, msg, "no CurveZMQ key of its own for its kernel")
            return
        version = content.get("version")
        if version != __version__:
            self._refuse(
                session,
                identity,
                msg,
                f"its stigmer-kernel is {version}, the broker's {__version__} — build the pool "
                "image with the broker's version",
            )
            return
        old = self.members.get(member_id)
        if old is not None and (old.join_key != curve_user or old.kernel_id is not None):
            self._refuse(session, identity, msg, "a member of that id joined with another key")
            return
        member = Member(
            id=member_id,
            pool=pool,
            key=own,
            join_key=curve_user,
            identity=identity,
            session=session,
            hostname=str(content.get("hostname") or ""),
            last_beat=time.monotonic(),
        )
        self.members[member_id] = member
        self.hub.remote.member_keys[member_id] = own.encode()
        if old is None:
            self.joined[pool] += 1
        log.info("pool %s: member %s joined (%s)", pool, member_id, member.hostname)
        self._send(member, MsgType.AGENT_WELCOME, {"pool": pool}, msg)
        self.dispatch(pool)
        self.publish()

    def _refuse(self, session: Session, identity: bytes, msg: Any, reason: str) -> None:
        log.warning("refused a pool member (%s): %s", msg.content.get("hostname"), reason)
        reply = session.msg(MsgType.AGENT_REFUSED.value, {"reason": reason}, msg)
        self.hub.reactor.send(self.sock, session.serialize(reply, [identity]))

    def _send(self, member: Member, mtype: MsgType, content: dict[str, Any], parent: Any) -> bool:
        if member.session is None or member.identity is None:
            return False
        msg = member.session.msg(mtype.value, content, parent)
        frames = member.session.serialize(msg, [member.identity])
        return self.hub.reactor.send(self.sock, frames, must_arrive=True)

    def _drop(self, member: Member, why: str) -> None:
        self.hub.remote.member_keys.pop(member.id, None)
        if self.members.pop(member.id, None) is not None:
            self.left[member.pool] += 1
            log.info("pool %s: member %s left (%s)", member.pool, member.id, why)
            self.publish()

    def tick(self, now: float) -> None:
        """Idle members that stopped heartbeating are dropped (maintenance)."""
        dead_after = self.hub.config.dead_after
        for member in list(self.members.values()):
            if member.kernel_id is None and now - member.last_beat > dead_after:
                self._drop(member, f"no heartbeat for {now - member.last_beat:.1f}s")

    # -- kernels ----------------------------------------------------------------------------
    def queue(self, handle: PoolHandle) -> None:
        self.waiting.setdefault(handle.pool, collections.deque()).append(handle)
        self.dispatch(handle.pool)
        spec = handle.spec
        if handle.member is None and spec is not None and spec.on_progress is not None:
            members = [m for m in self.members.values() if m.pool == handle.pool]
            spec.on_progress(
                f"waiting for an idle member of pool {handle.pool!r} ({len(members)} members, "
                f"none idle; up to {self.hub.config.pool_wait:g}s)"
            )
        self.publish()

    def dispatch(self, pool: str) -> None:
        """Claim idle members of ``pool`` for the kernels waiting, oldest first."""
        waiting = self.waiting.get(pool)
        while waiting:
            idle = [m for m in self.members.values() if m.pool == pool and m.kernel_id is None]
            if not idle:
                return
            handle = waiting.popleft()
            if not handle.released and handle.failed is None:
                self._claim(idle[0], handle)
        self.publish()

    def _claim(self, member: Member, handle: PoolHandle) -> None:
        spec = handle.spec
        assert spec is not None
        content = {
            "kernel": spec.kernel_name,
            "kernel_id": spec.kernel_id,
            "key": spec.key.decode(),
            "cwd": spec.cwd,
            "heartbeat_interval": spec.heartbeat_interval,
            "orphan_timeout": spec.orphan_timeout,
            "timeout": spec.command_timeout or 0,
            "output_limit": spec.output_limit,
            "journal_bytes": spec.journal_bytes,
        }
        member.kernel_id = spec.kernel_id
        if not self._send(member, MsgType.AGENT_CLAIM, content, None):
            member.kernel_id = None
            self._drop(member, "unreachable")
            self.waiting[handle.pool].appendleft(handle)
            return
        self.claimed[spec.kernel_id] = member.key
        handle.member = member
        handle.claimed_at = time.monotonic()
        log.info(
            "pool %s: member %s claimed for kernel %s after %.0f ms",
            handle.pool,
            member.id,
            spec.kernel_name,
            (handle.claimed_at - handle.asked_at) * 1000,
        )

    def gave_up(self, handle: PoolHandle) -> str:
        """Why ``handle`` waited in vain (its pool's figures)."""
        waiting = self.waiting.get(handle.pool)
        if waiting is not None and handle in waiting:
            waiting.remove(handle)
        members = [m for m in self.members.values() if m.pool == handle.pool]
        busy = sum(1 for m in members if m.kernel_id is not None)
        self.publish()
        return (
            f"no idle member in pool {handle.pool!r} ({len(members)} members, {busy} busy) "
            f"within {self.hub.config.pool_wait:g}s — add members (`stigmer agent join --pool "
            f"{handle.pool} ...`, or scale the pool's service) or raise STIGMER_POOL_WAIT"
        )

    def done(self, handle: PoolHandle) -> None:
        """A pool kernel's incarnation ended: its member is spent (it exits)."""
        waiting = self.waiting.get(handle.pool)
        if waiting is not None and handle in waiting:
            waiting.remove(handle)
        self.claimed.pop(handle.kernel_id, None)
        if handle.member is not None:
            handle.member.kernel_id = None
            self._drop(handle.member, "its kernel ended")
        self.publish()

    def adopted(self, kernel_id: str, pool: str, key: str, workdir: Path) -> PoolHandle:
        """A claimed member's kernel, from a dead broker's record."""
        handle = PoolHandle(self, pool, kernel_id, workdir)
        member = Member(id=f"@{kernel_id}", pool=pool, key=key, kernel_id=kernel_id)
        self.members[member.id] = member
        self.hub.remote.member_keys[member.id] = key.encode()
        handle.member, handle.claimed_at = member, time.monotonic()
        self.claimed[kernel_id] = key
        return handle

    # -- figures ----------------------------------------------------------------------------
    def figures(self) -> dict[str, dict[str, int]]:
        """Per pool: members, idle, busy, waiting kernels, members joined and left so far."""
        names = (
            {m.pool for m in self.members.values()}
            | set(self.joined)
            | {name for name, queue in self.waiting.items() if queue}
        )
        out = {}
        for name in sorted(names):
            members = [m for m in self.members.values() if m.pool == name]
            busy = sum(1 for m in members if m.kernel_id is not None)
            out[name] = {
                "members": len(members),
                "idle": len(members) - busy,
                "busy": busy,
                "waiting": len(self.waiting.get(name, ())),
                "joined": self.joined[name],
                "left": self.left[name],
            }
        return out

    def publish(self) -> None:
        """Write ``pools.json`` and ``pools.prom`` when the figures changed."""
        figures = self.figures()
        if figures == self._written:
            return
        self._written = figures
        path = self.hub.runtime.path
        prom = []
        for field in ("members", "idle", "busy", "waiting", "joined", "left"):
            kind = "counter" if field in ("joined", "left") else "gauge"
            prom.append(f"# TYPE stigmer_pool_{field} {kind}")
            for name, row in figures.items():
                prom.append(f'stigmer_pool_{field}{{pool="{name}"}} {row[field]}')
        for filename, text in (
            (POOLS_JSON, json.dumps({"pools": figures, "at": time.time()})),
            (POOLS_PROM, "\n".join(prom) + "\n"),
        ):
            tmp = path / f".{filename}.tmp"
            try:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                with os.fdopen(fd, "w") as out:
                    out.write(text)
                os.replace(tmp, path / filename)
            except OSError as exc:
                log.warning("could not write %s: %s", filename, exc)
