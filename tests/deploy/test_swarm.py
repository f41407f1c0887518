"""Pool members on a real single-node Docker Swarm: deploy/swarm/stack.yml run by
``docker stack deploy``, with a pool image built from the offline test image, the pool's
CurveZMQ keys as Swarm secrets, and a test broker on the host.

The module initializes the swarm (``docker swarm init --advertise-addr 127.0.0.1``) and leaves
it at the end; it skips (fails in CI) when the engine cannot run one, and when a swarm is
already active (someone else's: it is not ours to leave). Everything it makes is named after
:data:`STACK` (the stack's services, secrets and network carry its namespace label) and goes
with the swarm, as does the pool image it built.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from stigmer_kernel import Client
from tests.conftest import ROOT, Server, make_server, short_tempdir
from tests.conftest import stigmer_out as stigmer
from tests.sandbox.conftest import SESSION, TEST_IMAGE

STACK_FILE = ROOT / "deploy" / "swarm" / "stack.yml"
STACK = f"stgtest{SESSION}"
SERVICE = f"{STACK}_member"
IMAGE = f"stigmer-pool:tests-{SESSION}"
POOL = "default"
#: How long a Swarm task may take to (re)start and join: the restart delay (1 s), a container
#: start, the agent's import and registration.
JOIN_TIMEOUT = 60.0


def _unavailable(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"the Swarm tests need a Docker engine with swarm mode in CI: {reason}")
    pytest.skip(reason)


def docker(*args: str, check: bool = True, timeout: float = 120) -> str:
    proc = subprocess.run(
        ["docker", *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)}: {proc.stdout}{proc.stderr}")
    return proc.stdout.strip()


def wait_until(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    """``predicate()``'s first true value; fail naming ``what`` if none comes in time."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"not within {timeout:.0f}s: {what}"
        time.sleep(0.2)


def _host_address() -> str:
    """The host as a task on an overlay network reaches it: docker_gwbridge's gateway (its
    way out), or, before the first task made that network, docker0's (also the host's own
    address; the broker listens on 0.0.0.0)."""
    for network in ("docker_gwbridge", "bridge"):
        gateway = docker(
            "network", "inspect", network, "-f", "{{(index .IPAM.Config 0).Gateway}}", check=False
        )
        if gateway:
            return gateway
    raise AssertionError("neither docker_gwbridge nor bridge has a gateway")


class Swarm:
    """The broker, the pool's keys and the deployed stack."""

    def __init__(self, srv: Server, port: int, keys: str) -> None:
        self.srv = srv
        self.port = port
        self.keys = keys
        self.client: Client = srv.client()

    def figures(self) -> dict[str, int]:
        return dict(self.client.server_info().get("pools", {}).get(POOL, {}))

    def listed(self) -> dict[str, int]:
        """The figures as operators see them: ``stigmer pools list --json``."""
        return dict(json.loads(stigmer(self.srv, "pools", "list", "--json")).get(POOL, {}))

    def idle(self, n: int, **more: int) -> dict[str, int]:
        """Wait for ``n`` idle members (and the other figures in ``more``)."""

        def reached() -> dict[str, int] | None:
            f = self.figures()
            ok = f.get("idle") == n and all(f.get(k) == v for k, v in more.items())
            return f if ok else None

        return wait_until(reached, JOIN_TIMEOUT, f"{n} idle members {more} (now {self.figures()})")

    def containers(self) -> dict[str, str]:
        """The service's running task containers: hostname (the short id) -> task name."""
        out = docker(
            "ps",
            "--filter",
            f"label=com.docker.swarm.service.name={SERVICE}",
            "--format",
            '{{.ID}} {{.Label "com.docker.swarm.task.name"}}',
        )
        return dict(line.split(" ", 1) for line in out.splitlines() if line)

    def kernel(self, name: str) -> dict[str, Any] | None:
        return next((k for k in self.client.list_kernels() if k["name"] == name), None)

    def shutdown(self, *names: str) -> None:
        for name in names:
            with contextlib.suppress(Exception):
                self.client.shutdown_kernel(name)

    def restart_broker(self, **settings: str) -> None:
        assert self.srv.proc is not None
        os.killpg(self.srv.proc.pid, signal.SIGKILL)
        self.srv.proc.wait()
        self.srv.env.update(settings)
        self.srv.start()
        self.client = self.srv.client()


