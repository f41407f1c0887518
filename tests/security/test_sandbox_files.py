"""Issue 10, items 1 and 2: what a sandbox writes in its workspace, and what it can see there.

Item 1: a root server never runs sandbox commands as root, and no set-uid or set-gid bit made
in a sandbox ever reaches the host (the agent's seccomp filter, agent/nosuid.py; the agent is
the container's PID 1, so no process of the sandbox goes without it). Item 2: no stigmer
runtime directory nor config directory is visible in a sandbox (hidden under empty read-only
mounts, provisioners/workspace.py), ``/`` and the home directory are refused as workspaces, and
``clients.sock`` refuses a peer of another mount namespace even when it holds the key
(broker/peers.py).

Every attack runs for real: commands in real containers, a second local uid for what another
user of the host would do.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import stat
import subprocess
import sys
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from stigmer_kernel import Client, RequestError
from stigmer_kernel.runtime import RuntimeDir
from tests.conftest import Server, short_tempdir, stigmer_env
from tests.sandbox.conftest import SANDBOX_GID, SANDBOX_UID, TEST_IMAGE, sandbox_workspace
from tests.security.conftest import LocalUser

NOBODY = 65534

pytestmark = pytest.mark.skipif(os.getuid() != 0, reason="these attacks need a root server")


@pytest.fixture
def workspaces() -> Iterator[Callable[..., str]]:
    """New workspaces (removed afterwards): ``make(owner_uid, owner_gid)``."""
    made: list[str] = []

    def make(uid: int = SANDBOX_UID, gid: int = SANDBOX_GID) -> str:
        path = sandbox_workspace("stg-files-")
        os.chown(path, uid, gid)
        made.append(path)
        return path

    yield make
    for path in made:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def servers() -> Iterator[Callable[..., Server]]:
    """Sandbox servers whose runtime directory the test chooses: ``start(runtime_dir, **env)``."""
    started: list[Server] = []

    def start(runtime_dir: str | None = None, **settings: str) -> Server:
        runtime_dir = runtime_dir or short_tempdir()
        os.makedirs(runtime_dir, mode=0o700, exist_ok=True)
        settings.setdefault("STIGMER_SANDBOX_IMAGE", TEST_IMAGE)
        settings.setdefault("STIGMER_HEARTBEAT_INTERVAL", "0.5")
        settings.setdefault("STIGMER_SANDBOX_USER", f"{SANDBOX_UID}:{SANDBOX_GID}")
        srv = Server(runtime_dir, stigmer_env(runtime_dir, **settings))
        started.append(srv)
        return srv.start()

    yield start
    for srv in started:
        srv.stop()
        shutil.rmtree(srv.runtime_dir, ignore_errors=True)


def box(client: Client, code: str, cwd: str, kernel: str = "box") -> Any:
    return client.execute(code, kernel=kernel, mode="sandbox", cwd=cwd, timeout=60)


# -- item 1: who owns what a sandbox writes ------------------------------------------------------
def test_a_root_server_runs_sandbox_commands_as_nobody_not_root(
    sandbox_factory: Callable[..., Server], workspaces: Callable[..., str]
) -> None:
    srv = sandbox_factory(STIGMER_SANDBOX_USER="", SUDO_UID="", SUDO_GID="")
    workspace = workspaces(NOBODY, NOBODY)
    c = srv.client()
    r = box(
        c, "touch made; awk '/^[UG]id:/ {print $1, $2, $3, $4, $5}' /proc/[0-9]*/status", workspace
    )
    assert r.exit_code == 0, r.stderr
    # Every process of the container: real, effective, saved and filesystem ids.
    ids = " ".join([str(NOBODY)] * 4)
    assert set(r.stdout.splitlines()) == {f"Uid: {ids}", f"Gid: {ids}"}
    made = Path(workspace, "made").stat()
    assert (made.st_uid, made.st_gid) == (NOBODY, NOBODY)
    (info,) = [k for k in c.list_kernels() if k["name"] == "box"]
    assert info["sandbox_user"] == f"{NOBODY}:{NOBODY}"


def test_the_sandbox_user_is_the_setting_or_the_sudo_user_and_never_root(
    sandbox_factory: Callable[..., Server],
    workspaces: Callable[..., str],
    other_user: LocalUser,
) -> None:
    configured = sandbox_factory(STIGMER_SANDBOX_USER=f"{SANDBOX_UID}:{SANDBOX_GID}")
    r = box(configured.client(), "id -u; id -g", workspaces())
    assert r.stdout == f"{SANDBOX_UID}\n{SANDBOX_GID}\n"
    by_sudo = sandbox_factory(
        STIGMER_SANDBOX_USER="", SUDO_UID=str(other_user.uid), SUDO_GID=str(other_user.gid)
    )
    workspace = workspaces(other_user.uid, other_user.gid)
    r = box(by_sudo.client(), "id -u; id -g; echo $USER; touch mine", workspace)
    assert r.stdout == f"{other_user.uid}\n{other_user.gid}\n{other_user.name}\n"
    assert Path(workspace, "mine").stat().st_uid == other_user.uid
    for root in ("0", "0:0", "1000:0"):
        runtime = short_tempdir()
        try:
            refused = Server(
                runtime, stigmer_env(runtime, STIGMER_SANDBOX_USER=root)
            ).start_refused()
        finally:
            shutil.rmtree(runtime, ignore_errors=True)
        assert refused.returncode != 0
        assert "STIGMER_SANDBOX_USER: invalid value" in refused.stderr
        assert "neither of them 0: sandboxes never run as root" in refused.stderr


# -- item 1: set-uid and set-gid bits never reach the host ---------------------------------------
_MAKE_SETUID = r"""
cp /bin/bash rootbash; chmod 4755 rootbash; echo chmod=$?
chmod u+s,g+s rootbash; echo chmod_ugs=$?
install -m 4755 /bin/bash installed; echo install=$?
install -m 2755 /bin/bash installed_gid; echo install_gid=$?
tar -xpf suid.tar; echo tar=$?
mkdir group_dir; chmod g+s group_dir; echo chmod_dir=$?
python3 - <<'EOF'
import os, stat
for name, call in (
    ("os_open", lambda: os.close(os.open("py_open", os.O_CREAT | os.O_WRONLY, 0o4755))),
    ("creat_gid", lambda: os.close(os.open("py_gid", os.O_CREAT | os.O_WRONLY, 0o2755))),
    ("mknod", lambda: os.mknod("py_mknod", stat.S_IFREG | 0o4755)),
    ("fchmod", lambda: os.fchmod(os.open("rootbash", os.O_RDONLY), 0o6755)),
):
    try:
        call()
        print(name, "allowed")
    except PermissionError:
        print(name, "EPERM")
