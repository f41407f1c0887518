"""What code inside a sandbox cannot do: read the server key, reach the client endpoint,
signal host processes, pose as another kernel's agent, or remove the agents' socket."""

from __future__ import annotations

import os
import stat
from typing import Any

from tests.conftest import Server


def test_sandbox_cannot_reach_server_secrets_or_host_processes(sandbox: Server) -> None:
    c = sandbox.client()
    box = lambda code: c.execute(code, kernel="jail", mode="sandbox")  # noqa: E731
    key_path = sandbox.runtime.key_path
    assert box(f"cat {key_path}").exit_code != 0  # the runtime dir is not in the container
    assert box("ls -A /run/stigmer").stdout == "agents.sock\n"  # no clients.sock, no key
    assert "key" not in box("ls -A /run/stigmer-kernel").stdout.split()  # read, then deleted
    assert box("grep -rl STIGMER_AGENT_KEY /proc/*/environ 2>/dev/null | wc -l").stdout == "0\n"
    broker_pid = sandbox.runtime.read_info()["pid"]  # type: ignore[index]
    r = box(f"kill -0 {broker_pid} 2>&1 || echo no-such-process")
    assert "no-such-process" in r.stdout  # another pid namespace
    assert os.path.exists(f"/proc/{broker_pid}")


def test_sandbox_cannot_pose_as_another_kernels_agent(sandbox: Server) -> None:
    c = sandbox.client()
    c.execute("echo victim-state > /dev/null; V=mine", kernel="victim", mode="sandbox")
    victim_id = next(k["id"] for k in c.list_kernels() if k["name"] == "victim")
    attack = f"""python3 - <<'EOF'
import os, zmq, sys
sys.path.insert(0, "/opt/stigmer")
from stigmer_kernel.protocol import Session
ctx = zmq.Context()
for attempt in range(50):
    s = ctx.socket(zmq.DEALER)
    s.setsockopt(zmq.IDENTITY, b"{victim_id}:1:" + os.urandom(4).hex().encode())
    s.setsockopt(zmq.LINGER, 100)
    s.connect("ipc:///run/stigmer/agents.sock")
    guess = Session(os.urandom(32).hex().encode())
    for kind in ("agent_register", "agent_heartbeat", "execute_reply", "stream"):
        s.send_multipart(guess.serialize(guess.msg(kind, {{"kernel_id": "{victim_id}", "pid": 1}})))
    s.close()
ctx.term()
print("attack sent")
EOF"""
    r = c.execute(attack, kernel="attacker", mode="sandbox")
    assert r.stdout == "attack sent\n", r.stderr
    assert c.execute("echo $V", kernel="victim", mode="sandbox").stdout == "mine\n"
    (victim,) = [k for k in c.list_kernels() if k["name"] == "victim"]
    assert (victim["id"], victim["restarts"], victim["state"]) == (victim_id, 0, "idle")
    assert "invalid message signature" in sandbox.log()


def test_sandbox_cannot_remove_or_replace_the_agent_socket(sandbox: Server) -> None:
    c = sandbox.client()
    box = lambda code: c.execute(code, kernel="jail", mode="sandbox")  # noqa: E731
    r = box(
        "rm -f /run/stigmer/agents.sock || echo no-rm; "
        "touch /run/stigmer/x || echo no-touch; "
        "mv /run/stigmer/agents.sock /tmp/stolen.sock || echo no-mv"
    )
    assert r.stdout == "no-rm\nno-touch\nno-mv\n", r.stderr
    assert "Read-only file system" in r.stderr
    socket_path = sandbox.runtime.agent_socket
    assert stat.S_ISSOCK(os.stat(socket_path).st_mode)
    assert os.listdir(socket_path.parent) == ["agents.sock"]
    assert box("echo still-here").stdout == "still-here\n"
    r = c.execute("echo second-box", kernel="jail2", mode="sandbox")  # connects afresh
    assert (r.stdout, r.mode) == ("second-box\n", "sandbox")


def test_over_tcp_a_sandbox_key_speaks_only_for_its_own_kernel(docker_client: Any) -> None:
    """STIGMER_SANDBOX_TRANSPORT=tcp: each incarnation's CurveZMQ key (which its container
    holds) is checked against the kernel a message claims, so one sandbox's key cannot carry
    another kernel's traffic. A real broker bound on a real socket, fed frames directly."""
    import asyncio
    import time

    import zmq

    from stigmer_kernel.broker.model import Incarnation, Kernel
    from stigmer_kernel.broker.server import Broker
    from stigmer_kernel.config import load_config
    from stigmer_kernel.protocol import new_key
    from tests.conftest import make_server

    env = make_server(STIGMER_SANDBOX_TRANSPORT="tcp").env
    broker = Broker(load_config(env=env))
    broker.bind()
    try:
        keys = {}
        for name in ("a", "b"):
            kernel = Kernel(name=name, mode="sandbox", ttl=60.0, cwd="/")
            kernel.inc = Incarnation.new(name, new_key())
            broker.registry.add(kernel)
            broker.registry.index(kernel)
            public, _secret = zmq.curve_keypair()
            broker.remote.ephemeral[kernel.id] = public
            keys[name] = (kernel, public.decode())
        victim, victim_key = keys["b"]
        assert victim.session is not None
        beat = victim.session.msg("agent_heartbeat", {"pid": 1})
        frames = victim.session.serialize(beat, [f"{victim.id}:1:ab".encode()])
        assert victim.inc is not None
        before = victim.inc.last_beat
        time.sleep(0.01)
        broker.agents.on_frames(frames, broker.agents.sandbox_sock, curve_user=keys["a"][1])
        assert broker.stats["dropped_bad"] == 1 and victim.inc.last_beat == before
        beat = victim.session.msg("agent_heartbeat", {"pid": 1})
        frames = victim.session.serialize(beat, [f"{victim.id}:1:ab".encode()])
        broker.agents.on_frames(frames, broker.agents.sandbox_sock, curve_user=victim_key)
        assert broker.stats["dropped_bad"] == 1 and victim.inc.last_beat > before
    finally:
        asyncio.run(broker._shutdown())