def _cleanup(keys: str | None, had_gwbridge: bool) -> None:
    """Everything this module may have made, whether or not it got that far."""
    docker("stack", "rm", STACK, check=False)
    label = f"label=com.docker.stack.namespace={STACK}"
    with contextlib.suppress(AssertionError):
        wait_until(
            lambda: (
                not docker("ps", "-aq", "--filter", label, check=False)
                and not docker("network", "ls", "-q", "--filter", label, check=False)
            ),
            30,
            "the stack's containers and network gone",
        )
    for kind in ("service", "secret", "network"):
        for ident in docker(kind, "ls", "-q", "--filter", label, check=False).split():
            docker(kind, "rm", ident, check=False)
    for ident in docker("ps", "-aq", "--filter", label, check=False).split():
        docker("rm", "-f", ident, check=False)
    docker("swarm", "leave", "--force", check=False)
    if not had_gwbridge:  # made by the engine for the first task; leaving the swarm keeps it
        docker("network", "rm", "docker_gwbridge", check=False)
    docker("rmi", IMAGE, check=False)
    if keys:
        shutil.rmtree(keys, ignore_errors=True)


@pytest.fixture(scope="module")
def swarm() -> Iterator[Swarm]:
    if shutil.which("docker") is None:
        _unavailable("no docker CLI")
    state = subprocess.run(
        ["docker", "info", "--format", "{{.Swarm.LocalNodeState}}"],
        capture_output=True,
        text=True,
        check=False,
    )
    if state.returncode != 0:
        _unavailable(f"no Docker engine: {state.stderr.strip()}")
    if docker("images", "-q", TEST_IMAGE, check=False) == "":
        _unavailable(f"no image {TEST_IMAGE}; run scripts/build-test-image.sh")
    if state.stdout.strip() != "inactive":
        _unavailable(f"this engine's swarm is {state.stdout.strip()!r}, not ours to use")
    had_gwbridge = bool(docker("network", "ls", "-q", "--filter", "name=^docker_gwbridge$"))
    init = subprocess.run(
        ["docker", "swarm", "init", "--advertise-addr", "127.0.0.1"],
        capture_output=True,
        text=True,
        check=False,
    )
    if init.returncode != 0:
        _unavailable(f"docker swarm init failed: {init.stderr.strip()}")
    srv: Server | None = None
    keys = None
    try:
        started = time.monotonic()
        stigmer_cmd = [sys.executable, "-m", "stigmer_kernel"]
        subprocess.run(
            [*stigmer_cmd, "sandbox", "build", "pool", "--from", TEST_IMAGE, "--tag", IMAGE],
            capture_output=True,
            text=True,
            check=True,
            timeout=600,
        )
        port = 5900 + (os.getpid() * 7 + int(time.time())) % 90
        srv = make_server(
            STIGMER_AGENT_ENDPOINT=f"tcp://0.0.0.0:{port}",
            STIGMER_HEARTBEAT_INTERVAL="0.5",
            STIGMER_POOL_WAIT="60",
        ).start()
        keys = short_tempdir("stg-swarm-keys-")
        stigmer(srv, "curve", "keygen", "pool-default", "--dir", keys)
        stigmer(srv, "curve", "authorize", "--pool", POOL, f"{keys}/pool-default.key")
        env = {
            **os.environ,
            "STIGMER_BROKER": f"tcp://{_host_address()}:{port}",
            "STIGMER_SERVER_KEY_FILE": str(srv.runtime.path / "curve" / "server.key"),
            "STIGMER_POOL_CERT_FILE": f"{keys}/pool-default.key_secret",
            "STIGMER_POOL_IMAGE": IMAGE,
            "STIGMER_POOL_REPLICAS": "2",
        }
        subprocess.run(
            ["docker", "stack", "deploy", "-c", str(STACK_FILE), STACK],
            env=env,
            capture_output=True,
            text=True,
            check=True,
            timeout=120,
        )
        s = Swarm(srv, port, keys)
        s.idle(2)
        print(f"swarm, image, broker, stack and 2 members: {time.monotonic() - started:.1f}s")
        yield s
    finally:
        if srv is not None:
            srv.stop()
        _cleanup(keys, had_gwbridge)
        if srv is not None:
            shutil.rmtree(srv.runtime_dir, ignore_errors=True)


