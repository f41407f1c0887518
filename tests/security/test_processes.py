"""Processes: what a kernel starts ends with it, recorded pids are proven before they are
signalled, and a command cannot read its own agent's memory.

Each daemon here escapes the usual ways at once: ``setsid`` (a session of its own, out of bash's
process group and session) and a double fork (its parent exits at once, so it is an orphan).
Each test ends the kernel one way and waits, bounded, until no process with the daemon's marker
is left (sandbox containers' processes show in the host's ``/proc`` too).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from jupyter_client import BlockingKernelClient

from stigmer_kernel import Client
from stigmer_kernel.agent import procs
from stigmer_kernel.protocol import MsgType
from tests.agent.test_broker_link import HandBroker
from tests.conftest import Server, processes_matching, short_tempdir, stigmer_env
from tests.sandbox.conftest import containers_of, sandbox_workspace
from tests.security.conftest import ATTACKER_PYTHON, LocalUser

#: Reads /proc/PID/environ and /proc/PID/mem of the pid given (its agent); one line each.
_PROBE = r"""
import sys
pid = int(sys.argv[1])
for name in ("environ", "mem"):
    try:
        with open(f"/proc/{pid}/{name}", "rb") as f:
            if name == "mem":
                with open(f"/proc/{pid}/maps") as maps:
                    f.seek(int(maps.readline().split("-")[0], 16))
            print(name, "read", len(f.read(16)) > 0)
    except PermissionError:
        print(name, "denied")
with open(f"/proc/{pid}/stat") as f:
    print("stat", "start" if int(f.read().rsplit(")", 1)[1].split()[19]) > 0 else "none")
"""

#: The agent of the command: the nearest ancestor of bash running the agent module.
_FIND_AGENT = (
    "a=$$; while [ \"$a\" -gt 1 ] && ! tr '\\0' ' ' </proc/$a/cmdline | grep -q "
    "'stigmer_kernel.agent'; do a=$(awk '{print $4}' /proc/$a/stat); done; echo agent=$a; "
)


def _wait_for(predicate: Callable[[], object], timeout: float = 15.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"not reached in {timeout}s: {what}"
        time.sleep(0.05)


def _marker() -> str:
    return f"stg-daemon-{uuid.uuid4().hex[:10]}"


def _leave_daemon(client: Client, kernel: str, marker: str, **kwargs: Any) -> None:
    """Run a command that leaves a daemon: it calls setsid and double-forks, and the command
    itself ends at once."""
    r = client.execute(
        f"setsid sh -c \"bash -c 'exec -a {marker} sleep 1000' &\"; echo started",
        kernel=kernel,
        **kwargs,
    )
    assert (r.status, r.stdout) == ("ok", "started\n"), r
    _wait_for(lambda: processes_matching(marker), what=f"{marker} to start")


def _gone(marker: str, timeout: float = 15.0) -> None:
    _wait_for(lambda: not processes_matching(marker), timeout, f"{marker} to end")


def _agent_pid(client: Client, kernel: str) -> int:
    (info,) = [k for k in client.list_kernels() if k["name"] == kernel]
    return int(info["pid"])


def _alive(pid: int) -> bool:
    info = procs.stat(pid)
    return info is not None and info.alive  # a zombie left to init has ended


def _kill_broker(server: Server) -> None:
    assert server.proc is not None
    server.proc.send_signal(signal.SIGKILL)  # the broker only: its agents live on
    server.proc.wait()


def _jupyter(client: Client, kernel: str, **kwargs: Any) -> BlockingKernelClient:
    conn = client.connect_jupyter(kernel, **kwargs)
    jc = BlockingKernelClient()
    jc.load_connection_info(conn["connection"])
    jc.start_channels()
    return jc


def _jupyter_restart(jc: BlockingKernelClient) -> None:
    jc.shutdown(restart=True)
    reply = jc.control_channel.get_msg(timeout=30)
    assert reply["content"]["status"] == "ok", reply["content"]


# -- item 7: every end of a kernel ends every process it started -------------------------------
def test_a_daemon_ends_when_its_kernel_is_shut_down(server: Server) -> None:
    c, marker = server.client(), _marker()
    _leave_daemon(c, "shut", marker)
    c.shutdown_kernel("shut")
    _gone(marker)


def test_a_daemon_ends_when_its_kernel_expires(server_factory: Any) -> None:
    srv = server_factory(STIGMER_KERNEL_TTL="1", STIGMER_HEARTBEAT_INTERVAL="0.2")
    c, marker = srv.client(), _marker()
    _leave_daemon(c, "ttl", marker)
    _wait_for(lambda: all(k["name"] != "ttl" for k in c.list_kernels()), what="expiry")
    _gone(marker)


def test_a_daemon_ends_at_server_stop(server: Server) -> None:
    c, marker = server.client(), _marker()
    _leave_daemon(c, "stop", marker)
    stop = subprocess.run(
        [sys.executable, "-m", "stigmer_kernel", "server", "stop"],
        env=server.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert stop.returncode == 0, stop.stderr
    _gone(marker)


def test_a_daemon_ends_when_a_jupyter_client_restarts_its_kernel(server: Server) -> None:
    c, marker = server.client(), _marker()
    jc = _jupyter(c, "jrs")
    try:
        _leave_daemon(c, "jrs", marker)
        _jupyter_restart(jc)
        _gone(marker)
        assert c.execute("echo again", kernel="jrs").stdout == "again\n"
    finally:
        jc.stop_channels()


def test_a_killed_agents_daemons_end_and_other_kernels_keep_theirs(server: Server) -> None:
    """SIGKILL of the agent: it cannot end anything itself. Its processes are reparented to the
    server (a child subreaper for its agents), which ends them, and only them."""
    c, doomed, kept = server.client(), _marker(), _marker()
    _leave_daemon(c, "doomed", doomed)
    _leave_daemon(c, "kept", kept)
    os.kill(_agent_pid(c, "doomed"), signal.SIGKILL)
    _gone(doomed)
    assert processes_matching(kept)  # another kernel's daemon is none of the dead agent's
    assert c.execute("echo alive", kernel="kept").stdout == "alive\n"
    c.shutdown_kernel("kept")
    _gone(kept)


def test_a_daemon_ends_when_its_agent_loses_its_server() -> None:
    """The server dies and stays away: the agent exits after its orphan timeout, and its
    kernel's processes with it."""
    broker, marker = HandBroker(orphan_timeout=1.0), _marker()
    try:
        broker.registered()
        request = broker.execute(f"setsid sh -c \"bash -c 'exec -a {marker} sleep 1000' &\"")
        while True:  # a live broker until the command is done
            identity, msg = broker.recv()
            if identity.endswith(b":hb"):
                broker.answer_heartbeat(identity)
            elif msg.msg_type == MsgType.EXECUTE_REPLY.value:
                assert msg.parent_header["msg_id"] == request.msg_id
                break
        _wait_for(lambda: processes_matching(marker), what=f"{marker} to start")
        broker.router.close(0)  # now it is gone
        assert broker.agent.wait(timeout=15) == 0
        _gone(marker, timeout=5)
    finally:
        broker.close()


