"""Sandbox kernels: warm round trip against `docker exec` and local mode; cold and pooled start.

    make bench            (or: python scripts/bench_sandbox.py --n 500)

Needs a Docker engine (scripts/provision-docker.sh) and the image named by STIGMER_SANDBOX_IMAGE
(default: the offline test image built by scripts/build-test-image.sh). Runs private servers in
temporary runtime directories. Targets: warm sandbox round trip >= 10x faster than `docker exec`
and <= 1.0x the local round trip; cold start (request for a new sandbox kernel to its first
reply, image present) p50 <= 300 ms; start from the warm pool p50 <= 10 ms. Exit code 1 if a
target is missed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time

import docker
from benchlib import IMAGE, p50_p99, save_samples, target, timed

from stigmer_kernel import Client, load_config
from stigmer_kernel.client.discovery import start_background_server

WARM_VS_LOCAL = 1.0
COLD_START_MS = 300.0
POOL_START_MS = 10.0


def server(**settings: str) -> tuple[Client, str, int]:
    runtime = tempfile.mkdtemp(prefix="stg-bench-", dir="/tmp")
    config = load_config({"runtime_dir": runtime, "sandbox_image": IMAGE, **settings})
    address = start_background_server(config)
    return Client(config, autostart=False), runtime, address.pid


def stop(client: Client, runtime: str, pid: int) -> None:
    client.shutdown_server()
    client.close()
    # Remove the runtime directory once the server is gone: until then its containers' bind
    # mounts can bring a removed directory back.
    deadline = time.monotonic() + 30
    while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
        time.sleep(0.05)
    shutil.rmtree(runtime, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=500, help="warm round trips per kernel")
    parser.add_argument("--starts", type=int, default=5, help="cold and pooled starts")
    args = parser.parse_args()
    engine = docker.from_env()
    engine.images.get(IMAGE)
    workspace = tempfile.mkdtemp(prefix="stg-bench-ws-", dir="/tmp")
    os.chmod(workspace, 0o755)  # sandbox commands never run as root: let their uid in

    # docker exec of `true` in a running container of the same image (the SDK, as agents would).
    box = engine.containers.run(IMAGE, ["sleep", "infinity"], detach=True, init=True)
    try:
        timed(lambda: box.exec_run(["true"]), 5)
        exec_ms = timed(lambda: box.exec_run(["true"]), 60)
    finally:
        box.remove(force=True)

    c, runtime, pid = server()
    try:
        c.execute("true", kernel="local")
        t = time.perf_counter()
        c.execute("true", kernel="warm", mode="sandbox", cwd=workspace)
        first_s = time.perf_counter() - t  # the server's first sandbox: no network holder yet
        time.sleep(1.5)  # the round trips of a warm kernel: not during the holder's start
        timed(lambda: c.execute("true", kernel="warm", mode="sandbox"), 50)
        local: list[float] = []
        sandbox: list[float] = []
        for _ in range(args.n):  # alternating, call by call, so drift hits both alike
            local += timed(lambda: c.execute("true", kernel="local"), 1)
            sandbox += timed(lambda: c.execute("true", kernel="warm", mode="sandbox"), 1)
        cold = []
        for i in range(args.starts):
            # A new kernel on an otherwise idle server: its network holder (netns.py) is made
            # half a second after the start before, as the pool's containers are refilled.
            time.sleep(1.5)
            t = time.perf_counter()
            r = c.execute("true", kernel=f"cold{i}", mode="sandbox", cwd=workspace)
            cold.append(time.perf_counter() - t)
            assert r.exit_code == 0, (r.ename, r.evalue)
    finally:
        stop(c, runtime, pid)

    c, runtime, pid = server(sandbox_warm=2, sandbox_workspace=workspace)
    try:
        pooled = []
        for i in range(args.starts):
            time.sleep(1.5)  # let the pool refill
            t = time.perf_counter()
            r = c.execute("true", kernel=f"pooled{i}", mode="sandbox", cwd=workspace)
            pooled.append((time.perf_counter() - t) * 1000)
            assert r.exit_code == 0, (r.ename, r.evalue)
    finally:
        stop(c, runtime, pid)
        shutil.rmtree(workspace, ignore_errors=True)

    e50, e99 = p50_p99(exec_ms)
    l50, l99 = p50_p99(local)
    s50, s99 = p50_p99(sandbox)
    cold_s = statistics.median(cold)
    pool_ms = statistics.median(pooled)
    print(f"sandbox kernels ({IMAGE}, {os.cpu_count()} cores)")
    print(f"{'what':44} {'p50 ms':>8} {'p99 ms':>8}")
    print(f"{'docker exec true (SDK, running container)':44} {e50:8.3f} {e99:8.3f}")
    print(f"{'local kernel: true':44} {l50:8.3f} {l99:8.3f}")
    print(f"{'warm sandbox kernel: true':44} {s50:8.3f} {s99:8.3f}")
    print(
        f"cold start (new sandbox kernel to first reply): median {cold_s * 1000:.0f} ms "
        f"(all: {', '.join(f'{x * 1000:.0f}' for x in cold)}); the server's first sandbox, "
        f"its network created and no holder ready yet: {first_s * 1000:.0f} ms"
    )
    print(
        f"start from the warm pool: median {pool_ms:.0f} ms "
        f"(all: {', '.join(f'{x:.0f}' for x in pooled)})"
    )
    save_samples(
        {
            "docker exec true (SDK)": exec_ms,
            "local kernel (sandbox run)": local,
            "warm sandbox kernel": sandbox,
            "sandbox cold start": [x * 1000 for x in cold],
            "warm-pool start": pooled,
        }
    )
    exec_base = f"docker exec true (SDK) {e50:.1f} ms"
    checks = [
        target(
            f"warm sandbox round trip p50 {s50:.3f} ms",
            exec_base,
            e50 / s50,
            ">= 10x faster",
            e50 / s50 >= 10,
        ),
        target(
            f"warm sandbox round trip p50 {s50:.3f} ms",
            f"local round trip {l50:.3f} ms",
            s50 / l50,
            f"<= {WARM_VS_LOCAL:g}x",
            s50 / l50 <= WARM_VS_LOCAL,
        ),
        target(
            f"sandbox cold start p50 {cold_s * 1000:.0f} ms",
            "-",
            None,
            f"<= {COLD_START_MS:g} ms",
            cold_s * 1000 <= COLD_START_MS,
        ),
        target(
            f"warm-pool start p50 {pool_ms:.1f} ms",
            "-",
            None,
            f"<= {POOL_START_MS:g} ms",
            pool_ms <= POOL_START_MS,
        ),
    ]
    return 0 if all(checks) else 1


if __name__ == "__main__":
    sys.exit(main())
