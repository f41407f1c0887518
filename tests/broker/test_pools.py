"""Agent pools: members join over loopback CurveZMQ, each serves one kernel, and the attacks on
the pool's keys (another pool, an unauthorized key, a forged registration) fail."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from typing import Any

import pytest
import zmq

from stigmer_kernel import __version__
from stigmer_kernel.curve import read_public, read_secret
from stigmer_kernel.errors import RequestError
from stigmer_kernel.protocol import Session
from tests.conftest import Server, short_tempdir, wait_for
from tests.conftest import stigmer_out as stigmer


class Pool:
    """A broker with an agent TCP endpoint on loopback, and keys made for members."""

    def __init__(self, server_factory: Any, wait: str = "3") -> None:
        self.port = 5100 + (os.getpid() * 7 + int(time.time())) % 800
        self.endpoint = f"tcp://127.0.0.1:{self.port}"
        self.srv: Server = server_factory(
            STIGMER_AGENT_ENDPOINT=self.endpoint,
            STIGMER_HEARTBEAT_INTERVAL="0.3",
            STIGMER_POOL_WAIT=wait,
        )
        self.keys = short_tempdir("stg-keys-")
        # A claimed member makes its work directory in TMPDIR; the SIGKILL of close() leaves
        # it there, in a directory the session removes.
        self.tmp = short_tempdir("stg-members-")
        self.members: list[subprocess.Popen[str]] = []

    def key(self, name: str, pool: str | None) -> str:
        stigmer(self.srv, "curve", "keygen", name, "--dir", self.keys)
        if pool is not None:
            stigmer(self.srv, "curve", "authorize", "--pool", pool, f"{self.keys}/{name}.key")
        return f"{self.keys}/{name}.key_secret"

    def member(self, pool: str, cert: str) -> subprocess.Popen[str]:
        cwd = short_tempdir("stg-member-")
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "stigmer_kernel",
                "agent",
                "join",
                "--pool",
                pool,
                "--server",
                self.endpoint,
                "--server-key",
                str(self.srv.runtime.path / "curve" / "server.key"),
                "--curve-cert",
                cert,
                "--heartbeat-interval",
                "0.3",
                "--cwd",
                cwd,
            ],
            env={**self.srv.env, "TMPDIR": self.tmp},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.members.append(proc)
        return proc

    def figures(self, pool: str) -> dict[str, int]:
        info = self.srv.client().server_info()
        return dict(info["pools"].get(pool, {}))

    def idle(self, pool: str, n: int) -> None:
        wait_for(lambda: self.figures(pool).get("idle", 0) == n)

    def close(self) -> None:
        for proc in self.members:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            if proc.stderr is not None:
                proc.stderr.close()


@pytest.fixture
def pool(server_factory: Any) -> Any:
    p = Pool(server_factory)
    yield p
    p.close()


def raw_member(p: Pool, cert: str, identity: bytes) -> tuple[zmq.Context[Any], Any]:
    """A DEALER with a member's CurveZMQ keys, for messages a real member would not send."""
    ctx: zmq.Context[Any] = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.IDENTITY, identity)
    public, secret = read_secret(cert)
    sock.setsockopt(zmq.CURVE_SERVERKEY, read_public(p.srv.runtime.path / "curve" / "server.key"))
    sock.setsockopt(zmq.CURVE_PUBLICKEY, public)
    sock.setsockopt(zmq.CURVE_SECRETKEY, secret)
    sock.connect(p.endpoint)
    return ctx, sock


def test_a_member_serves_one_kernel_then_exits(pool: Pool) -> None:
    first = pool.member("a", pool.key("a1", "a"))
    pool.idle("a", 1)
    c = pool.srv.client()
    started = time.monotonic()
    r = c.execute("echo secret > note; echo $PPID", kernel="k1", mode="sandbox", pool="a")
    latency = time.monotonic() - started
    assert r.status == "ok", r.evalue
    print(f"claim latency (request to reply, idle member): {latency * 1000:.0f} ms")
    (k1,) = [k for k in c.list_kernels() if k["name"] == "k1"]
    assert k1["mode"] == "sandbox" and k1.get("pool") == "a"
    assert pool.figures("a") == {
        "members": 1,
        "idle": 0,
        "busy": 1,
        "waiting": 0,
        "joined": 1,
        "left": 0,
    }
    on_disk = json.loads((pool.srv.runtime.path / "pools.json").read_text())
    assert on_disk["pools"]["a"]["busy"] == 1
    assert 'stigmer_pool_busy{pool="a"} 1' in (pool.srv.runtime.path / "pools.prom").read_text()
    # The kernel keeps its pool: another one is an option mismatch.
    with pytest.raises(RequestError, match="it comes from pool 'a', not 'b'"):
        c.execute("true", kernel="k1", mode="sandbox", pool="b")
    # Its kernel ends: the member exits (0); a new kernel gets another member process.
    c.shutdown_kernel("k1")
    assert first.wait(timeout=15) == 0
    second = pool.member("a", pool.key("a2", "a"))
    pool.idle("a", 1)
    r2 = c.execute("ls note 2>&1; echo $PPID", kernel="k1", mode="sandbox", pool="a")
    assert "No such file" in r2.stdout
    assert r2.stdout.split()[-1] != r.stdout.split()[-1]  # another agent
    assert pool.figures("a")["joined"] == 2 and pool.figures("a")["left"] == 1
    c.shutdown_kernel("k1")
    assert second.wait(timeout=15) == 0
    # The listing for operators.
    listing = stigmer(pool.srv, "pools", "list", "--json")
    assert json.loads(listing)["a"]["left"] == 2