def test_a_hung_agent_left_by_a_crashed_server_is_ended_with_its_daemons(server: Server) -> None:
    """After a crash the restarted server ends a recorded agent that does not come back, and
    everything below it: the recorded start times prove the pids are still its own."""
    c, marker = server.client(), _marker()
    _leave_daemon(c, "hung", marker)
    pid = _agent_pid(c, "hung")
    _kill_broker(server)
    os.kill(pid, signal.SIGSTOP)  # alive, but it will never answer again
    server.start()
    _wait_for(lambda: all(k["name"] != "hung" for k in c.list_kernels()), what="its removal")
    _gone(marker)
    _wait_for(lambda: not _alive(pid), what="the agent to end")


def test_a_sandbox_kernels_daemons_end_with_its_container(
    sandbox_factory: Any, docker_client: Any
) -> None:
    """Sandbox: a Jupyter restart, and a shut-down kernel whose stopped container is started
    again for the next kernel of its name (STIGMER_SANDBOX_CLEANUP=false)."""
    srv = sandbox_factory(STIGMER_SANDBOX_CLEANUP="false")
    c, work = srv.client(), sandbox_workspace("stg-procs-")  # its owner runs the sandbox
    try:
        first, second = _marker(), _marker()
        c.execute("true", kernel="box", mode="sandbox", cwd=work)
        jc = _jupyter(c, "box", mode="sandbox")
        try:
            _leave_daemon(c, "box", first, mode="sandbox")
            _jupyter_restart(jc)
            _gone(first, timeout=30)
        finally:
            jc.stop_channels()
        _leave_daemon(c, "box", second, mode="sandbox")
        (info,) = [k for k in c.list_kernels() if k["name"] == "box"]
        c.shutdown_kernel("box")
        _wait_for(
            lambda: f"container {info['container']} stopped for reuse" in srv.log(), 30, "reuse"
        )
        pattern = f"{second[:-1]}[{second[-1]}]"  # not matching the grep itself
        r = c.execute(
            f"cat /proc/[0-9]*/cmdline 2>/dev/null | tr '\\0' ' ' | grep -c {pattern}",
            kernel="box",
            mode="sandbox",
            cwd=work,
        )
        (again,) = [k for k in c.list_kernels() if k["name"] == "box"]
        assert (again["container"], again["container_reused"]) == (info["container"], True)
        assert r.stdout == "0\n"  # the agent's view: nothing of the last incarnation is left
        assert processes_matching(second) == []
    finally:
        srv.stop()
        shutil.rmtree(work, ignore_errors=True)
    assert containers_of(docker_client, srv) == []


