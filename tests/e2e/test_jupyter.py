"""Stock jupyter_client and nbclient against stigmer kernels: sharing, stdin, restarts."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from queue import Empty
from typing import Any

import nbformat
import pytest
from jupyter_client import BlockingKernelClient
from jupyter_client.manager import start_new_kernel
from nbclient import NotebookClient

from stigmer_kernel import Client
from tests.conftest import Server

ROOT = Path(__file__).resolve().parents[2]


def connect(path: str, session: str | None = None) -> BlockingKernelClient:
    kc = BlockingKernelClient()
    kc.load_connection_file(path)
    if session:
        kc.session.session = session
        kc.session.bsession = session.encode()
    kc.start_channels()
    kc.wait_for_ready(timeout=15)
    return kc


def drain_iopub(kc: BlockingKernelClient, until_idle_of: str, timeout: float = 10) -> list[dict]:
    """iopub messages up to the idle status of request ``until_idle_of``."""
    out = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            msg = kc.get_iopub_msg(timeout=0.5)
        except Empty:
            continue
        out.append(msg)
        if (
            msg["msg_type"] == "status"
            and msg["content"]["execution_state"] == "idle"
            and msg["parent_header"].get("msg_id") == until_idle_of
        ):
            return out
    raise AssertionError(f"no idle for {until_idle_of}: {[m['msg_type'] for m in out]}")


def unique_sleep() -> list[str]:
    """A ``sleep`` command line no other process has, to tell when it runs."""
    return ["sleep", f"60.{int(uuid.uuid4().hex[:6], 16)}"]


def wait_until_running(cmdline: list[str], timeout: float = 15) -> None:
    """Until a live process has exactly ``cmdline``: the request reached the shell and its
    program runs, so an interrupt sent now (on control, which can overtake the execute; or to
    the launcher) finds it running, not starting."""
    wanted = b"".join(arg.encode() + b"\0" for arg in cmdline)
    deadline = time.monotonic() + timeout
    while True:
        for pid in filter(str.isdigit, os.listdir("/proc")):
            with contextlib.suppress(OSError):
                if Path("/proc", pid, "cmdline").read_bytes() == wanted:
                    return
        assert time.monotonic() < deadline, f"{cmdline} did not start"
        time.sleep(0.05)


def for_parent(msgs: list[dict], msg_id: str) -> list[tuple[str, Any]]:
    kinds = []
    for m in msgs:
        if m["parent_header"].get("msg_id") != msg_id:
            continue
        c = m["content"]
        detail = {
            "status": c.get("execution_state"),
            "stream": (c.get("name"), c.get("text")),
            "execute_input": c.get("code"),
            "error": c.get("ename"),
        }.get(m["msg_type"])
        kinds.append((m["msg_type"], detail))
    return kinds


@pytest.fixture
def shared(server: Server) -> tuple[Client, str]:
    native = server.client()
    native.execute("cd /tmp; team=blue", kernel="team")
    path = native.connect_jupyter("team")["connection_file"]
    return native, path


def test_connection_file_is_standard(shared: tuple[Client, str]) -> None:
    _, path = shared
    info = json.loads(Path(path).read_text())
    for key in ("shell_port", "iopub_port", "stdin_port", "control_port", "hb_port"):
        assert isinstance(info[key], int) and info[key] > 0
    # ipc by default, in the runtime directory's 0700 jupyter/: no other user reaches it.
    assert (info["transport"], info["signature_scheme"]) == ("ipc", "hmac-sha256")
    assert Path(info["ip"]).parent == Path(path).parent
    for key in ("shell_port", "iopub_port", "stdin_port", "control_port", "hb_port"):
        assert oct(Path(f"{info['ip']}-{info[key]}").stat().st_mode & 0o777) == "0o600"
    assert len(info["key"]) == 64
    assert oct(Path(path).stat().st_mode & 0o777) == "0o600"


def test_cli_prints_the_connection_file(server: Server) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "stigmer_kernel", "kernels", "connection-file", "viacli"],
        env=server.env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    path = proc.stdout.strip()
    kc = connect(path)
    reply = kc.execute("echo via-cli", reply=True, timeout=10)
    assert reply["content"]["status"] == "ok"
    kc.stop_channels()


def test_jupyter_console_attaches_to_a_kernel_an_agent_runner_uses(
    shared: tuple[Client, str], server: Server
) -> None:
    native, path = shared
    r = subprocess.run(
        [
            str(Path(sys.executable).parent / "jupyter"),
            "console",
            "--existing",
            path,
            "--simple-prompt",
        ],
        input='echo "$team in $PWD"; seen=by-console\necho to-stderr >&2\n',
        env=server.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    assert "blue in /tmp" in r.stdout and "to-stderr" in r.stderr
    assert "keeping kernel alive" in r.stdout  # leaving the console does not end the kernel
    assert native.execute("echo $seen", kernel="team").stdout == "by-console\n"


def test_two_clients_share_a_kernel_the_jupyter_way(shared: tuple[Client, str]) -> None:
    native, path = shared
    a, b = connect(path), connect(path)
    # The Jupyter clients see the state the native client made.
    msg_id = a.execute("echo $team from $PWD; echo warn >&2")
    reply = a.get_shell_msg(timeout=10)
    assert reply["parent_header"]["msg_id"] == msg_id and reply["content"]["status"] == "ok"
    seen_by_b = drain_iopub(b, msg_id)
    assert for_parent(seen_by_b, msg_id) == [
        ("status", "busy"),
        ("execute_input", "echo $team from $PWD; echo warn >&2"),
        ("stream", ("stdout", "blue from /tmp\n")),
        ("stream", ("stderr", "warn\n")),
        ("status", "idle"),
    ]
    # The reply went to A only.
    with pytest.raises(Empty):
        b.get_shell_msg(timeout=0.5)
    # No message reached B twice.
    ids = [m["header"]["msg_id"] for m in seen_by_b]
    assert len(ids) == len(set(ids))
    # A native client's command on the same kernel shows on iopub too.
    r = native.execute("echo from-native", kernel="team")
    assert r.stdout == "from-native\n"
    outputs = []
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and ("stream", ("stdout", "from-native\n")) not in outputs:
        try:
            msg = b.get_iopub_msg(timeout=1)
        except Empty:
            continue
        outputs.append((msg["msg_type"], (msg["content"].get("name"), msg["content"].get("text"))))
    assert ("stream", ("stdout", "from-native\n")) in outputs
    a.stop_channels()
    b.stop_channels()


def test_short_output_is_published_before_the_reply(shared: tuple[Client, str]) -> None:
    """A short command's output reaches the broker inside the agent's reply: Jupyter clients
    still get it as iopub stream messages published before the execute_reply, and a Jupyter
    client watching the kernel sees a native client's short command's output too."""
    native, path = shared
    a, b = connect(path), connect(path)
    for _ in range(3):
        msg_id = a.execute("echo hi; echo err >&2")
        reply = a.get_shell_msg(timeout=10)
        assert reply["parent_header"]["msg_id"] == msg_id and reply["content"]["status"] == "ok"
        seen = drain_iopub(a, msg_id)
        streams = [m for m in seen if m["msg_type"] == "stream"]
        assert [(m["content"]["name"], m["content"]["text"]) for m in streams] == [
            ("stdout", "hi\n"),
            ("stderr", "err\n"),
        ]
        assert all(m["header"]["date"] <= reply["header"]["date"] for m in streams)
        assert for_parent(drain_iopub(b, msg_id), msg_id)[-3:] == [
            ("stream", ("stdout", "hi\n")),
            ("stream", ("stderr", "err\n")),
            ("status", "idle"),
        ]
    r = native.execute("echo watched; echo also >&2", kernel="team")
    assert (r.stdout, r.stderr) == ("watched\n", "also\n")
    texts: list[tuple[str, str]] = []
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and len(texts) < 2:
        try:
            msg = b.get_iopub_msg(timeout=1)
        except Empty:
            continue
        if msg["msg_type"] == "stream":
            texts.append((msg["content"]["name"], msg["content"]["text"]))
    assert texts == [("stdout", "watched\n"), ("stderr", "also\n")]
    a.stop_channels()
    b.stop_channels()


def test_a_jupyter_client_counts_as_attached_until_it_disconnects(
    shared: tuple[Client, str],
) -> None:
    native, path = shared

    def attached() -> int:
        (k,) = [k for k in native.list_kernels() if k["name"] == "team"]
        return int(k["clients"])

    before = attached()  # the native client
    a, b = connect(path), connect(path)
    for kc in (a, b):
        assert kc.execute("true", reply=True, timeout=10)["content"]["status"] == "ok"
    assert attached() == before + 2
    a.stop_channels()
    deadline = time.monotonic() + 10
    while attached() != before + 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert attached() == before + 1
    assert b.execute("echo still", reply=True, timeout=10)["content"]["status"] == "ok"
    b.stop_channels()
    while attached() != before and time.monotonic() < deadline + 10:
        time.sleep(0.05)
    assert attached() == before


def test_reconnecting_with_the_same_session_carries_on(shared: tuple[Client, str]) -> None:
    _, path = shared
    first = connect(path, session="fixed-session-id")
    first.execute("carried=yes", reply=True, timeout=10)
    first.stop_channels()
    again = connect(path, session="fixed-session-id")
    reply = again.execute("echo $carried", reply=True, timeout=10)
    assert reply["content"]["status"] == "ok"
    outputs = drain_iopub(again, reply["parent_header"]["msg_id"])
    assert ("stream", ("stdout", "yes\n")) in for_parent(outputs, reply["parent_header"]["msg_id"])
    again.stop_channels()


def test_stdin_goes_to_the_requesting_client_only(shared: tuple[Client, str]) -> None:
    _, path = shared
    a, b = connect(path), connect(path)
    msg_id = a.execute('read -r answer; echo "got $answer"', allow_stdin=True)
    request = a.get_stdin_msg(timeout=10)
    assert request["msg_type"] == "input_request"
    assert request["parent_header"]["msg_id"] == msg_id
    with pytest.raises(Empty):
        b.get_stdin_msg(timeout=0.3)
    a.input("forty-two")
    assert a.get_shell_msg(timeout=10)["content"]["status"] == "ok"
    assert ("stream", ("stdout", "got forty-two\n")) in for_parent(drain_iopub(a, msg_id), msg_id)
    # Without allow_stdin the command reads nothing and does not wait.
    reply = a.execute('read -r x; echo "rc=$?"', allow_stdin=False, reply=True, timeout=10)
    assert reply["content"]["status"] == "ok"
    a.stop_channels()
    b.stop_channels()


def test_stop_on_error_aborts_what_was_queued(shared: tuple[Client, str]) -> None:
    _, path = shared
    kc = connect(path)
    first = kc.execute("sleep 0.3; exit 4")
    second = kc.execute("echo should-not-run")
    replies = {}
    for _ in range(2):
        msg = kc.get_shell_msg(timeout=10)
        replies[msg["parent_header"]["msg_id"]] = msg["content"]
    assert replies[first]["status"] == "error" and replies[first]["exit_code"] == 4
    assert replies[second]["status"] == "aborted"
    # stop_on_error=False keeps the queue.
    kc.execute("exit 1", stop_on_error=False)
    third = kc.execute("echo runs")
    for _ in range(2):
        msg = kc.get_shell_msg(timeout=10)
        replies[msg["parent_header"]["msg_id"]] = msg["content"]
    assert replies[third]["status"] == "ok"
    kc.stop_channels()


def test_execution_count_follows_the_spec(shared: tuple[Client, str]) -> None:
    _, path = shared
    kc = connect(path)
    one = kc.execute("true", reply=True, timeout=10)["content"]["execution_count"]
    silent = kc.execute("true", silent=True, reply=True, timeout=10)["content"]["execution_count"]
    nohist = kc.execute("true", store_history=False, reply=True, timeout=10)["content"][
        "execution_count"
    ]
    two = kc.execute("true", reply=True, timeout=10)["content"]["execution_count"]
    assert silent == one and nohist == one and two == one + 1
    kc.stop_channels()


def test_interrupt_and_restart_by_message(shared: tuple[Client, str]) -> None:
    _, path = shared
    kc = connect(path)
    info = kc.kernel_info(reply=True, timeout=10)
    old_session = info["header"]["session"]
    sleep = unique_sleep()
    msg_id = kc.execute(" ".join(sleep))
    wait_until_running(sleep)
    kc.session.send(kc.control_channel.socket, kc.session.msg("interrupt_request", {}))
    reply = kc.get_shell_msg(timeout=10)
    assert reply["parent_header"]["msg_id"] == msg_id
    assert reply["content"]["status"] == "error" and reply["content"]["ename"] == "Interrupted"
    kc.shutdown(restart=True)
    starting = []
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not starting:
        try:
            msg = kc.get_iopub_msg(timeout=1)
        except Empty:
            continue
        if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "starting":
            starting.append(msg)
    assert starting and starting[0]["header"]["session"] != old_session
    reply = kc.execute("echo ${team:-reset}", reply=True, timeout=10)
    assert reply["content"]["execution_count"] == 1
    kc.stop_channels()


def test_kernelspec_kernel_is_hosted_by_the_running_server(jupyter_env: Server) -> None:
    start = time.monotonic()
    km, kc = start_new_kernel(kernel_name="stigmer-local")
    elapsed = time.monotonic() - start
    try:
        kernels = jupyter_env.client().list_kernels()
        assert [k["name"] for k in kernels if k["name"].startswith("jupyter-")]
        reply = kc.execute("echo $((6 * 7))", reply=True, timeout=10)
        assert reply["content"]["status"] == "ok"
        assert elapsed < 15  # only against a hang: the benchmark reports the real figure
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=False)
    assert not [k for k in jupyter_env.client().list_kernels() if k["name"].startswith("jupyter-")]


def test_example_notebook_runs_under_nbclient(jupyter_env: Server) -> None:
    nb = nbformat.read(ROOT / "examples" / "shell-tour.ipynb", as_version=4)
    NotebookClient(nb, kernel_name="stigmer-local", timeout=30, allow_errors=False).execute()
    code = [c for c in nb.cells if c.cell_type == "code"]

    def text(cell: Any, name: str = "stdout") -> str:
        return "".join(o.get("text", "") for o in cell.outputs if o.get("name") == name)

    assert text(code[0]) == "/tmp\n"
    assert code[1].outputs == []
    assert text(code[2]) == "hello from /tmp\nHELLO!\n"
    assert text(code[3], "stderr") == "this goes to stderr\n"
    assert text(code[3]) == "and this to stdout\n"
    errors = [o for o in code[4].outputs if o.output_type == "error"]
    assert len(errors) == 1 and errors[0].evalue == "exit code 2"
    assert "No such file or directory" in text(code[4], "stderr")
    assert text(code[5]) == "step 1\nstep 2\nstep 3\n"
    assert [c.execution_count for c in code] == [1, 2, 3, 4, 5, 6]


def test_sigint_to_the_launcher_interrupts(jupyter_env: Server) -> None:
    import signal

    km, kc = start_new_kernel(kernel_name="stigmer-local")
    try:
        sleep = unique_sleep()
        msg_id = kc.execute(f"echo start; {' '.join(sleep)}; echo never")
        wait_until_running(sleep)
        os.kill(km.provisioner.pid, signal.SIGINT)  # what interrupt_mode "signal" does
        reply = kc.get_shell_msg(timeout=10)
        assert reply["parent_header"]["msg_id"] == msg_id
        assert reply["content"]["ename"] == "Interrupted"
        alive = kc.execute("echo alive", reply=True, timeout=10)["content"]
        assert alive["status"] == "ok", alive
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=False)


def test_background_output_is_not_mistaken_for_completions(
    shared: tuple[Client, str], tmp_path: Path
) -> None:
    _, path = shared
    kc = connect(path)
    printed = tmp_path / "printed"
    kc.execute(f"(sleep 0.3; echo BGLINE; touch {printed}) &", reply=True, timeout=10)
    deadline = time.monotonic() + 15
    while not printed.exists():  # BGLINE is out, between two requests
        assert time.monotonic() < deadline, "the background job did not print"
        time.sleep(0.05)
    time.sleep(0.5)  # and read by the idle agent (at once; nothing outside can tell when)
    matches = kc.complete("ech", reply=True, timeout=10)["content"]["matches"]
    assert matches == ["echo"]
    msg_id = kc.execute("echo next")
    kc.get_shell_msg(timeout=10)
    texts = "".join(
        t
        for kind, (name, t) in (
            (k, d) for k, d in for_parent(drain_iopub(kc, msg_id), msg_id) if k == "stream"
        )
    )
    assert "BGLINE" in texts and "next" in texts  # delivered with the next command, not lost
    kc.stop_channels()
