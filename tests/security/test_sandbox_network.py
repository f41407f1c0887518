"""Sandbox network and disk (issue 10, item 9), attacked for real from real containers.

By default (STIGMER_SANDBOX_NETWORK=isolated) a server's sandboxes share a bridge of its own
with no traffic between containers, and a root server's host firewall rejects new connections
from that bridge to any address of the host; outbound traffic (package mirrors) still works.
What a sandbox can write outside /workspace is capped by tmpfs mounts. After every test, no
network and no iptables rule of its servers is left.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from stigmer_kernel import Client
from stigmer_kernel.broker.sandbox_tcp import bridge_address
from stigmer_kernel.provisioners.container import LABEL_KERNEL, LABEL_SERVER, server_id
from stigmer_kernel.provisioners.network import network_name
from tests.conftest import Server
from tests.sandbox.conftest import containers_of, holders_of, sandbox_workspace
from tests.sandbox.test_netns import ready_holder

#: Connects to each host:port given and prints "<host> connected|refused|timeout|<error>".
PROBE = """\
import socket, sys
port = int(sys.argv[1])
for host in sys.argv[2:]:
    s = socket.socket()
    s.settimeout(2)
    try:
        s.connect((host, port))
        print(host, "connected")
    except ConnectionRefusedError:
        print(host, "refused")
    except socket.timeout:
        print(host, "timeout")
    except OSError as exc:
        print(host, exc.strerror)
    finally:
        s.close()
"""


def probe(c: Client, kernel: str, port: int, *hosts: str) -> dict[str, str]:
    """From sandbox ``kernel``, what a TCP connect to each of ``hosts`` on ``port`` gives."""
    r = c.execute(
        f"python3 - {port} {' '.join(hosts)} <<'EOF'\n{PROBE}EOF", kernel=kernel, mode="sandbox"
    )
    assert r.exit_code == 0, r.stderr
    return dict(line.split(" ", 1) for line in r.stdout.splitlines())


def serve_http(c: Client, kernel: str, workspace: str) -> None:
    """An HTTP server on port 8000 of every address in sandbox ``kernel``, once it answers."""
    serve = "nohup python3 -m http.server 8000 --bind 0.0.0.0 >/dev/null 2>&1 &"
    assert c.execute(serve, kernel=kernel, mode="sandbox", cwd=workspace).ok
    deadline = time.monotonic() + 10
    while probe(c, kernel, 8000, "127.0.0.1") != {"127.0.0.1": "connected"}:
        assert time.monotonic() < deadline, "the sandbox's HTTP server did not come up"


def iptables_rules_of(network: str) -> list[str]:
    listed = subprocess.run(["iptables", "-S"], capture_output=True, text=True, check=True)
    return [line for line in listed.stdout.splitlines() if network in line]


def networks_of(docker_client: Any, srv: Server) -> list[Any]:
    label = f"{LABEL_SERVER}={server_id(srv.runtime)}"
    return list(docker_client.networks.list(filters={"label": label}))


def container_of(docker_client: Any, srv: Server, kernel: str) -> Any:
    (container,) = [
        x for x in containers_of(docker_client, srv) if x.labels.get(LABEL_KERNEL) == kernel
    ]
    return container


def primary_address() -> str:
    """The host's address on its default route (no packet is sent)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.connect(("8.8.8.8", 53))
        return str(s.getsockname()[0])
    finally:
        s.close()