EOF
"""


def test_set_uid_and_set_gid_bits_made_in_a_sandbox_never_take_effect_on_the_host(
    sandbox_factory: Callable[..., Server],
    workspaces: Callable[..., str],
    other_user: LocalUser,
) -> None:
    srv = sandbox_factory(STIGMER_SANDBOX_USER="", SUDO_UID="")  # as root's default: nobody
    workspace = workspaces(NOBODY, NOBODY)
    with tarfile.open(Path(workspace, "suid.tar"), "w") as archive:  # tar -p restores modes
        member = tarfile.TarInfo("tarred")
        member.mode, member.size = 0o4755, len(data := Path("/bin/true").read_bytes())
        archive.addfile(member, io.BytesIO(data))
    r = box(srv.client(), _MAKE_SETUID, workspace)
    lines = r.stdout.splitlines()
    for step in ("chmod", "chmod_ugs", "install", "install_gid", "tar", "chmod_dir"):
        assert f"{step}=0" not in lines, r.stdout + r.stderr
    assert "Operation not permitted" in r.stderr
    for call in ("os_open", "creat_gid", "mknod", "fchmod"):
        assert f"{call} EPERM" in lines, r.stdout
    # On the host: nothing the sandbox made is set-uid or set-gid, nor root's.
    made = [p for p in Path(workspace).rglob("*") if p.name != "suid.tar"]
    assert {p.name for p in made} >= {"rootbash", "installed", "tarred", "group_dir"}
    for path in made:
        info = path.lstat()
        assert info.st_mode & (stat.S_ISUID | stat.S_ISGID) == 0, f"{path} {oct(info.st_mode)}"
        assert info.st_uid == NOBODY, path
    # Another local user runs the "root shell" the sandbox left: it runs as that user.
    ran = other_user.run([f"{workspace}/rootbash", "-p", "-c", "id -u"])
    assert (ran.returncode, ran.stdout) == (0, f"{other_user.uid}\n"), ran.stderr


_PROBE_FILTER = r"""
grep -h Seccomp_filters: /proc/[0-9]*/status | sort | uniq -c | awk '{print "filters", $3}'
tr '\0' ' ' </proc/1/cmdline | grep -o 'stigmer_kernel.agent.*--sandbox' | cut -c1-20
python3 - <<'EOF'
import ctypes, mmap, os
libc = ctypes.CDLL(None, use_errno=True)
libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
if libc.ptrace(16, 1, None, None) == 0:  # PTRACE_ATTACH to PID 1: it would run unfiltered calls
    libc.ptrace(17, 1, None, None)  # PTRACE_DETACH
    print("ptrace pid 1: attached")
