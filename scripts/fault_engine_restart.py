"""Fault: the Docker engine stops mid-session, then comes back.

    python scripts/fault_engine_restart.py      (root; it stops and restarts dockerd)

Expected: sandbox requests fail fast with one clear message while the engine is down; local
kernels are untouched; sandbox kernels work again once the engine is back. Prints what happened
with timings; exit 1 if an expectation fails. CI runs it after the test suite (it disturbs the
shared engine, so it is not a pytest test).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from stigmer_kernel import Client, ModeUnavailable, load_config
from stigmer_kernel.client.discovery import start_background_server

ROOT = Path(__file__).resolve().parent.parent
IMAGE = os.environ.get("STIGMER_SANDBOX_IMAGE", "stigmer-test-base:bookworm")


def engine_up() -> bool:
    return subprocess.run(["docker", "info"], capture_output=True).returncode == 0


def main() -> int:
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

    try:
        with Client(config, autostart=False) as c:
            c.execute("L=local-state", kernel="loc")
            expect(
                c.execute("echo in", kernel="box", mode="sandbox").stdout == "in\n",
                "sandbox kernel works with the engine up",
            )
            subprocess.run(["pkill", "-x", "dockerd"], check=False)
            deadline = time.monotonic() + 30
            while engine_up() and time.monotonic() < deadline:
                time.sleep(0.2)
            expect(not engine_up(), "engine stopped")
            time.sleep(2)  # the sandbox's agent is gone with its container
            for name in ("box", "box-new"):
                t = time.monotonic()
                try:
                    r = c.execute("echo hi", kernel=name, mode="sandbox")
                    message = f"{r.ename}: {r.evalue}"
                except ModeUnavailable as exc:
                    message = str(exc)
                took = time.monotonic() - t
                expect(
                    "Docker engine not reachable" in message and took < 5,
                    f"{name}: fails in {took:.2f}s with: {message}",
                )
            expect(
                c.execute("echo $L", kernel="loc").stdout == "local-state\n",
                "local kernel untouched, state kept",
            )
            subprocess.run(["bash", str(ROOT / "scripts" / "provision-docker.sh")], check=True)
            time.sleep(2.5)  # the engine's answer is cached for 2 s
            t = time.monotonic()
            r = c.execute("echo back", kernel="box", mode="sandbox")
            expect(
                r.stdout == "back\n",
                f"sandbox works again once the engine is back ({time.monotonic() - t:.2f}s)",
            )
            c.shutdown_server()
    finally:
        if not engine_up():
            subprocess.run(["bash", str(ROOT / "scripts" / "provision-docker.sh")], check=False)
        shutil.rmtree(runtime, ignore_errors=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
