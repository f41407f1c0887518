"""Fault: the Docker engine stops mid-session, then comes back.

    python scripts/fault_engine_restart.py      (root; it stops and restarts dockerd)

Expected: sandbox requests fail fast with one clear message while the engine is down; local
kernels are untouched; an auto kernel keeps running its local commands (state kept), refuses its
sandbox commands the same clear way (never running them on the host) and refuses a Jupyter
restart without stopping anything; sandbox kernels work again once the engine is back. Prints
what happened with timings; exit 1 if an expectation fails. CI runs it after the test suite (it
disturbs the shared engine, so it is not a pytest test).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from jupyter_client import BlockingKernelClient

from stigmer_kernel import Client, ModeUnavailable, load_config
from stigmer_kernel.client.discovery import start_background_server

ROOT = Path(__file__).resolve().parent.parent
IMAGE = os.environ.get("STIGMER_SANDBOX_IMAGE", "stigmer-test-base:bookworm")
#: Written only if a command meant for the sandbox ran on the host instead.
HOST_MARK = Path(tempfile.gettempdir()) / f"stg-fault-on-host-{os.getpid()}"
IN_BOX = f"if [ -f /.dockerenv ]; then echo box; else touch {HOST_MARK}; fi"


def engine_up() -> bool:
    return subprocess.run(["docker", "info"], capture_output=True).returncode == 0


#: Written by scripts/provision-docker.sh with the pid of the dockerd it started.
ENGINE_PID_FILE = Path("/tmp/stigmer-dockerd.pid")


def our_engine() -> int | None:
    """The pid of the running dockerd that scripts/provision-docker.sh started, if any: this
    script stops only that engine, never one someone else runs."""
    try:
        pid = int(ENGINE_PID_FILE.read_text())
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
    except (OSError, ValueError):
        return None
    return pid if comm == "dockerd" else None


def main() -> int:
    ours = our_engine()
    if ours is None:
        print(
            "FAIL this script stops only a Docker engine started by scripts/provision-docker.sh,"
            " and the running one was not (nothing was stopped)"
        )
        return 1
    runtime = tempfile.mkdtemp(prefix="stg-fault-", dir="/tmp")
    config = load_config(
        {"runtime_dir": runtime, "sandbox_image": IMAGE, "heartbeat_interval": 0.5}
    )
    start_background_server(config)
    failures: list[str] = []

    def expect(ok: bool, what: str) -> None:
        print(f"{'ok  ' if ok else 'FAIL'} {what}")
        if not ok:
            failures.append(what)

    def sandbox_refusal(c: Client, code: str, kernel: str, mode: str) -> None:
        t = time.monotonic()
        try:
            r = c.execute(code, kernel=kernel, mode=mode)
            message = f"{r.ename}: {r.evalue}"
        except ModeUnavailable as exc:
            message = str(exc)
        took = time.monotonic() - t
        expect(
            "Docker engine not reachable" in message and took < 5,
            f"{kernel} ({mode}): fails in {took:.2f}s with: {message}",
        )

    jc = BlockingKernelClient()
    try:
        with Client(config, autostart=False) as c:
            c.execute("L=local-state", kernel="loc")
            expect(
                c.execute("echo in", kernel="box", mode="sandbox").stdout == "in\n",
                "sandbox kernel works with the engine up",
            )
            c.execute("A=auto-state", kernel="mix", mode="auto")
            r = c.execute(f"apt-get --version >/dev/null && {IN_BOX}", kernel="mix", mode="auto")
            expect(r.stdout == "box\n", "auto kernel: apt-get runs in its sandbox side")
            jc.load_connection_info(c.connect_jupyter("mix", mode="auto")["connection"])
            jc.start_channels()
            os.kill(ours, signal.SIGTERM)
            deadline = time.monotonic() + 30
            while engine_up() and time.monotonic() < deadline:
                time.sleep(0.2)
            expect(not engine_up(), "engine stopped")
            time.sleep(2)  # the sandbox's agent is gone with its container
            for name in ("box", "box-new"):
                sandbox_refusal(c, "echo hi", name, "sandbox")
            expect(
                c.execute("echo $L", kernel="loc").stdout == "local-state\n",
                "local kernel untouched, state kept",
            )
            sandbox_refusal(c, f"apt-get --version; {IN_BOX}", "mix", "auto")
            expect(not HOST_MARK.exists(), "auto kernel: apt-get never ran on the host")
            msg_id = jc.shutdown(restart=True)
            reply = jc.get_control_msg(timeout=10)
            content = reply["content"]
            expect(
                reply["parent_header"].get("msg_id") == msg_id
                and content.get("status") == "error"
                and "Docker engine not reachable" in str(content.get("evalue")),
                f"auto kernel: Jupyter restart refused ({content.get('evalue')})",
            )
            expect(
                c.execute("echo $A", kernel="mix", mode="auto").stdout == "auto-state\n",
                "auto kernel: local side untouched by the refused restart, state kept",
            )
            subprocess.run(["bash", str(ROOT / "scripts" / "provision-docker.sh")], check=True)
            time.sleep(2.5)  # the engine's answer is cached for 2 s
            t = time.monotonic()
            r = c.execute("echo back", kernel="box", mode="sandbox")
            expect(
                r.stdout == "back\n",
                f"sandbox works again once the engine is back ({time.monotonic() - t:.2f}s)",
            )
            r = c.execute(f"apt-get --version >/dev/null && {IN_BOX}", kernel="mix", mode="auto")
            expect(r.stdout == "box\n", "auto kernel: apt-get runs in the sandbox again")
            c.shutdown_server()
    finally:
        jc.stop_channels()
        HOST_MARK.unlink(missing_ok=True)
        if not engine_up():
            subprocess.run(["bash", str(ROOT / "scripts" / "provision-docker.sh")], check=False)
        shutil.rmtree(runtime, ignore_errors=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
