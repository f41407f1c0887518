"""Kernels started by stock jupyter_client: the environment Jupyter gives the kernelspec's
launcher reaches the kernel, and a killed Jupyter program takes its kernel with it."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from jupyter_client.manager import KernelManager

from tests.conftest import Server, wait_for

#: A Jupyter program: starts a stigmer-local kernel with jupyter_client, talks to it once, says
#: which stigmer kernel and launcher pid it got and where its connection file is (a killed
#: program leaves it: the test removes it), then waits to be killed.
JUPYTER_PROGRAM = """
import json, sys, time
from jupyter_client.manager import KernelManager
from stigmer_kernel.jupyter.launcher import kernel_name_for

km = KernelManager(kernel_name="stigmer-local")
km.start_kernel()
kc = km.client()
kc.start_channels()
kc.wait_for_ready(timeout=30)
with open(km.connection_file) as f:
    print(kernel_name_for(json.load(f)), km.provisioner.process.pid, km.connection_file, flush=True)
time.sleep(120)
"""


def shell_output(km: KernelManager, code: str) -> str:
    kc = km.client()
    kc.start_channels()
    try:
        kc.wait_for_ready(timeout=30)
        chunks: list[str] = []
        reply = kc.execute_interactive(
            code,
            timeout=30,
            output_hook=lambda m: (
                chunks.append(m["content"].get("text", "")) if m["msg_type"] == "stream" else None
            ),
        )
        assert reply["content"]["status"] == "ok", reply["content"]
        return "".join(chunks)
    finally:
        kc.stop_channels()


@pytest.fixture
def km(jupyter_env: Server) -> Iterator[KernelManager]:
    manager = KernelManager(kernel_name="stigmer-local")
    yield manager
    if manager.has_kernel:
        manager.shutdown_kernel(now=True)
    manager.cleanup_resources()


def test_start_kernel_env_and_jpy_parent_pid_reach_the_kernel(km: KernelManager) -> None:
    km.start_kernel(env={**os.environ, "FROM_KM": "start_kernel's", "MAKELEVEL": "1"})
    out = shell_output(km, 'echo "$FROM_KM|$JPY_PARENT_PID|${MAKELEVEL-unset}"; env')
    first, *rest = out.splitlines()
    assert first == f"start_kernel's|{os.getpid()}|unset"  # this program's pid: it started it
    names = {line.split("=", 1)[0] for line in rest if "=" in line}
    assert {n for n in names if n.startswith("STIGMER_")} == {"STIGMER_KERNEL"}


def test_kernelspec_env_reaches_the_kernel(jupyter_env: Server) -> None:
    spec_dir = Path(os.environ["JUPYTER_PATH"], "kernels", "stigmer-local")
    spec = json.loads((spec_dir / "kernel.json").read_text())
    spec["env"] = {"FROM_SPEC": "kernelspec's", "SPEC_PATH": "/spec/bin:${PATH}"}
    (spec_dir / "kernel.json").write_text(json.dumps(spec))
    manager = KernelManager(kernel_name="stigmer-local")
    manager.start_kernel()
    try:
        out = shell_output(manager, 'echo "$FROM_SPEC|${SPEC_PATH%%:*}"')
        assert out == "kernelspec's|/spec/bin\n"
    finally:
        manager.shutdown_kernel(now=True)
        manager.cleanup_resources()


#: Connection files of killed Jupyter programs.
_LEFT_BEHIND: list[Path] = []


def start_jupyter_program() -> tuple[subprocess.Popen[str], str, int]:
    """The program running, with its stigmer kernel's name and its launcher's pid; its
    connection file is removed when the test ends (:data:`_LEFT_BEHIND`)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", JUPYTER_PROGRAM],
        env=dict(os.environ),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline().split()
    assert len(line) == 3, "the Jupyter program did not start its kernel"
    _LEFT_BEHIND.append(Path(line[2]))
    return proc, line[0], int(line[1])


def gone(pid: int) -> bool:
    try:
        return ") Z " in Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True


def kernel_names(server: Server) -> set[str]:
    with server.client() as c:
        return {k["name"] for k in c.list_kernels()}


@contextlib.contextmanager
def killed_at_the_end(proc: subprocess.Popen[str], launcher: int) -> Iterator[None]:
    try:
        yield
    finally:
        for pid in (proc.pid, launcher):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        proc.wait(timeout=10)
        assert proc.stdout is not None
        proc.stdout.close()
        while _LEFT_BEHIND:
            _LEFT_BEHIND.pop().unlink(missing_ok=True)


def test_a_killed_jupyter_program_takes_its_kernel_along(jupyter_env: Server) -> None:
    proc, kernel, launcher = start_jupyter_program()
    with killed_at_the_end(proc, launcher):
        assert kernel in kernel_names(jupyter_env)
        killed = time.monotonic()
        proc.send_signal(signal.SIGKILL)
        wait_for(lambda: kernel not in kernel_names(jupyter_env), timeout=10)
        took = time.monotonic() - killed
        wait_for(lambda: gone(launcher), timeout=5)
    assert took < 5, f"the kernel outlived its program by {took:.1f}s"


def test_a_kernel_another_client_uses_outlives_the_killed_program(jupyter_env: Server) -> None:
    proc, kernel, launcher = start_jupyter_program()
    with killed_at_the_end(proc, launcher):
        other = jupyter_env.client()  # attached from its first request on until it closes
        assert other.execute("export LEFT=here", kernel=kernel).status == "ok"
        proc.send_signal(signal.SIGKILL)
        wait_for(lambda: gone(launcher), timeout=10)  # the launcher went: only its claim
        assert kernel in kernel_names(jupyter_env)
        assert other.execute('echo "$LEFT"', kernel=kernel).stdout == "here\n"
        other.shutdown_kernel(kernel)
