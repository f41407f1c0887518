"""Jupyter route hijack: another local user reads iopub, learns a client's session id (its
routing identity) and connects with it to shell to take the client's replies. Refused: TCP
connections from another uid are closed at once, the ROUTERs have no handover, a TCP iopub
carries no native client's work, and connection files are ipc by default."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path
from queue import Empty
from typing import Any

import pytest
import zmq
from jupyter_client.blocking import BlockingKernelClient

from stigmer_kernel.errors import StigmerError
from tests.conftest import Server
from tests.e2e.test_jupyter import drain_iopub
from tests.security.conftest import ATTACKER_PYTHON, LocalUser

REPLIES = 12

#: Runs as the other user: subscribes to iopub, claims the victim's identity on shell (as if it
#: had read it there, and tries to learn it itself), until its stdin closes; prints what it got.
ATTACKER = textwrap.dedent(
    """
    import json, sys, zmq
    iopub, shell, session = sys.argv[1], sys.argv[2], sys.argv[3]
    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(iopub)
    thief = ctx.socket(zmq.DEALER)
    thief.setsockopt(zmq.IDENTITY, session.encode())
    thief.connect(shell)
    header = json.dumps({"msg_id": "x", "msg_type": "kernel_info_request", "session": session})
    thief.send_multipart([b"<IDS|MSG>", b"0" * 64, header.encode(), b"{}", b"{}", b"{}"])
    poller = zmq.Poller()
    poller.register(sub, zmq.POLLIN)
    poller.register(thief, zmq.POLLIN)
    poller.register(sys.stdin, zmq.POLLIN)
    got = {"iopub": 0, "shell": 0, "sessions": [], "texts": []}
    print("ready", flush=True)
    while True:
        events = dict(poller.poll(1000))
        if sub in events:
            frames = sub.recv_multipart()
            got["iopub"] += 1
            try:
                parent = json.loads(frames[frames.index(b"<IDS|MSG>") + 3])
                content = json.loads(frames[frames.index(b"<IDS|MSG>") + 5])
                got["sessions"].append(parent.get("session"))
                got["texts"].append(content.get("text") or content.get("code"))
            except (ValueError, IndexError):
                pass
        if thief in events:
            thief.recv_multipart()
            got["shell"] += 1
        if any(fd == sys.stdin.fileno() or fd is sys.stdin for fd in events):
            break
    print(json.dumps(got), flush=True)
    """
)


def tcp_kernel(server: Server, name: str) -> dict[str, Any]:
    """A kernel with TCP Jupyter channels, as a kernelspec launch (Jupyter chose TCP) gives."""
    native = server.client()
    reply = native.connect_jupyter(name, connection={"transport": "tcp"})
    info = reply["connection"]
    assert info["transport"] == "tcp"
    return dict(info, connection_file=reply["connection_file"])


def victim_client(connection_file: str) -> BlockingKernelClient:
    kc = BlockingKernelClient()
    kc.load_connection_file(connection_file)
    kc.start_channels()
    kc.wait_for_ready(timeout=15)
    return kc


def url(info: dict[str, Any], channel: str) -> str:
    return f"tcp://{info['ip']}:{info[f'{channel}_port']}"


def run_all(kc: BlockingKernelClient, count: int) -> list[dict[str, Any]]:
    """``count`` executes in flight at once; their replies, as the victim received them."""
    ids = {kc.execute(f"echo reply-{n}") for n in range(count)}
    replies = []
    deadline = time.monotonic() + 30
    while ids and time.monotonic() < deadline:
        try:
            msg = kc.get_shell_msg(timeout=1)
        except Empty:
            continue
        if msg["parent_header"].get("msg_id") in ids:
            ids.discard(msg["parent_header"]["msg_id"])
            replies.append(msg)
    return replies


def test_another_user_cannot_read_iopub_or_take_a_clients_route(
    server: Server, other_user: LocalUser
) -> None:
    info = tcp_kernel(server, "hijacked")
    victim = victim_client(info["connection_file"])
    try:
        session = victim.session.session
        attacker = other_user.popen(
            [ATTACKER_PYTHON, "-c", ATTACKER, url(info, "iopub"), url(info, "shell"), session],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert attacker.stdout is not None and attacker.stdout.readline() == b"ready\n"
        replies = run_all(victim, REPLIES)
        out, err = attacker.communicate(b"", timeout=30)
    finally:
        victim.stop_channels()
    assert len(replies) == REPLIES, f"the victim got {len(replies)} of {REPLIES} replies"
    assert all(r["content"]["status"] == "ok" for r in replies)
    got = json.loads(out.decode().strip().splitlines()[-1]), err
    assert got[0]["shell"] == 0, got
    assert got[0]["iopub"] == 0 and session not in got[0]["sessions"], got
    assert server.client().server_info()["stats"]["connections_refused"] > 0


def test_a_second_connection_with_a_clients_identity_takes_nothing(server: Server) -> None:
    """Without ROUTER_HANDOVER, a peer that knows a live client's identity (even one of this
    user's, which the uid check lets in) cannot take over its route."""
    info = tcp_kernel(server, "handover")
    victim = victim_client(info["connection_file"])
    ctx = zmq.Context()
    thief = ctx.socket(zmq.DEALER)
    try:
        thief.setsockopt(zmq.IDENTITY, victim.session.bsession)
        thief.connect(url(info, "shell"))
        thief.send_multipart([b"<IDS|MSG>", b"0" * 64, b"{}", b"{}", b"{}", b"{}"])
        replies = run_all(victim, REPLIES)
        assert len(replies) == REPLIES, f"the victim got {len(replies)} of {REPLIES} replies"
        assert thief.poll(100) == 0  # everything was answered already: nothing came here
    finally:
        thief.close(0)
        ctx.term()
        victim.stop_channels()