# -- item 8: a recorded pid is proven before it is signalled ------------------------------------
def test_a_restarted_server_spares_a_process_that_took_over_a_recorded_pid(server: Server) -> None:
    """The record claims the pid (and bash's session) of an unrelated live process, with the
    start times of the processes it really recorded: the restarted server must leave it alone."""
    c = server.client()
    c.execute("true", kernel="reuse")
    (info,) = [k for k in c.list_kernels() if k["name"] == "reuse"]
    path = server.runtime.path / "records" / f"{info['id']}.json"
    record = json.loads(path.read_text())
    assert record["agent_start"] and record["shell_start"]  # recorded with their start times
    _kill_broker(server)
    os.kill(info["pid"], signal.SIGKILL)
    # Unrelated: a session and group leader, as bash and the agent are.
    bystander = subprocess.Popen(["sleep", "300"], start_new_session=True)
    try:
        record["agent_pid"] = record["shell_pgid"] = bystander.pid  # as if the OS reused them
        path.write_text(json.dumps(record))
        server.start()
        workdir = server.runtime.path / "kernels" / info["id"]
        # The kernel is removed and its directory cleaned up only after any kill of its
        # recorded processes (the old code killed them once its re-adoption grace ran out).
        _wait_for(
            lambda: not workdir.exists() and all(k["name"] != "reuse" for k in c.list_kernels()),
            timeout=20,
            what="the kernel's removal",
        )
        assert bystander.poll() is None, "the server signalled a pid that changed hands"
        assert "its pid now belongs to another process" in server.log()
    finally:
        bystander.kill()
        bystander.wait()


# -- item 10: the agent is not dumpable ----------------------------------------------------------
def test_a_local_command_cannot_read_its_agents_memory(other_user: LocalUser) -> None:
    """Run as root, a local kernel could read anything anyway; so this server runs as another
    local user, as a non-root user runs it, and the command tries as that same uid. What the
    server itself reads of its non-dumpable agents still works for it: the start time that
    proves a re-adopted agent (a crash and restart) and the ends of a kernel's processes."""
    runtime_dir, work = short_tempdir("stg-dump-"), short_tempdir("stg-dump-w-")
    os.chown(work, other_user.uid, other_user.gid)
    shutil.rmtree(runtime_dir)  # made again by the server, owned by its user
    env = {
        **other_user.env(),
        **{k: v for k, v in stigmer_env(runtime_dir).items() if k.startswith("STIGMER_")},
        "PYTHONPATH": str(Path(__file__).resolve().parents[2]),
    }
    cli = [ATTACKER_PYTHON, "-m", "stigmer_kernel"]
    Path(work, "probe.py").write_text(_PROBE)
    os.chmod(Path(work, "probe.py"), 0o644)
    servers: list[subprocess.Popen[bytes]] = []

    def start_server() -> subprocess.Popen[bytes]:
        proc = other_user.popen(
            [*cli, "server", "start", "--foreground"],
            env=env,
            cwd=work,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        servers.append(proc)
        info = Path(runtime_dir, "server.json")
        _wait_for(
            lambda: info.exists() and json.loads(info.read_text() or "{}").get("pid") == proc.pid,
            what="the server",
        )
        return proc

    def run(code: str) -> list[str]:
        done = other_user.run([*cli, "run", "--kernel", "dump", "--", code], env=env, cwd=work)
        assert done.returncode == 0, done.stderr
        return done.stdout.splitlines()

    try:
        first = start_server()
        lines = run(f"{_FIND_AGENT} python3 probe.py $a; id -u; X=kept")
        assert lines[0] != "agent=1" and lines[-1] == str(other_user.uid), lines
        assert lines[1:4] == ["environ denied", "mem denied", "stat start"], lines
        first.kill()  # SIGKILL: a crash
        first.wait()
        start_server()
        assert run("echo $X") == ["kept"]  # re-adopted: its start time was read and matched
        marker = _marker()
        run(f"setsid sh -c \"bash -c 'exec -a {marker} sleep 1000' &\"")
        _wait_for(lambda: processes_matching(marker), what=f"{marker} to start")
        other_user.run([*cli, "server", "stop"], env=env, cwd=work)
        _gone(marker)
    finally:
        other_user.run([*cli, "server", "stop"], env=env, cwd=work)
        for proc in servers:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        shutil.rmtree(runtime_dir, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)


def test_a_sandbox_command_cannot_read_its_agents_memory(sandbox: Server) -> None:
    c = sandbox.client()
    r = c.execute(
        f"{_FIND_AGENT} python3 - $a <<'EOF'\n{_PROBE}\nEOF",
        kernel="dump",
        mode="sandbox",
    )
    lines = r.stdout.splitlines()
    assert r.ok and lines[0] == "agent=1", r  # in a sandbox the agent is PID 1
    assert lines[1:] == ["environ denied", "mem denied", "stat start"], r.stdout
