"""Remote agents and clients over TCP with CurveZMQ, using a network namespace as the other host.

Needs root (ip netns); CI runs as root, so there it fails rather than skips.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
import zmq
import zmq.auth
from jupyter_client import BlockingKernelClient

from stigmer_kernel.errors import RequestError
from stigmer_kernel.protocol import Session
from tests.conftest import Server, short_tempdir, wait_for
from tests.conftest import stigmer_out as stigmer

HOST_IP, REMOTE_IP = "10.231.9.1", "10.231.9.2"


def sh(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True)


@pytest.fixture
def netns() -> Iterator[str]:
    if os.geteuid() != 0 or shutil.which("ip") is None:
        if os.environ.get("CI"):
            pytest.fail("remote-agent tests need root and iproute2 in CI")
        pytest.skip("needs root and iproute2 (ip netns)")
    name = f"stg-{os.urandom(3).hex()}"
    host_if, remote_if = f"{name}h", f"{name}r"
    sh("ip", "netns", "add", name)
    try:
        sh("ip", "link", "add", host_if, "type", "veth", "peer", "name", remote_if)
        sh("ip", "link", "set", remote_if, "netns", name)
        sh("ip", "addr", "add", f"{HOST_IP}/30", "dev", host_if)
        sh("ip", "link", "set", host_if, "up")
        sh("ip", "netns", "exec", name, "ip", "addr", "add", f"{REMOTE_IP}/30", "dev", remote_if)
        sh("ip", "netns", "exec", name, "ip", "link", "set", remote_if, "up")
        sh("ip", "netns", "exec", name, "ip", "link", "set", "lo", "up")
        yield name
    finally:
        subprocess.run(["ip", "netns", "pids", name], capture_output=True)
        pids = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True)
        for pid in pids.stdout.split():
            subprocess.run(["kill", "-9", pid], capture_output=True)
        subprocess.run(["ip", "link", "del", host_if], capture_output=True)
        subprocess.run(["ip", "netns", "del", name], capture_output=True)


def start_agent(ns: str, srv: Server, name: str, cert: str, port: int) -> subprocess.Popen[bytes]:
    server_key = str(srv.runtime.path / "curve" / "server.key")
    return subprocess.Popen(
        [
            "ip",
            "netns",
            "exec",
            ns,
            sys.executable,
            "-m",
            "stigmer_kernel.agent",
            "--endpoint",
            f"tcp://{HOST_IP}:{port}",
            "--join",
            name,
            "--server-key",
            server_key,
            "--curve-cert",
            cert,
            "--heartbeat-interval",
            "0.3",
            "--workdir",  # one the session removes: the netns clean-up SIGKILLs the agent
            short_tempdir("stg-remote-"),
        ],
        env=srv.env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def test_remote_agent_joins_over_curve_and_a_cut_link_is_a_dead_agent(
    netns: str, server_factory: Any
) -> None:
    port = 5700 + os.getpid() % 200
    srv = server_factory(
        STIGMER_AGENT_ENDPOINT=f"tcp://{HOST_IP}:{port}", STIGMER_HEARTBEAT_INTERVAL="0.3"
    )
    keys = short_tempdir("stg-keys-")
    stigmer(srv, "curve", "keygen", "trusted", "--dir", keys)
    stigmer(srv, "curve", "keygen", "stranger", "--dir", keys)
    stigmer(srv, "curve", "authorize", f"{keys}/trusted.key")
    c = srv.client()
    # A dead local kernel keeps its name: a remote agent cannot take it (nor its clients).
    c.execute("true", kernel="mine")
    os.kill(next(k["pid"] for k in c.list_kernels() if k["name"] == "mine"), 9)
    wait_for(lambda: next(k for k in c.list_kernels() if k["name"] == "mine")["state"] == "dead")
    good = start_agent(netns, srv, "far", f"{keys}/trusted.key_secret", port)
    bad = start_agent(netns, srv, "intruder", f"{keys}/stranger.key_secret", port)
    squatter = start_agent(netns, srv, "mine", f"{keys}/trusted.key_secret", port)
    try:
        wait_for(lambda: any(k["name"] == "far" for k in c.list_kernels()))
        r = c.execute(f"ip -4 -o addr | grep -c {REMOTE_IP}", kernel="far", mode="remote")
        assert r.stdout == "1\n"  # it ran on the other host
        (far,) = [k for k in c.list_kernels() if k["name"] == "far"]
        assert far["mode"] == "remote"
        # Only a client that asks for a remote kernel reaches one, and only one that joined.
        with pytest.raises(RequestError, match="runs in remote mode, not local"):
            c.execute("true", kernel="far", mode="local")
        r = c.execute("true", kernel="near", mode="remote")
        assert r.ename == "NoSuchKernel"
        assert "no remote agent has joined as kernel 'near'" in (r.evalue or "")
        # Jupyter clients reach it too; a restart cannot be done from here and says so.
        conn = c.connect_jupyter("far", mode="remote")
        jc = BlockingKernelClient()
        jc.load_connection_info(conn["connection"])
        jc.start_channels()
        try:
            reply = jc.execute_interactive("echo jupyter-far", timeout=10)
            assert reply["content"]["status"] == "ok"
            jc.shutdown(restart=True)
            restart = jc.control_channel.get_msg(timeout=10)
            assert restart["content"]["status"] == "error"
            assert "restart its agent on its host" in restart["content"]["evalue"]
        finally:
            jc.stop_channels()
        # Files and background processes work there as on any kernel (the same filesystem
        # here, another network namespace: the process sees the other host's address).
        target = f"{short_tempdir('stg-remote-files-')}/remote.txt"
        c.write_file("far", target, b"far away\n", mode="remote")
        assert c.read_file("far", target, mode="remote") == b"far away\n"
        proc = c.start(f"ip -4 -o addr | grep -c {REMOTE_IP}", kernel="far", mode="remote")
        assert proc.wait(timeout=30) == 0
        assert proc.output().data == b"1\n"
        wait_for(
            lambda: (
                "kernel name 'mine' is taken" in srv.log()
                and "refused a CurveZMQ peer with an unknown public key" in srv.log()
            ),
            timeout=15,
        )
        assert all(k["name"] != "intruder" for k in c.list_kernels())  # unknown key refused
        assert c.execute("echo $HOSTNAME-here", kernel="mine").stdout == f"{os.uname()[1]}-here\n"
        host_if = f"{netns}h"
        cut = time.monotonic()
        sh("ip", "link", "set", host_if, "down")
        wait_for(
            lambda: next(k for k in c.list_kernels() if k["name"] == "far")["state"] == "dead",
            timeout=10,
        )
        # Dead within 3 heartbeats of 0.3 s: that bound is the point, so only ~50% more slack
        # than before (1.9 s) for a slow machine.
        assert time.monotonic() - cut < 3 * 0.3 + 2.0
        r = c.execute("true", kernel="far", mode="remote")
        assert r.ename == "KernelDied" and "lost its agent" in (r.evalue or "")
    finally:
        for proc in (good, bad, squatter):
            proc.kill()
            proc.wait(timeout=10)


def test_tcp_clients_need_an_authorized_curve_key(netns: str, server_factory: Any) -> None:
    port = 5500 + os.getpid() % 200
    srv = server_factory(STIGMER_CLIENT_ENDPOINT=f"tcp://{HOST_IP}:{port}")
    keys = short_tempdir("stg-keys-")
    stigmer(srv, "curve", "keygen", "laptop", "--dir", keys)
    stigmer(srv, "curve", "keygen", "nobody", "--dir", keys)
    stigmer(srv, "curve", "authorize", f"{keys}/laptop.key")
    server_public, _ = zmq.auth.load_certificate(str(srv.runtime.path / "curve" / "server.key"))
    hmac = Session(srv.runtime.read_key())

    def ask(cert: str) -> dict[str, Any] | None:
        public, secret = zmq.auth.load_certificate(cert)
        ctx = zmq.Context()
        try:
            sock = ctx.socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            sock.curve_serverkey, sock.curve_publickey, sock.curve_secretkey = (
                server_public,
                public,
                secret,
            )
            sock.connect(f"tcp://{HOST_IP}:{port}")
            sock.send_multipart(hmac.serialize(hmac.msg("kernel_list_request", {})))
            if not sock.poll(3000):
                return None
            return Session(srv.runtime.read_key()).deserialize(sock.recv_multipart())[1].content
        finally:
            ctx.destroy(linger=0)

    assert ask(f"{keys}/laptop.key_secret") == {"status": "ok", "kernels": []}
    assert ask(f"{keys}/nobody.key_secret") is None
    # The Python client does the same with RemoteServer.
    from stigmer_kernel.client import Client, RemoteServer

    remote = RemoteServer(
        f"tcp://{HOST_IP}:{port}",
        srv.runtime.read_key(),
        str(srv.runtime.path / "curve" / "server.key"),
        f"{keys}/laptop.key_secret",
    )
    with Client(remote=remote) as c:
        assert c.execute("echo over-curve", kernel="tcp").stdout == "over-curve\n"
    # And the CLI, from a runtime directory of its own (nothing of the server's on this side).
    far = [
        "--runtime-dir",
        short_tempdir("stg-far-"),
        "--remote",
        f"tcp://{HOST_IP}:{port}",
        "--remote-key",
        str(srv.runtime.key_path),
        "--server-key",
        str(srv.runtime.path / "curve" / "server.key"),
        "--curve-cert",
    ]
    cli = [sys.executable, "-m", "stigmer_kernel"]
    ran = subprocess.run(
        [
            *cli,
            *far,
            f"{keys}/laptop.key_secret",
            "run",
            "-k",
            "tcp",
            "--",
            "echo $((6*7)); exit 3",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert (ran.stdout, ran.returncode) == ("42\n", 3)
    listed = subprocess.run(
        [*cli, *far, f"{keys}/laptop.key_secret", "kernels", "list", "--json"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert "tcp" in [k["name"] for k in json.loads(listed.stdout)]
    refused = subprocess.run(
        [*cli, *far, f"{keys}/nobody.key_secret", "kernels", "list", "--json"],
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert refused.returncode != 0 and refused.stdout == ""
    assert "refused this client's CURVE key" in refused.stderr  # said, not a silent hang
    incomplete = subprocess.run(
        [*cli, "--remote", f"tcp://{HOST_IP}:{port}", "kernels", "list"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert incomplete.returncode != 0
    assert "--remote needs --remote-key, --server-key, --curve-cert too" in incomplete.stderr
    for bad, said in (
        (["--curve-cert", f"{keys}/laptop.key"], "holds no secret key"),  # the public half
        (["--remote", f"tcp://{HOST_IP}:notaport"], "give the server's tcp://HOST:PORT"),
    ):
        args = [*far, f"{keys}/laptop.key_secret", *bad, "kernels", "list"]
        done = subprocess.run([*cli, *args], capture_output=True, text=True, timeout=20)
        assert done.returncode != 0 and said in done.stderr, done.stderr


def test_plain_tcp_only_on_loopback(server_factory: Any) -> None:
    from tests.conftest import make_server

    srv = make_server(STIGMER_CLIENT_ENDPOINT="tcp://0.0.0.0:5999", STIGMER_ALLOW_PLAIN_TCP="true")
    proc = srv.start_refused()
    assert proc.returncode == 125
    assert "refusing plain TCP on tcp://0.0.0.0:5999" in proc.stderr
    loop = server_factory(
        STIGMER_CLIENT_ENDPOINT="tcp://127.0.0.1:5998", STIGMER_ALLOW_PLAIN_TCP="true"
    )
    assert "listening on tcp://127.0.0.1:5998 (plain TCP)" in loop.log()


def test_agents_cannot_join_over_plain_tcp(server_factory: Any) -> None:
    """Joining hands the broker a key the agent chose: only over CurveZMQ, never plain TCP."""
    port = 5300 + os.getpid() % 200
    srv = server_factory(
        STIGMER_AGENT_ENDPOINT=f"tcp://127.0.0.1:{port}", STIGMER_ALLOW_PLAIN_TCP="true"
    )
    key = os.urandom(32).hex()
    agent = Session(key.encode())
    ctx = zmq.Context()
    try:
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.IDENTITY, b"sneaky-r0001:1:ab")
        sock.connect(f"tcp://127.0.0.1:{port}")
        register = agent.msg("agent_register", {"join": "sneaky", "key": key, "pid": 1})
        sock.send_multipart(agent.serialize(register))
        assert not sock.poll(1500)  # no welcome
    finally:
        ctx.destroy(linger=0)
    c = srv.client()
    assert all(k["name"] != "sneaky" for k in c.list_kernels())
    assert "joining needs CurveZMQ, refused on plain TCP" in srv.log()


def test_curve_directories_are_owner_only(server: Server) -> None:
    curve = server.runtime.path / "curve"
    (curve / "authorized").mkdir(parents=True)
    for directory in (curve, curve / "authorized"):
        directory.chmod(0o755)  # as an older `curve authorize` left them
    keys = short_tempdir("stg-keys-")
    stigmer(server, "curve", "keygen", "laptop", "--dir", keys)
    stigmer(server, "curve", "authorize", f"{keys}/laptop.key")
    printed = stigmer(server, "curve", "server-key")
    assert printed == str(curve / "server.key")
    for directory in (curve, curve / "authorized"):
        assert directory.stat().st_mode & 0o777 == 0o700, directory
    assert (curve / "server.key_secret").stat().st_mode & 0o777 == 0o600