def iopub_texts(kc: BlockingKernelClient, until: str) -> list[str]:
    """The text of each iopub message (stream text, execute_input code) up to ``until``'s idle."""
    return [
        str(msg["content"].get("text") or msg["content"].get("code") or "")
        for msg in drain_iopub(kc, until, timeout=15)
    ]


@pytest.mark.parametrize("transport", ["tcp", "ipc"])
def test_native_clients_work_is_on_iopub_only_over_ipc(server: Server, transport: str) -> None:
    native = server.client()
    reply = native.connect_jupyter(f"mixed-{transport}", connection={"transport": transport})
    if transport == "ipc":  # in the private directory, not relative to the server's cwd
        assert Path(reply["connection"]["ip"]).parent == Path(server.runtime_dir, "jupyter")
    kc = victim_client(reply["connection_file"])
    try:
        marker = uuid.uuid4().hex
        assert native.execute(f"echo native-{marker}", kernel=f"mixed-{transport}").exit_code == 0
        own = kc.execute(f"echo jupyter-{marker}")
        texts = "".join(iopub_texts(kc, own))
    finally:
        kc.stop_channels()
    assert f"jupyter-{marker}" in texts
    assert (f"native-{marker}" in texts) == (transport == "ipc"), texts


def test_cli_connection_file_is_ipc_and_works_with_jupyter_clients(server: Server) -> None:
    made = subprocess.run(
        [sys.executable, "-m", "stigmer_kernel", "kernels", "connection-file", "viaipc"],
        env=server.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert made.returncode == 0, made.stderr
    path = made.stdout.strip()
    info = json.loads(Path(path).read_text())
    assert info["transport"] == "ipc"
    jupyter_dir = Path(server.runtime_dir, "jupyter")
    assert Path(info["ip"]).parent == jupyter_dir
    assert oct(jupyter_dir.stat().st_mode & 0o777) == "0o700"
    kc = victim_client(path)
    try:
        msg_id = kc.execute("echo via-ipc")
        assert "via-ipc\n" in iopub_texts(kc, msg_id)
    finally:
        kc.stop_channels()
    jupyter_runtime = server.runtime_dir + ".jrt"  # jupyter console's own runtime files
    console = subprocess.run(
        [
            os.path.join(os.path.dirname(sys.executable), "jupyter-console"),
            "--existing",
            path,
            "--simple-prompt",
            "-y",
        ],
        input="echo from-console-$((6*7))\nexit\n",
        capture_output=True,
        text=True,
        timeout=60,
        env={**server.env, "JUPYTER_RUNTIME_DIR": jupyter_runtime},
    )
    shutil.rmtree(jupyter_runtime, ignore_errors=True)
    assert "from-console-42" in console.stdout, (console.stdout, console.stderr)


def test_a_relative_ipc_path_is_refused(server: Server) -> None:
    with pytest.raises(StigmerError, match="relative"):
        server.client().connect_jupyter("relative", connection={"transport": "ipc", "ip": "x"})
    assert not Path("x-1").exists()