@pytest.fixture(autouse=True)
def _timed(request: Any) -> Iterator[None]:
    """Print how long each test took (pytest -s shows it)."""
    started = time.monotonic()
    yield
    print(f"\n{request.node.name}: {time.monotonic() - started:.1f}s")


def test_replicas_join_and_a_kernel_runs_in_a_task(swarm: Swarm) -> None:
    listed = swarm.listed()
    assert listed["idle"] == 2 and listed["busy"] == 0, listed
    tasks = swarm.containers()
    assert len(tasks) == 2, tasks
    r = swarm.client.execute(
        "hostname; id -u; pwd; grep NoNewPrivs /proc/self/status | cut -f2;"
        " touch f; chmod u+s f 2>/dev/null && echo setuid || echo refused",
        kernel="k1",
        mode="sandbox",
        pool=POOL,
    )
    assert r.status == "ok", r.evalue
    hostname, uid, cwd, nnp, setuid = r.stdout.split()
    assert hostname in tasks and tasks[hostname].startswith(f"{SERVICE}.")
    assert (uid, cwd) == ("10001", "/tmp/workspace")
    assert (nnp, setuid) == ("1", "refused")  # hardened as a Docker sandbox (--sandbox)
    assert swarm.listed()["busy"] == 1
    swarm.shutdown("k1")
    swarm.idle(2, busy=0)


def test_two_replicas_serve_three_kernels(swarm: Swarm) -> None:
    joined = swarm.figures()["joined"]
    first = swarm.client.execute("hostname", kernel="a", mode="sandbox", pool=POOL)
    second = swarm.client.execute("hostname", kernel="b", mode="sandbox", pool=POOL)
    assert first.status == second.status == "ok"
    assert first.stdout != second.stdout
    results: list[Any] = []
    third_client = swarm.srv.client()
    waiter = threading.Thread(
        target=lambda: results.append(
            third_client.execute("hostname", kernel="c", mode="sandbox", pool=POOL)
        )
    )
    waiter.start()
    try:
        wait_until(lambda: swarm.figures().get("waiting") == 1, 15, "the third kernel waits")
        assert not results  # no member for it while two kernels hold both
        swarm.shutdown("a")
        waiter.join(timeout=JOIN_TIMEOUT)
        assert results, "the third kernel was not served after the first ended"
        (third,) = results
        assert third.status == "ok", third.evalue
        # Served by the replacement of the first kernel's task (a new container).
        assert third.stdout not in (first.stdout, second.stdout)
        assert swarm.figures()["joined"] == joined + 1
    finally:
        waiter.join(timeout=JOIN_TIMEOUT)
        swarm.shutdown("a", "b", "c")
    swarm.idle(2, busy=0)


def test_a_file_is_gone_on_the_recycled_replica(swarm: Swarm) -> None:
    r = swarm.client.execute(
        "echo secret > /tmp/workspace/note; echo secret > /tmp/note; echo secret > $HOME/n;"
        " hostname",
        kernel="w",
        mode="sandbox",
        pool=POOL,
    )
    assert r.status == "ok", r.evalue
    writer = r.stdout.strip()
    slot = swarm.containers()[writer].split(".")[1]  # stack_member.SLOT.TASKID
    swarm.shutdown("w")
    swarm.idle(2, busy=0)
    (recycled,) = [h for h, task in swarm.containers().items() if task.split(".")[1] == slot]
    assert recycled != writer  # a new container in the same slot
    # Claim both members; one is the recycled replica.
    seen = {}
    for name in ("x", "y"):
        out = swarm.client.execute(
            "hostname; cat /tmp/workspace/note /tmp/note $HOME/n 2>&1 | grep -c secret",
            kernel=name,
            mode="sandbox",
            pool=POOL,
        )
        host, count = out.stdout.split()
        seen[host] = count
    swarm.shutdown("x", "y")
    assert seen.get(recycled) == "0", seen
    swarm.idle(2, busy=0)


