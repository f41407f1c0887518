"""Sandbox kernels on a real Docker engine: isolation, state, lifecycle, hardening."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from stigmer_kernel import Client
from tests.conftest import Server, short_tempdir, wait_for
from tests.sandbox.conftest import (
    SANDBOX_GID,
    SANDBOX_UID,
    TEST_IMAGE,
    containers_of,
    holders_of,
    sandbox_workspace,
    warm_pool_server,
)


def sandbox_info(client: Client, name: str) -> dict[str, Any]:
    (info,) = [k for k in client.list_kernels() if k["name"] == name]
    return info


def test_runs_in_a_container_and_keeps_state(sandbox: Server, docker_client: Any) -> None:
    c = sandbox.client()
    r = c.execute("test -f /.dockerenv && echo in-container; pwd", kernel="s1", mode="sandbox")
    assert (r.stdout, r.exit_code, r.mode) == ("in-container\n/workspace\n", 0, "sandbox")
    c.execute("cd /tmp && export V=kept && f() { echo fn; }", kernel="s1", mode="sandbox")
    r = c.execute("pwd; echo $V; f; echo err >&2; exit 3", kernel="s1", mode="sandbox")
    assert (r.stdout, r.stderr, r.exit_code) == ("/tmp\nkept\nfn\n", "err\n", 3)
    info = sandbox_info(c, "s1")
    assert info["mode"] == "sandbox" and info["image"] == TEST_IMAGE and info["container"]
    (container,) = containers_of(docker_client, sandbox)
    assert container.id.startswith(info["container"])
    assert container.labels["stigmer.kernel"] == "s1"


def test_hardened_by_default(sandbox: Server, docker_client: Any) -> None:
    c = sandbox.client()
    c.execute("true", kernel="hard", mode="sandbox")
    (container,) = containers_of(docker_client, sandbox)
    host = container.attrs["HostConfig"]
    assert host["CapDrop"] == ["ALL"]
    assert "no-new-privileges" in host["SecurityOpt"]
    assert not host["Init"]  # the agent is PID 1: no process of the sandbox lacks its filter
    assert host["PidsLimit"] == 512 and host["Memory"] == 2 * 1024**3
    assert container.attrs["Config"]["User"] == f"{SANDBOX_UID}:{SANDBOX_GID}"
    r = c.execute(
        "grep -h -e CapEff -e Seccomp: /proc/self/status; "
        "tr '\\0' ' ' </proc/1/cmdline; echo; id -u",
        kernel="hard",
        mode="sandbox",
    )
    assert "0000000000000000" in r.stdout and "Seccomp:\t2" in r.stdout
    assert "stigmer_kernel.agent" in r.stdout and "--sandbox" in r.stdout
    assert r.stdout.endswith(f"\n{SANDBOX_UID}\n")


def test_files_in_the_workspace_belong_to_the_sandbox_user(sandbox: Server) -> None:
    workspace = sandbox_workspace()
    c = sandbox.client()
    r = c.execute(
        "touch made-inside && mkdir -p sub && echo $HOME && touch $HOME/ok",
        kernel="ws",
        mode="sandbox",
        cwd=workspace,
    )
    assert r.exit_code == 0, r.stderr
    made = Path(workspace, "made-inside")
    assert made.exists() and (made.stat().st_uid, made.stat().st_gid) == (SANDBOX_UID, SANDBOX_GID)
    assert Path(workspace, "sub").stat().st_uid == SANDBOX_UID


def test_timeout_and_interrupt_end_processes_in_the_container(sandbox: Server) -> None:
    c = sandbox.client()
    r = c.execute("echo go; sleep 300 & sleep 301", kernel="stop", mode="sandbox", timeout=1)
    assert (r.status, r.stdout) == ("timeout", "go\n")
    left = c.execute("ps -eo comm | grep -c '^sleep' || true", kernel="stop", mode="sandbox")
    assert left.stdout.strip() == "0"
    results: list[Any] = []
    started = threading.Event()
    worker = threading.Thread(
        target=lambda: results.append(
            c.execute(
                "echo started; sleep 200; echo never",
                kernel="stop",
                mode="sandbox",
                on_stdout=lambda _text: started.set(),
            )
        )
    )
    worker.start()
    assert started.wait(timeout=15), "the command did not start"
    c.interrupt("stop")
    worker.join(timeout=15)
    assert results[0].status == "interrupted"
    left = c.execute("ps -eo comm | grep -c '^sleep' || true", kernel="stop", mode="sandbox")
    assert left.stdout.strip() == "0"


def test_two_clients_share_one_container(sandbox: Server, docker_client: Any) -> None:
    a, b = sandbox.client(), sandbox.client()
    a.execute("shared=yes", kernel="team", mode="sandbox")
    assert b.execute("echo $shared", kernel="team", mode="sandbox").stdout == "yes\n"
    assert len(containers_of(docker_client, sandbox)) == 1


def test_idle_sandbox_expires_and_its_container_is_removed(
    sandbox_factory: Any, docker_client: Any
) -> None:
    srv = sandbox_factory(STIGMER_SANDBOX_TTL="3")
    c = srv.client()
    c.execute("true", kernel="brief", mode="sandbox")
    assert len(containers_of(docker_client, srv)) == 1
    last = time.monotonic()
    wait_for(lambda: not containers_of(docker_client, srv), timeout=20)
    assert time.monotonic() - last < 15
    assert any(e["event"] == "expired" for e in c.events)


def test_without_cleanup_an_expired_sandbox_is_stopped_then_reused(
    sandbox_factory: Any, docker_client: Any
) -> None:
    """STIGMER_SANDBOX_CLEANUP=false: the container is stopped, not removed, and the next
    kernel of that name starts it again, with what was installed in it; other names never get
    it; server stop removes it."""
    srv = sandbox_factory(STIGMER_SANDBOX_TTL="2", STIGMER_SANDBOX_CLEANUP="false")
    c = srv.client()
    work = sandbox_workspace("stg-reuse-")
    first = c.execute("echo kept > ~/installed; X=session", kernel="keep", mode="sandbox", cwd=work)
    assert first.ok
    container = sandbox_info(c, "keep")["container"]
    wait_for(lambda: all(k["name"] != "keep" for k in c.list_kernels()), timeout=20)
    wait_for(
        lambda: [x.status for x in containers_of(docker_client, srv)] == ["exited"], timeout=20
    )
    # Kept once the broker has reaped its agent (a request sooner gets a new container).
    wait_for(lambda: f"container {container} stopped for reuse" in srv.log(), timeout=20)
    r = c.execute("cat ~/installed; echo [$X]", kernel="keep", mode="sandbox", cwd=work)
    assert r.stdout == "kept\n[]\n"  # its files are back; the shell session is a new one
    info = sandbox_info(c, "keep")
    assert (info["container"], info["container_reused"]) == (container, True)
    # A restarted container is re-adopted, session and all, after the broker itself dies.
    c.execute("Y=survives", kernel="keep", mode="sandbox")
    assert srv.proc is not None
    srv.proc.send_signal(signal.SIGKILL)  # the broker only: the container lives on
    srv.proc.wait()
    srv.start()
    assert c.execute("echo [$Y]", kernel="keep", mode="sandbox").stdout == "[survives]\n"
    assert sandbox_info(c, "keep")["container"] == container
    other = c.execute("ls ~/installed", kernel="other", mode="sandbox", cwd=work)
    assert other.exit_code != 0  # another kernel name never gets that container
    assert sandbox_info(c, "other")["container"] != container
    assert c.execute("echo again", kernel="keep", mode="sandbox").stdout == "again\n"
    srv.stop()
    assert containers_of(docker_client, srv) == []


def test_tcp_transport_reaches_the_broker_without_the_socket_mount(
    sandbox_factory: Any, docker_client: Any
) -> None:
    """STIGMER_SANDBOX_TRANSPORT=tcp (engines where a unix socket cannot cross a mount, e.g.
    Docker Desktop): the agent reaches the broker over the container network with CurveZMQ and
    a key made for that incarnation; nothing of the runtime directory but its own is mounted."""
    srv = sandbox_factory(STIGMER_SANDBOX_TRANSPORT="tcp")
    c = srv.client()
    r = c.execute(
        "cd /tmp && X=tcp; ls /run/stigmer 2>&1; ls -A /run/stigmer-kernel",
        kernel="t",
        mode="sandbox",
    )
    assert "No such file or directory" in r.stdout
    assert "curve" not in r.stdout and "key" not in r.stdout.split()  # read, then deleted
    assert c.execute("echo $PWD $X", kernel="t", mode="sandbox").stdout == "/tmp tcp\n"
    (container,) = containers_of(docker_client, srv)
    sources = {m["Source"] for m in container.attrs["Mounts"]}
    assert str(srv.runtime.agents_dir) not in sources
    assert "sandbox agents reach this server at tcp://" in srv.log()
    # After a broker crash the agent comes back to the same port with the same key.
    assert srv.proc is not None
    srv.proc.send_signal(signal.SIGKILL)
    srv.proc.wait()
    srv.start()
    assert c.execute("echo $PWD $X", kernel="t", mode="sandbox").stdout == "/tmp tcp\n"
    srv.stop()
    assert containers_of(docker_client, srv) == []


def test_tcp_transport_settings_that_cannot_work_stop_the_server_at_start() -> None:
    from tests.conftest import make_server

    for settings, said in (
        ({"STIGMER_SANDBOX_NETWORK": "none"}, "needs a container network of its own"),
        ({"STIGMER_SANDBOX_AGENT_BIND": "::1"}, "give an IPv4 address"),
    ):
        proc = make_server(STIGMER_SANDBOX_TRANSPORT="tcp", **settings).start_refused()
        assert proc.returncode == 125 and said in proc.stderr, proc.stderr


def test_server_stop_leaves_no_container(sandbox: Server, docker_client: Any) -> None:
    c = sandbox.client()
    for name in ("one", "two"):
        c.execute("true", kernel=name, mode="sandbox")
    assert len(containers_of(docker_client, sandbox)) == 2
    wait_for(lambda: holders_of(docker_client, sandbox) != [], timeout=30)  # one made ahead
    sandbox.stop()
    assert containers_of(docker_client, sandbox) == []
    assert holders_of(docker_client, sandbox) == []


def test_leftovers_that_cannot_be_readopted_are_removed_at_start(
    sandbox: Server, docker_client: Any
) -> None:
    c = sandbox.client()
    c.execute("true", kernel="orphan", mode="sandbox")
    c.execute("cd /tmp && KEPT=yes", kernel="keeper", mode="sandbox")
    assert sandbox.proc is not None
    os.killpg(sandbox.proc.pid, signal.SIGKILL)  # no chance to clean up
    sandbox.proc.wait()
    containers = {k.labels["stigmer.kernel"]: k for k in containers_of(docker_client, sandbox)}
    assert set(containers) == {"orphan", "keeper"}
    containers["orphan"].pause()  # its agent cannot answer the new server
    # An unlabelled-kernel container of this runtime dir (no record) goes at once.
    docker_client.containers.create(
        TEST_IMAGE,
        ["sleep", "60"],
        labels={
            "stigmer.server": containers["keeper"].labels["stigmer.server"],
            "stigmer.runtime_dir": sandbox.runtime_dir,
            "stigmer.kernel_id": "gone-1",
        },
    )
    sandbox.start()  # a new server on the same runtime directory

    def left() -> set[str]:
        return {
            k.labels.get("stigmer.kernel") or k.id for k in containers_of(docker_client, sandbox)
        }

    # The orphan goes when its re-adoption fails, the stray with the start-up sweep.
    wait_for(lambda: left() == {"keeper"}, timeout=30)
    # Re-adopted with its session state: cwd and variables survived the broker's death.
    assert c.execute("pwd; echo $KEPT", kernel="keeper", mode="sandbox").stdout == "/tmp\nyes\n"


def test_requirements_layer_is_reused_by_content_hash(sandbox: Server, docker_client: Any) -> None:
    c = sandbox.client()
    requirements = "six==1.16.0\n"
    r = c.execute(
        "python3 -c 'import six; print(six.__version__)'",
        kernel="req1",
        mode="sandbox",
        requirements=requirements,
    )
    assert r.stdout == "1.16.0\n", r.stderr
    image = sandbox_info(c, "req1")["container"]
    assert image
    tags = {t for i in docker_client.images.list("stigmer-requirements") for t in i.tags}
    assert len(tags) >= 1
    start = time.monotonic()
    r = c.execute(
        "python3 -c 'import six'", kernel="req2", mode="sandbox", requirements=requirements
    )
    assert r.exit_code == 0 and time.monotonic() - start < 10
    assert {t for i in docker_client.images.list("stigmer-requirements") for t in i.tags} == tags


def test_image_without_the_agents_python_gets_a_derived_layer(
    sandbox_factory: Any, docker_client: Any
) -> None:
    bare = "stigmer-test-bare:latest"
    try:
        docker_client.images.get(bare)
    except Exception:
        docker_client.images.build(
            fileobj=__import__("io").BytesIO(
                f"FROM {TEST_IMAGE}\nRUN dpkg --purge python3-zmq\n".encode()
            ),
            tag=bare,
            rm=True,
        )
    srv = sandbox_factory(STIGMER_SANDBOX_IMAGE=bare)
    r = srv.client().execute("echo ok", kernel="bare", mode="sandbox", timeout=300)
    assert r.stdout == "ok\n", (r.ename, r.evalue)
    assert docker_client.images.list("stigmer-agent-layer")


def test_missing_image_is_one_clear_error(sandbox_factory: Any) -> None:
    srv = sandbox_factory(
        STIGMER_SANDBOX_IMAGE="stigmer-no-such-image:1", STIGMER_SANDBOX_AUTO_PULL="false"
    )
    r = srv.client().execute("true", kernel="none", mode="sandbox")
    assert r.ename == "KernelDied"
    assert "stigmer-no-such-image:1" in (r.evalue or "")
    assert "not found locally" in (r.evalue or "") and "auto-pull is off" in (r.evalue or "")


def test_no_engine_fails_fast_and_local_is_unaffected(server_factory: Any) -> None:
    srv = server_factory(DOCKER_HOST="unix:///nonexistent/docker.sock")
    proc = subprocess.run(
        [sys.executable, "-m", "stigmer_kernel", "run", "--mode", "sandbox", "--", "true"],
        env=srv.env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 125
    assert proc.stderr == (
        "stigmer: error: Docker engine not reachable at unix:///nonexistent/docker.sock "
        "— start Docker or use --mode local\n"
    )
    assert srv.client().execute("echo local-ok").stdout == "local-ok\n"


def test_warm_pool_serves_new_kernels_at_once(sandbox_factory: Any, docker_client: Any) -> None:
    workspace = sandbox_workspace("stg-pool-")
    srv = sandbox_factory(STIGMER_SANDBOX_WARM="1", STIGMER_SANDBOX_WORKSPACE=workspace)
    wait_for(lambda: len(containers_of(docker_client, srv)) == 1, timeout=30)
    (pooled,) = containers_of(docker_client, srv)
    pool_name = pooled.labels["stigmer.kernel"]
    assert pool_name.startswith("_pool-")

    def pooled_ready() -> bool:  # running, and its agent registered with the server
        pooled.reload()
        return pooled.status == "running" and f"kernel {pool_name} ready (" in srv.log()

    wait_for(pooled_ready, timeout=30)
    c = srv.client()
    start = time.monotonic()
    r = c.execute("pwd", kernel="fast", mode="sandbox", cwd=workspace)
    elapsed = time.monotonic() - start
    assert r.stdout == "/workspace\n", (r.ename, r.evalue)
    # The kernel got the pooled container (no container of its own was started for it).
    container = sandbox_info(c, "fast")["container"]
    assert container and pooled.id.startswith(container), (container, pooled.id)
    assert "kernel fast took a warm sandbox" in srv.log()
    # Loose, only against a hang: the container id above is what proves the pool served it.
    assert elapsed < 2.0, f"the pooled kernel answered in {elapsed:.2f} s"
    # The pool starts a replacement; the kernel keeps its container.
    wait_for(lambda: len(containers_of(docker_client, srv)) == 2, timeout=30)
    assert sandbox_info(c, "fast")["container"] == container


def test_warm_pool_refills_while_the_first_command_of_its_taker_runs(
    sandbox_factory: Any, docker_client: Any
) -> None:
    # The replacement waits for the taker's first answer, but not for long: a first command
    # that runs on does not leave the pool empty.
    srv, workspace, _ = warm_pool_server(sandbox_factory, docker_client, "stg-pool-")
    results: list[Any] = []
    slow = threading.Thread(
        target=lambda: results.append(
            srv.client().execute("sleep 60", kernel="slow", mode="sandbox", cwd=workspace)
        )
    )
    slow.start()
    try:
        wait_for(lambda: "kernel slow took a warm sandbox" in srv.log(), timeout=10)
        wait_for(lambda: len(containers_of(docker_client, srv)) == 2, timeout=30)
        assert not results  # the replacement came while `sleep 60` still ran
    finally:
        srv.client().interrupt("slow")
        slow.join(timeout=30)
    assert results and results[0].exit_code != 0


def test_jupyter_clients_reach_a_sandbox_kernel(sandbox: Server) -> None:
    from jupyter_client import BlockingKernelClient

    c = sandbox.client()
    path = c.connect_jupyter("nb", mode="sandbox")["connection_file"]
    kc = BlockingKernelClient()
    kc.load_connection_file(path)
    kc.start_channels()
    kc.wait_for_ready(timeout=20)
    reply = kc.execute("test -f /.dockerenv && echo in-container", reply=True, timeout=20)
    assert reply["content"]["status"] == "ok"
    assert c.execute("echo $?", kernel="nb", mode="sandbox").stdout == "0\n"
    kc.stop_channels()


def test_sandbox_kernelspec_installs(sandbox: Server) -> None:
    prefix = short_tempdir("stg-ks-")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "stigmer_kernel",
            "kernelspec",
            "install",
            "--mode",
            "sandbox",
            "--prefix",
            prefix,
        ],
        env=sandbox.env,
        check=True,
        capture_output=True,
    )
    spec = Path(prefix, "share/jupyter/kernels/stigmer-sandbox/kernel.json").read_text()
    assert '"Stigmer (sandbox)"' in spec and '"sandbox"' in spec


def test_a_missing_image_is_one_clear_answer_each_time(sandbox_factory: Any) -> None:
    srv = sandbox_factory(STIGMER_SANDBOX_AUTO_PULL="false")
    c = srv.client()
    for _ in range(2):
        r = c.execute("true", kernel="noimg", mode="sandbox", sandbox_image="stigmer-nope:1")
        assert r.ename == "KernelDied"
        assert "sandbox image 'stigmer-nope:1' is not available" in (r.evalue or "")
        assert "not built (only" in (r.evalue or "") and "--sandbox-image" in (r.evalue or "")
        # Its agent never came up, so no session was lost: no "restarted" notice either time.
        assert [e.get("event") for e in r.events if e.get("event") == "restarted"] == []
    r = c.execute("echo fine", kernel="img", mode="sandbox")
    assert r.stdout == "fine\n"


def test_a_starting_server_spares_the_running_containers_of_another_servers_restart(
    sandbox_factory: Any, docker_client: Any
) -> None:
    other = short_tempdir("stg-other-")  # another server's runtime dir; that server is down
    labels = {"stigmer.server": "other-1", "stigmer.runtime_dir": other}
    running = docker_client.containers.run(
        TEST_IMAGE, ["sleep", "120"], detach=True, labels={**labels, "stigmer.kernel_id": "r-1"}
    )
    stopped = docker_client.containers.create(
        TEST_IMAGE, ["true"], labels={**labels, "stigmer.kernel_id": "s-1"}
    )
    homeless = docker_client.containers.create(  # stopped, its runtime directory gone
        TEST_IMAGE,
        ["true"],
        labels={"stigmer.server": "gone-1", "stigmer.runtime_dir": f"{other}-removed"},
    )
    try:
        sandbox_factory()  # its start reaps leftovers of servers that are not running

        def ids() -> set[str]:
            return {c.id for c in docker_client.containers.list(all=True, ignore_removed=True)}

        wait_for(lambda: stopped.id not in ids() and homeless.id not in ids(), timeout=30)
        # Still running: its agent may be waiting for its restarting server to re-adopt it.
        assert running.id in ids()
    finally:
        for box in (running, stopped, homeless):
            with contextlib.suppress(Exception):
                box.remove(force=True)
        shutil.rmtree(other, ignore_errors=True)