def test_no_idle_member_fails_within_the_bounded_wait(pool: Pool) -> None:
    pool.member("b", pool.key("b1", "b"))
    pool.idle("b", 1)
    c = pool.srv.client()
    started = time.monotonic()
    r = c.execute("true", kernel="wants-a", mode="sandbox", pool="a")
    assert r.ename == "KernelDied"
    assert "no idle member in pool 'a' (0 members, 0 busy) within 3s" in (r.evalue or "")
    assert 2.5 < time.monotonic() - started < 10
    # The CLI shows the wait while it lasts.
    argv = ["run", "--mode", "sandbox", "--pool", "a", "-k", "wants-a", "--", "true"]
    cli = subprocess.run(
        [sys.executable, "-m", "stigmer_kernel", *argv],
        env=pool.srv.env,
        capture_output=True,
        text=True,
    )
    assert cli.returncode != 0
    assert "waiting for an idle member of pool 'a' (0 members, none idle; up to 3s)" in cli.stderr
    assert "no idle member in pool 'a'" in cli.stderr
    assert pool.figures("b")["idle"] == 1  # a member of pool b never serves pool a
    # A busy pool: the next request waits, and is served when a member joins in time.
    c.execute("true", kernel="kb1", mode="sandbox", pool="b")
    r = c.execute("true", kernel="kb2", mode="sandbox", pool="b")
    assert "no idle member in pool 'b' (1 members, 1 busy) within 3s" in (r.evalue or "")
    results: list[Any] = []
    waiter = threading.Thread(
        target=lambda: results.append(
            pool.srv.client().execute("echo served", kernel="kb3", mode="sandbox", pool="b")
        )
    )
    waiter.start()
    wait_for(lambda: pool.figures("b").get("waiting") == 1)
    pool.member("b", pool.key("b2", "b"))
    waiter.join(timeout=15)
    assert results and results[0].stdout == "served\n"


def test_options_that_choose_an_image_are_refused_for_a_pool_kernel(server_factory: Any) -> None:
    """A pool's agents run the pool's image: --sandbox-image and --requirements cannot apply,
    and say so instead of being ignored (the kernel would run in another image than asked)."""
    srv = server_factory(STIGMER_AGENT_ENDPOINT="tcp://127.0.0.1:0", STIGMER_SANDBOX_POOL="dflt")
    c = srv.client()
    setting = " (the sandbox_pool setting sends every new sandbox kernel there)"
    asked = [
        ("--sandbox-image", {"sandbox_image": "python:3.12-slim", "pool": "a"}, "'a':"),
        ("--requirements", {"requirements": "requests\n", "pool": "a"}, "'a':"),
        ("--sandbox-image", {"sandbox_image": "python:3.12-slim"}, f"'dflt'{setting}:"),
    ]
    for flag, options, where in asked:
        with pytest.raises(RequestError) as refused:
            c.execute("true", kernel="k", mode="sandbox", **options)
        assert refused.value.ename == "BadRequest"
        assert f"{flag} cannot apply to a kernel from agent pool {where} its agents run" in str(
            refused.value
        )
    assert [k["name"] for k in c.list_kernels()] == []  # nothing was made
    argv = ["run", "--pool", "a", "--mode", "sandbox", "--sandbox-image", "x:1", "--", "true"]
    cli = subprocess.run(
        [sys.executable, "-m", "stigmer_kernel", *argv],
        env=srv.env,
        capture_output=True,
        text=True,
    )
    assert cli.returncode != 0 and "--sandbox-image cannot apply" in cli.stderr, cli.stderr