else:
    print("ptrace pid 1:", os.strerror(ctypes.get_errno()))
try:
    open("/proc/1/mem", "r+b").close()
    print("pid 1 mem: opened")
except OSError as exc:
    print("pid 1 mem:", exc.strerror)
calls = (("io_uring_setup", 425, (1, None)), ("openat2", 437, (-100, b"/", None, 0)))
for name, number, args in calls:
    ctypes.set_errno(0)
    print(name, libc.syscall(number, *args), os.strerror(ctypes.get_errno()))
# An i386 getpid (int 0x80), another ABI with other numbers: mov eax, 20; int 0x80; ret.
page = mmap.mmap(-1, mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
page.write(bytes([0xB8, 20, 0, 0, 0, 0xCD, 0x80, 0xC3]))
i386 = ctypes.CFUNCTYPE(ctypes.c_int)(ctypes.addressof(ctypes.c_char.from_buffer(page)))
print("i386 getpid", i386())
EOF
"""


@pytest.mark.skipif(os.uname().machine != "x86_64", reason="the probe is x86_64 machine code")
def test_no_process_of_a_sandbox_goes_without_the_filter(
    sandbox: Server, workspaces: Callable[..., str]
) -> None:
    r = box(sandbox.client(), _PROBE_FILTER, workspaces())
    lines = r.stdout.splitlines()
    # Docker's profile and the agent's filter, on every process; PID 1 is the agent itself.
    assert [line for line in lines if line.startswith("filters")] == ["filters 2"], r.stdout
    assert "stigmer_kernel.agent" in lines
    assert "ptrace pid 1: Operation not permitted" in lines
    assert "pid 1 mem: Permission denied" in lines
    assert "io_uring_setup -1 Function not implemented" in lines
    assert "openat2 -1 Function not implemented" in lines
    assert "i386 getpid -38" in lines  # -ENOSYS: the whole i386 ABI is refused


def test_the_agent_does_not_start_when_its_filter_cannot_be_installed(docker_client: Any) -> None:
    """A kernel that refuses seccomp filters (here: prctl blocked by the engine's profile): the
    agent exits with the reason instead of running commands unprotected."""
    package = Path(__file__).resolve().parents[2] / "stigmer_kernel"
    no_prctl = (
        '{"defaultAction": "SCMP_ACT_ALLOW", '
        '"syscalls": [{"names": ["prctl"], "action": "SCMP_ACT_ERRNO", '
        '"args": [{"index": 0, "value": 22, "op": "SCMP_CMP_EQ"}]}]}'  # PR_SET_SECCOMP
    )
    container = docker_client.containers.create(
        TEST_IMAGE,
        [
            *("python3", "-m", "stigmer_kernel.agent", "--sandbox", "--endpoint", "ipc:///x"),
            *("--kernel-id", "k-1", "--workdir", "/tmp"),
        ],
        environment={"PYTHONPATH": "/opt/stigmer", "STIGMER_AGENT_KEY": "ab" * 32},
        volumes={str(package): {"bind": "/opt/stigmer/stigmer_kernel", "mode": "ro"}},
        user=f"{SANDBOX_UID}:{SANDBOX_GID}",
        security_opt=[f"seccomp={no_prctl}"],
        labels={"stigmer.test": "no-filter"},
    )
    try:
        container.start()
        assert container.wait(timeout=60)["StatusCode"] == 2
        said = container.logs().decode()
        assert "agent: sandbox agent: the kernel refused its seccomp filter" in said, said
    finally:
        container.remove(force=True)


# -- item 2: what a sandbox sees in its workspace ------------------------------------------------
def hand_to_sandbox(runtime: RuntimeDir) -> None:
    """Make a runtime directory readable to the sandbox's uid, as a runtime directory of that
    very uid is (a server that is not root runs its sandboxes as itself): only a mask can
    then keep its key and socket out of the sandbox's sight."""
    for path in (runtime.path, runtime.key_path, runtime.client_socket):
        with contextlib.suppress(FileNotFoundError):
            os.chown(path, SANDBOX_UID, SANDBOX_GID)


_LOOK_AT_HIDDEN = r"""
echo "keys: $(cat rt/key other/key 2>/dev/null | wc -c)"
test -S rt/clients.sock || test -S other/clients.sock || echo no-socket
grep -E ' /workspace/(rt|other|xdg/stigmer) ro,' /proc/self/mountinfo | grep -c ' - tmpfs '
echo "cfg: $(wc -c < cfg.toml)"
echo 'shell = "/workspace/evil"' > cfg.toml
mkdir -p xdg/stigmer && echo 'shell = "/workspace/evil"' > xdg/stigmer/config.toml
echo wrote=$?
"""


def test_runtime_and_config_dirs_inside_the_workspace_are_hidden(
    servers: Callable[..., Server], workspaces: Callable[..., str]
) -> None:
    workspace = workspaces()
    other = servers(f"{workspace}/other")  # another server's, found by its marker
    config = Path(workspace, "cfg.toml")
    config.write_text('shell = "bash"\n')
    srv = servers(f"{workspace}/rt", STIGMER_CONFIG=str(config), XDG_CONFIG_HOME=f"{workspace}/xdg")
    for server in (srv, other):
        hand_to_sandbox(server.runtime)
    r = box(srv.client(), _LOOK_AT_HIDDEN, workspace)
    assert r.stdout.splitlines() == ["keys: 0", "no-socket", "3", "cfg: 0", "wrote=1"], (
        r.stdout + r.stderr
    )
    # All still there on the host, untouched; no config written where the server would read it.
    assert Path(workspace, "rt", "key").exists() and Path(workspace, "other", "key").exists()
    assert stat.S_ISSOCK(os.stat(f"{workspace}/rt/clients.sock").st_mode)
    assert config.read_text() == 'shell = "bash"\n'
    assert os.listdir(f"{workspace}/xdg/stigmer") == []
    assert other.client().execute("echo served").stdout == "served\n"


def test_tmp_as_a_workspace_shows_no_runtime_dir(sandbox: Server) -> None:
    """/tmp as the workspace: this server's runtime directory and one at a default location
    (/tmp/stigmer-*) are both in it, and both are hidden."""
    default = RuntimeDir(Path(short_tempdir("stigmer-h1-")))
    default.ensure()
    default.write_key(b"0" * 64)
    for runtime in (sandbox.runtime, default):
        hand_to_sandbox(runtime)
    try:
        own, theirs = os.path.basename(sandbox.runtime_dir), default.path.name
        look = (
            f"echo keys: $(cat {own}/key {theirs}/key 2>/dev/null | wc -c); "
            f"grep -E ' /workspace/({own}|{theirs}) ro,' /proc/self/mountinfo | grep -c ' - tmpfs '"
        )
        r = box(sandbox.client(), look, "/tmp")
        assert r.stdout == "keys: 0\n2\n", r.stdout + r.stderr
    finally:
        shutil.rmtree(default.path, ignore_errors=True)
        Path(sandbox.env["STIGMER_CONFIG"]).unlink(missing_ok=True)  # hidden, so made empty


_ATTACK_CLIENTS_SOCK = r"""
python3 - {runtime} {marker} <<'EOF'
import sys, zmq
sys.path.insert(0, "/opt/stigmer")
from stigmer_kernel.protocol import Session
runtime, marker = sys.argv[1:]
key = open(f"{{runtime}}/key", "rb").read().strip()
print("key", len(key))
session = Session(key)
ctx = zmq.Context()
sock = ctx.socket(zmq.DEALER)
sock.setsockopt(zmq.LINGER, 0)
# A DEALER's send blocks while it has no pipe, as after the broker shut a connection: bounded.
sock.setsockopt(zmq.SNDTIMEO, 2000)
sock.connect(f"ipc://{{runtime}}/clients.sock")
for kind, content in (
    ("server_info_request", {{}}),
    ("execute_request", {{"code": f"touch {{marker}}", "kernel": "pwn", "mode": "local"}}),
):
    try:
        sock.send_multipart(session.serialize(session.msg(kind, content)))
    except zmq.Again:
        pass  # not even taken: no answer either
print("answered" if sock.poll(4000) else "no answer")
EOF
"""


def test_clients_sock_refuses_a_sandbox_even_with_the_key(
    sandbox: Server, servers: Callable[..., Server], workspaces: Callable[..., str]
) -> None:
    workspace = workspaces()
    c = sandbox.client()
    assert box(c, "true", workspace).ok  # its container (and masks) exist before what follows
    # A second server's runtime dir appears in the workspace afterwards, and is handed to the
    # sandbox's uid on purpose (as a runtime dir of that very uid would be): key and socket.
    victim = servers(f"{workspace}/rt2")
    hand_to_sandbox(victim.runtime)
    marker = Path(workspace, "pwned")
    attack = _ATTACK_CLIENTS_SOCK.format(runtime="/workspace/rt2", marker=marker)
    r = box(c, attack, workspace)
    assert r.stdout == "key 64\nno answer\n", r.stdout + r.stderr
    assert not marker.exists()
    host = victim.client()
    assert host.execute("echo host-client").stdout == "host-client\n"  # local clients still pass
    assert host.server_info()["stats"]["peers_refused"] >= 1
    assert "refused a connection to clients.sock" in victim.log()
    assert "another mount namespace" in victim.log()


def test_root_and_home_are_refused_as_workspaces(server_factory: Callable[..., Server]) -> None:
    home = short_tempdir("stg-home-")
    os.makedirs(f"{home}/u/project")
    try:
        srv = server_factory(HOME=f"{home}/u", STIGMER_SANDBOX_IMAGE=TEST_IMAGE)
        c = srv.client()
        for workspace, said in (
            ("/", "workspace / would give a sandbox the whole host"),
            (f"{home}/u", f"workspace {home}/u is the home directory {home}/u"),
            (home, f"workspace {home} holds the home directory {home}/u"),
            (srv.runtime_dir, f"is inside this server's runtime directory {srv.runtime_dir}"),
        ):
            with pytest.raises(RequestError) as refused:
                c.execute("true", kernel="ws", mode="sandbox", cwd=workspace)
            assert refused.value.ename == "BadRequest"
            assert said in str(refused.value) and "\n" not in str(refused.value)
            assert "run from a project directory" in str(refused.value)
        cli = subprocess.run(
            [
                *(sys.executable, "-m", "stigmer_kernel", "run", "--mode", "sandbox"),
                *("--cwd", "/", "--kernel", "ws", "--", "true"),
            ],
            env=srv.env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert cli.returncode != 0 and cli.stderr.count("\n") == 1, cli.stderr
        assert "workspace / would give a sandbox the whole host" in cli.stderr
        assert c.list_kernels() == []
        # Auto mode from the home directory: local commands run; the first one bound for the
        # sandbox is refused with the same line, and nothing of it runs anywhere.
        assert c.execute("echo here", kernel="a", mode="auto", cwd=f"{home}/u").stdout == "here\n"
        with pytest.raises(RequestError) as refused:
            c.execute(f"pip --version && touch {home}/u/ran", kernel="a", mode="auto")
        assert refused.value.ename == "BadRequest"
        assert f"workspace {home}/u is the home directory" in str(refused.value)
        assert not os.path.exists(f"{home}/u/ran")
    finally:
        shutil.rmtree(home, ignore_errors=True)