def test_a_killed_task_gives_kernel_died_and_is_replaced(swarm: Swarm) -> None:
    joined = swarm.figures()["joined"]
    r = swarm.client.execute("X=1; hostname", kernel="d", mode="sandbox", pool=POOL)
    assert r.status == "ok", r.evalue
    host = r.stdout.strip()
    running = threading.Event()
    results: list[Any] = []
    runner = swarm.srv.client()
    waiter = threading.Thread(
        target=lambda: results.append(
            runner.execute(
                "echo started; sleep 120",
                kernel="d",
                mode="sandbox",
                pool=POOL,
                on_stdout=lambda _text: running.set(),
            )
        )
    )
    waiter.start()
    try:
        assert running.wait(15), "the command did not start"
        docker("kill", host)
        waiter.join(timeout=30)
        assert results, "the running command got no answer after its task was killed"
        (died,) = results
        assert died.ename == "KernelDied", (died.ename, died.evalue)
        assert "kernel 'd' died" in (died.evalue or ""), died.evalue
    finally:
        waiter.join(timeout=30)
    swarm.idle(2, busy=0, joined=joined + 1)  # Swarm's replacement joined
    assert host not in swarm.containers()
    # The next request for it starts it again on another member, its state reset.
    again = swarm.client.execute("echo X=$X; hostname", kernel="d", mode="sandbox", pool=POOL)
    assert again.status == "ok", again.evalue
    assert again.stdout.split()[0] == "X=" and again.stdout.split()[1] != host
    swarm.shutdown("d")
    swarm.idle(2, busy=0)


def test_service_scale_up_adds_members(swarm: Swarm) -> None:
    docker("service", "scale", "--detach", f"{SERVICE}=3")
    swarm.idle(3)
    three = set(swarm.containers())
    assert len(three) == 3
    # Down again: the removed member ends on SIGTERM (143), not at SIGKILL after the grace.
    docker("service", "scale", "--detach", f"{SERVICE}=2")
    swarm.idle(2, members=2)
    (gone,) = wait_until(lambda: three - set(swarm.containers()), 15, "one container stopped")
    code = wait_until(
        lambda: (
            docker("inspect", "-f", "{{.State.Status}} {{.State.ExitCode}}", gone, check=False)
            .replace("running", "")
            .strip()
        ),
        15,
        "the removed member exited",
    )
    assert code.split()[-1] == "143", code


def test_a_restarted_broker_finds_its_members(swarm: Swarm) -> None:
    r = swarm.client.execute("X=kept", kernel="r", mode="sandbox", pool=POOL)
    assert r.status == "ok", r.evalue
    swarm.idle(1, busy=1)
    swarm.restart_broker()
    swarm.idle(1, busy=1)  # the idle member joined again, the busy one is adopted
    wait_until(lambda: (swarm.kernel("r") or {}).get("state") == "idle", 30, "kernel r back")
    again = swarm.client.execute("echo $X", kernel="r", mode="sandbox", pool=POOL)
    assert again.stdout == "kept\n", (again.stdout, again.evalue)
    swarm.shutdown("r")
    swarm.idle(2, busy=0)


def test_ttl_expiry_recycles_a_member(swarm: Swarm) -> None:
    swarm.restart_broker(STIGMER_SANDBOX_TTL="2")
    swarm.idle(2)
    left = swarm.figures().get("left", 0)
    r = swarm.client.execute("hostname", kernel="t", mode="sandbox", pool=POOL)
    assert r.status == "ok", r.evalue
    host = r.stdout.strip()
    wait_until(lambda: swarm.kernel("t") is None, 30, "kernel t expired")
    wait_until(lambda: host not in swarm.containers(), 30, "its task's container ended")
    swarm.idle(2, busy=0, left=left + 1)
    assert host not in swarm.containers()