def test_members_are_refused_outside_their_pool_and_without_a_key(pool: Pool) -> None:
    # A key authorized for pool a cannot join pool b.
    wrong = pool.member("b", pool.key("a1", "a"))
    assert wrong.wait(timeout=15) == 3
    assert wrong.stderr is not None
    assert "not authorized for pool 'b'" in wrong.stderr.read()
    # A key authorized nowhere is refused at the CurveZMQ handshake.
    stranger = pool.member("a", pool.key("stranger", None))
    assert stranger.wait(timeout=15) == 3
    assert stranger.stderr is not None
    assert "refused this agent's CurveZMQ key" in stranger.stderr.read()
    assert pool.figures("a") == {}
    # A member's key cannot join as a (remote) kernel of its choosing.
    cert = f"{pool.keys}/a1.key_secret"
    key = os.urandom(32).hex()
    ctx, sock = raw_member(pool, cert, b"squat-r0001:1:ab")
    try:
        agent = Session(key.encode())
        register = agent.msg("agent_register", {"join": "squat", "key": key, "pid": 1})
        sock.send_multipart(agent.serialize(register))
        assert not sock.poll(1500)
    finally:
        ctx.destroy(linger=0)
    assert all(k["name"] != "squat" for k in pool.srv.client().list_kernels())
    assert "its CurveZMQ key is a pool member's" in pool.srv.log()
    # Another version is refused with the reason.
    ctx, sock = raw_member(pool, cert, b"@0123456789ab:1")
    try:
        member = Session(key.encode())
        register = member.msg(
            "agent_register",
            {
                "pool": "a",
                "key": key,
                "version": "0.0.0",
                "pid": 1,
                "curve_key": zmq.curve_keypair()[0].decode(),
            },
        )
        sock.send_multipart(member.serialize(register))
        assert sock.poll(5000)
        _ids, reply = member.deserialize(sock.recv_multipart())
        assert reply.msg_type == "agent_refused"
        assert f"its stigmer-kernel is 0.0.0, the broker's {__version__}" in reply.content["reason"]
    finally:
        ctx.destroy(linger=0)
    assert pool.figures("a") == {}


def test_a_member_cannot_speak_for_a_kernel_claimed_by_another(pool: Pool) -> None:
    shared = pool.key("a1", "a")  # replicas of one service share the pool's key
    pool.member("a", shared)
    pool.idle("a", 1)
    c = pool.srv.client()
    assert c.execute("X=mine", kernel="k", mode="sandbox", pool="a").status == "ok"
    (k,) = [k for k in c.list_kernels() if k["name"] == "k"]
    record = json.loads((pool.srv.runtime.path / "records" / f"{k['id']}.json").read_text())
    session = Session(record["key"].encode())
    # Even with the kernel's own key (leaked from its record), a connection with the pool's
    # key (another replica) or another member's cannot register for it, nor beat for it: it
    # must present the key the claimed member made for it.
    for cert in (shared, pool.key("a2", "a")):
        ctx, sock = raw_member(pool, cert, f"{k['id']}:1:ff".encode())
        try:
            for mtype in ("agent_register", "agent_heartbeat"):
                forged = session.msg(mtype, {"kernel_id": k["id"], "pid": 1})
                sock.send_multipart(session.serialize(forged))
            assert not sock.poll(1500)  # no welcome, no answer
        finally:
            ctx.destroy(linger=0)
    assert pool.srv.log().count("an agent speaking for a pool kernel claimed by another") >= 4
    assert c.execute("echo $X", kernel="k", mode="sandbox", pool="a").stdout == "mine\n"


def test_an_idle_member_that_dies_leaves_the_pool(pool: Pool) -> None:
    member = pool.member("a", pool.key("a1", "a"))
    pool.idle("a", 1)
    member.kill()
    wait_for(lambda: pool.figures("a").get("members") == 0)
    assert pool.figures("a")["left"] == 1
    r = pool.srv.client().execute("true", kernel="k", mode="sandbox", pool="a")
    assert "no idle member in pool 'a' (0 members, 0 busy)" in (r.evalue or "")


def test_a_restarted_broker_finds_its_members_again(pool: Pool) -> None:
    busy = pool.member("a", pool.key("a1", "a"))
    c = pool.srv.client()
    pool.idle("a", 1)
    assert c.execute("X=kept", kernel="k", mode="sandbox", pool="a").status == "ok"
    pool.member("a", pool.key("a2", "a"))
    pool.idle("a", 1)
    assert pool.srv.proc is not None
    os.killpg(pool.srv.proc.pid, signal.SIGKILL)
    pool.srv.proc.wait()
    pool.srv.start()
    pool.idle("a", 1)  # the idle member joined again
    c2 = pool.srv.client()
    wait_for(lambda: any(k["name"] == "k" and k["state"] == "idle" for k in c2.list_kernels()))
    assert c2.execute("echo $X", kernel="k", mode="sandbox", pool="a").stdout == "kept\n"
    assert pool.figures("a")["busy"] == 1
    c2.shutdown_kernel("k")
    assert busy.wait(timeout=15) == 0