class HostListener:
    """A TCP server on the host bound to 0.0.0.0 on a random port, counting accepted peers."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("0.0.0.0", 0))
        self.port = int(self.sock.getsockname()[1])
        self.accepted: list[str] = []
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, peer = self.sock.accept()
            except OSError:
                return
            self.accepted.append(peer[0])
            conn.close()

    def close(self) -> None:
        self.sock.shutdown(socket.SHUT_RDWR)  # wakes the accept() in progress
        self.sock.close()
        self._thread.join(timeout=5)


@pytest.fixture
def host_listener() -> Iterator[HostListener]:
    listener = HostListener()
    yield listener
    listener.close()


@pytest.fixture
def workspace() -> Iterator[str]:
    path = sandbox_workspace("stg-net-")  # sandboxes run as its owner, never root
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def root_only() -> None:
    if os.getuid() != 0 or shutil.which("iptables") is None:
        if os.environ.get("CI"):
            pytest.fail("the host firewall tests need root and iptables in CI")
        pytest.skip("the host firewall needs a root server and iptables")


@pytest.fixture
def isolated(
    sandbox_factory: Callable[..., Server], docker_client: Any
) -> Iterator[Callable[..., Server]]:
    """Start sandbox servers; after the test, each stopped leaves no network nor rule."""
    started: list[Server] = []

    def make(**settings: str) -> Server:
        srv = sandbox_factory(**settings)
        started.append(srv)
        return srv

    yield make
    for srv in started:
        srv.stop()
        assert networks_of(docker_client, srv) == []
        assert holders_of(docker_client, srv) == []
        assert iptables_rules_of(network_name(server_id(srv.runtime))) == []


def test_sandboxes_of_one_server_cannot_reach_each_other(
    isolated: Callable[..., Server], docker_client: Any, workspace: str
) -> None:
    srv = isolated()
    c = srv.client()
    serve_http(c, "web", workspace)
    assert c.execute("true", kernel="attacker", mode="sandbox", cwd=workspace).ok
    name = network_name(server_id(srv.runtime))
    web = container_of(docker_client, srv, "web").attrs["NetworkSettings"]["Networks"][name]
    attempt = probe(c, "attacker", 8000, web["IPAddress"])
    assert attempt[web["IPAddress"]] in ("timeout", "refused"), attempt
    # Nor is there an IPv6 path (link-local on the bridge) around the IPv4 rules.
    r = c.execute("cat /proc/net/if_inet6", kernel="attacker", mode="sandbox")
    assert [line for line in r.stdout.splitlines() if not line.endswith(" lo")] == []
    info = c.kernel_info("attacker")
    assert info["network"] == name


def test_a_sandbox_cannot_reach_services_bound_on_the_host(
    isolated: Callable[..., Server],
    docker_client: Any,
    host_listener: HostListener,
    workspace: str,
    root_only: None,
) -> None:
    srv = isolated()
    c = srv.client()
    assert c.execute("true", kernel="k", mode="sandbox", cwd=workspace).ok
    name = network_name(server_id(srv.runtime))
    gateway = container_of(docker_client, srv, "k").attrs["NetworkSettings"]["Networks"][name][
        "Gateway"
    ]
    targets = [gateway, primary_address(), bridge_address() or gateway]
    with socket.create_connection(("127.0.0.1", host_listener.port), timeout=5):
        pass  # the host itself reaches it
    deadline = time.monotonic() + 5
    while len(host_listener.accepted) < 1:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    attempt = probe(c, "k", host_listener.port, *targets)
    assert set(attempt.values()) == {"refused"}, attempt  # rejected at once, not left to hang
    assert host_listener.accepted == ["127.0.0.1"]
    assert c.kernel_info("k")["host_firewall"] == "on"


def test_a_sandbox_in_a_network_holders_namespace_is_as_cut_off(
    isolated: Callable[..., Server],
    docker_client: Any,
    host_listener: HostListener,
    workspace: str,
    root_only: None,
) -> None:
    """The attacks above from a sandbox that joined a namespace made ahead (netns.py)."""
    srv = isolated()
    c = srv.client()
    serve_http(c, "web", workspace)
    holder = ready_holder(docker_client, srv)
    assert c.execute("true", kernel="attacker", mode="sandbox", cwd=workspace).ok
    attacker = container_of(docker_client, srv, "attacker")
    assert attacker.attrs["HostConfig"]["NetworkMode"] == f"container:{holder.id}"
    name = network_name(server_id(srv.runtime))
    web = container_of(docker_client, srv, "web").attrs["NetworkSettings"]["Networks"][name]
    attempt = probe(c, "attacker", 8000, web["IPAddress"])
    assert attempt[web["IPAddress"]] in ("timeout", "refused"), attempt
    # The holder's own address is the attacker's; nothing listens there but what it runs.
    own = holder.attrs["NetworkSettings"]["Networks"][name]
    assert own["IPAddress"] != web["IPAddress"]
    targets = [own["Gateway"], primary_address(), bridge_address() or own["Gateway"]]
    assert set(probe(c, "attacker", host_listener.port, *targets).values()) == {"refused"}
    assert host_listener.accepted == []
    r = c.execute("cat /proc/net/if_inet6", kernel="attacker", mode="sandbox")
    assert [line for line in r.stdout.splitlines() if not line.endswith(" lo")] == []


def test_package_mirrors_are_still_reachable_and_scratch_space_is_capped(
    isolated: Callable[..., Server], workspace: str
) -> None:
    """Outbound: an HTTP GET to the Debian mirror of /etc/apt (DNS through Docker's embedded
    resolver included). /tmp and /var/tmp are tmpfs of 1g by default, /tmp/home included."""
    srv = isolated()
    c = srv.client()
    fetch = (
        "python3 - <<'EOF'\n"
        "import re, urllib.request\n"
        "sources = open('/etc/apt/sources.list').read()\n"
        "mirror = re.search(r'^deb\\s+(http://\\S+)', sources, re.M).group(1).rstrip('/')\n"
        "with urllib.request.urlopen(mirror + '/dists/bookworm/Release', timeout=20) as r:\n"
        "    print(r.status, r.read(12))\n"
        "EOF"
    )
    r = c.execute(fetch, kernel="k", mode="sandbox", cwd=workspace)
    assert (r.exit_code, r.stdout) == (0, "200 b'Origin: Debi'\n"), r.stderr
    sizes = c.execute(
        "df -k --output=size,target /tmp /var/tmp /run/lock", kernel="k", mode="sandbox"
    )
    assert sizes.stdout.split()[3:] == [  # after the header "1K-blocks Mounted on"
        "1048576",
        "/tmp",
        "1048576",
        "/var/tmp",
        "8192",
        "/run/lock",
    ]


def test_writing_past_the_tmpfs_size_fails_with_enospc(
    isolated: Callable[..., Server], workspace: str
) -> None:
    srv = isolated(STIGMER_SANDBOX_TMPFS_SIZE="8m")
    c = srv.client()
    fill = "for d in /tmp /var/tmp /run/lock; do head -c 20M /dev/zero >$d/f || echo full $d; done"
    r = c.execute(fill, kernel="k", mode="sandbox", cwd=workspace)
    assert r.stdout == "full /tmp\nfull /var/tmp\nfull /run/lock\n", r.stderr
    assert r.stderr.count("No space left on device") == 3, r.stderr
    # Still usable as /tmp: exec allowed, HOME there.
    r = c.execute(
        "rm /tmp/f; printf '#!/bin/sh\\necho ran\\n' > /tmp/x; chmod +x /tmp/x; /tmp/x; "
        "echo $HOME; test -d $HOME && echo home",
        kernel="k",
        mode="sandbox",
    )
    assert r.stdout == "ran\n/tmp/home\nhome\n", r.stderr


def test_tcp_transport_lets_in_the_broker_port_only(
    isolated: Callable[..., Server],
    docker_client: Any,
    host_listener: HostListener,
    workspace: str,
    root_only: None,
) -> None:
    srv = isolated(STIGMER_SANDBOX_TRANSPORT="tcp")
    c = srv.client()
    r = c.execute("echo over tcp", kernel="t", mode="sandbox", cwd=workspace)
    assert r.stdout == "over tcp\n", r.stderr
    ready_holder(docker_client, srv)  # the next one joins it: the broker's host name is its
    r = c.execute("echo joined", kernel="j", mode="sandbox", cwd=workspace)
    assert r.stdout == "joined\n", r.stderr
    assert container_of(docker_client, srv, "j").labels.get("stigmer.netns")
    host = bridge_address()
    assert host is not None
    assert probe(c, "t", host_listener.port, host) == {host: "refused"}
    assert host_listener.accepted == []
    rules = iptables_rules_of(network_name(server_id(srv.runtime)))
    assert len(rules) == 2 and "--dport" in rules[0] and "REJECT" in rules[1], rules


def test_the_network_of_a_dead_server_is_removed_by_the_next_one(
    isolated: Callable[..., Server], docker_client: Any, workspace: str, root_only: None
) -> None:
    dead = isolated()
    c = dead.client()
    assert c.execute("true", kernel="k", mode="sandbox", cwd=workspace).ok
    name = network_name(server_id(dead.runtime))
    assert len(iptables_rules_of(name)) == 1
    assert dead.proc is not None
    dead.proc.send_signal(signal.SIGKILL)  # no close(): its network and rules stay
    dead.proc.wait()
    for container in containers_of(docker_client, dead):
        container.remove(force=True)
    assert [n.name for n in networks_of(docker_client, dead)] == [name]
    isolated()  # its leftover check removes the dead server's network, then its rules
    deadline = time.monotonic() + 20
    while networks_of(docker_client, dead) or iptables_rules_of(name):
        assert time.monotonic() < deadline, "the dead server's network or rules stayed"
        time.sleep(0.1)


def test_a_disk_limit_the_storage_driver_cannot_apply_is_refused_clearly(
    isolated: Callable[..., Server], docker_client: Any, workspace: str
) -> None:
    """STIGMER_SANDBOX_DISK caps the writable layer where the driver can (overlay2 on xfs with
    pquota, btrfs, zfs); elsewhere the sandbox does not start and says which setting to unset."""
    info = docker_client.info()
    backing = dict(info.get("DriverStatus") or []).get("Backing Filesystem")
    srv = isolated(STIGMER_SANDBOX_DISK="1g")
    c = srv.client()
    if info.get("Driver") == "overlay2" and backing != "xfs":
        r = c.execute("true", kernel="k", mode="sandbox", cwd=workspace)
        assert r.status == "error" and "unset STIGMER_SANDBOX_DISK" in str(r.evalue), r.evalue
        assert containers_of(docker_client, srv) == []
    else:
        r = c.execute("df -k --output=size / | tail -1", kernel="k", mode="sandbox", cwd=workspace)
        assert int(r.stdout) <= 1024 * 1024, r.stdout