def test_pools_need_the_agent_endpoint(server: Server) -> None:
    r = server.client()
    with pytest.raises(RequestError, match="sandbox pools need the agent TCP endpoint"):
        r.execute("true", kernel="p", mode="sandbox", pool="a")
    with pytest.raises(RequestError, match="--pool applies to sandbox kernels, not local"):
        r.execute("true", kernel="p", mode="local", pool="a")


def test_member_keys_from_the_environment(pool: Pool) -> None:
    cert = pool.key("env1", "a")
    _public, secret = read_secret(cert)
    env = {
        **pool.srv.env,
        "TMPDIR": pool.tmp,
        "STIGMER_POOL_SERVER_KEY": read_public(
            pool.srv.runtime.path / "curve" / "server.key"
        ).decode(),
        "STIGMER_POOL_CURVE_SECRET": secret.decode(),
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "stigmer_kernel.agent", "--pool", "a", "--endpoint", pool.endpoint],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    pool.members.append(proc)
    pool.idle("a", 1)
    assert (
        pool.srv.client().execute("echo env", kernel="e", mode="sandbox", pool="a").stdout
        == "env\n"
    )


def test_a_kernel_waiting_for_a_member_is_not_overdue() -> None:
    """liveness counts a pool kernel's start from its claim, not from its request."""
    from stigmer_kernel.broker.liveness import START_TIMEOUT, start_overdue
    from stigmer_kernel.broker.model import Incarnation, Kernel
    from stigmer_kernel.provisioners import AgentHandle

    class Waiting(AgentHandle):
        due: float | None = None
        pid = None

        @property
        def due_from(self) -> float | None:
            return self.due

        def poll(self) -> str | None:
            return None

        def kill(self) -> None:
            pass

    handle = Waiting()
    inc = Incarnation(id="k-1", session=Session(b"k"), handle=handle, started_at=100.0)
    kernel = Kernel(name="k", mode="sandbox", ttl=60, cwd="", inc=inc)
    assert start_overdue(kernel, 100.0 + 10 * START_TIMEOUT) is None  # still waiting
    handle.due = 500.0  # claimed then
    assert start_overdue(kernel, 500.0 + START_TIMEOUT - 1) is None
    assert start_overdue(kernel, 500.0 + START_TIMEOUT + 1) == "agent did not register in 30s"


def test_expiry_restart_and_a_dead_member_recycle_members(server_factory: Any) -> None:
    p = Pool(server_factory)
    p.srv.stop()
    p.srv.env["STIGMER_SANDBOX_TTL"] = "2"
    p.srv.env["STIGMER_SANDBOX_POOL"] = "a"  # the default pool of sandbox kernels
    p.srv.start()
    try:
        cert = p.key("a1", "a")
        first = p.member("a", cert)
        p.idle("a", 1)
        c = p.srv.client()
        # The setting names the pool; TTL expiry ends the kernel and its member.
        assert c.execute("echo one", kernel="t", mode="sandbox").stdout == "one\n"
        assert first.wait(timeout=15) == 0
        wait_for(lambda: all(k["name"] != "t" for k in c.list_kernels()))
        # A restart claims another member; the old one exits.
        second = p.member("a", cert)
        p.idle("a", 1)
        assert c.execute("true", kernel="r", mode="sandbox", pool="a").status == "ok"
        third = p.member("a", cert)
        p.idle("a", 1)
        c.restart_kernel("r", cwd="/tmp")  # a directory on the member's host
        assert second.wait(timeout=15) == 0
        assert c.execute("echo again; pwd", kernel="r", mode="sandbox").stdout == "again\n/tmp\n"
        # A member that dies while its command runs: that command fails with KernelDied, and
        # the kernel is dead; its next request needs another member, and none is idle.
        running: dict[str, Any] = {}
        sleeper = threading.Thread(
            target=lambda: running.update(r=c.execute("sleep 60", kernel="r", mode="sandbox"))
        )
        sleeper.start()
        wait_for(lambda: any(k["name"] == "r" and k["state"] == "busy" for k in c.list_kernels()))
        third.kill()
        sleeper.join(timeout=30)
        assert running["r"].ename == "KernelDied" and "died" in (running["r"].evalue or "")
        wait_for(lambda: any(k["name"] == "r" and k["state"] == "dead" for k in c.list_kernels()))
        r = c.execute("true", kernel="r", mode="sandbox")
        assert r.ename == "KernelDied" and "no idle member in pool 'a'" in (r.evalue or "")
        assert p.figures("a")["left"] == 3
        # The CLI asks for a pool too.
        p.member("a", cert)
        p.idle("a", 1)
        out = stigmer(
            p.srv, "run", "--mode", "sandbox", "--pool", "a", "-k", "cli", "--", "echo", "cli"
        )
        assert out == "cli"
    finally:
        p.close()
