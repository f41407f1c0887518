"""Jupyter round trip and kernel start: stigmer-local against bash_kernel, in one run.

    make bench            (or: python scripts/bench_jupyter.py --n 300)

Installs both kernelspecs in a temporary prefix and runs a private stigmer server in a temporary
runtime directory, so nothing of yours is touched. Measures, through stock jupyter_client:
the round trip of `true` (execute, wait for the reply) and the kernel start (kernelspec to
ready, with the stigmer server already running). Targets: stigmer-local at least 20x faster than
bash_kernel per round trip; kernel start under 1 s. Exit code 1 if a target is missed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchlib import target
from jupyter_client.manager import start_new_kernel

from stigmer_kernel import Client, load_config
from stigmer_kernel.client.discovery import start_background_server

ROUND_TRIP_TARGET = 20.0
START_TARGET = 1.0


def p50_p99(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return statistics.median(ordered), ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


def round_trips(kernel_name: str, n: int) -> tuple[list[float], list[float]]:
    starts: list[float] = []
    samples: list[float] = []
    for attempt in range(3):
        t = time.perf_counter()
        km, kc = start_new_kernel(
            kernel_name=kernel_name, startup_timeout=60, stderr=subprocess.DEVNULL
        )
        starts.append(time.perf_counter() - t)
        try:
            if attempt == 0:
                for _ in range(10):
                    kc.execute("true", reply=True, timeout=30)
                for _ in range(n):
                    t = time.perf_counter()
                    reply = kc.execute("true", reply=True, timeout=30)
                    samples.append((time.perf_counter() - t) * 1000)
                    assert reply["content"]["status"] == "ok", reply["content"]
        finally:
            kc.stop_channels()
            km.shutdown_kernel(now=False)
    return samples, starts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=300, help="round trips on stigmer-local")
    parser.add_argument("--n-bash", type=int, default=40, help="round trips on bash_kernel")
    args = parser.parse_args()

    prefix = tempfile.mkdtemp(prefix="stg-bench-ks-", dir="/tmp")
    runtime = tempfile.mkdtemp(prefix="stg-bench-", dir="/tmp")
    env = dict(os.environ, STIGMER_RUNTIME_DIR=runtime)
    subprocess.run(
        [sys.executable, "-m", "stigmer_kernel", "kernelspec", "install", "--prefix", prefix],
        check=True,
        env=env,
        capture_output=True,
    )
    subprocess.run(
        [sys.executable, "-m", "bash_kernel.install", "--prefix", prefix],
        check=True,
        capture_output=True,
    )
    os.environ["JUPYTER_PATH"] = str(Path(prefix) / "share" / "jupyter")
    os.environ["STIGMER_RUNTIME_DIR"] = runtime
    config = load_config({"runtime_dir": runtime})
    start_background_server(config)
    try:
        stigmer, stigmer_starts = round_trips("stigmer-local", args.n)
        bash, bash_starts = round_trips("bash", args.n_bash)
    finally:
        with Client(config, autostart=False) as c:
            c.shutdown_server()
        shutil.rmtree(prefix, ignore_errors=True)
        shutil.rmtree(runtime, ignore_errors=True)

    s50, s99 = p50_p99(stigmer)
    b50, b99 = p50_p99(bash)
    start = statistics.median(stigmer_starts)
    ratio = b50 / s50
    print(f"jupyter_client round trip of `true` ({os.cpu_count()} cores)")
    print(f"{'kernel':34} {'p50 ms':>8} {'p99 ms':>8} {'start s':>8}")
    print(f"{'stigmer-local (server running)':34} {s50:8.3f} {s99:8.3f} {start:8.3f}")
    print(f"{'bash_kernel':34} {b50:8.3f} {b99:8.3f} {statistics.median(bash_starts):8.3f}")
    ok = [
        target(
            f"Jupyter round trip, stigmer-local p50 {s50:.3f} ms",
            f"bash_kernel {b50:.3f} ms",
            b50 / s50,
            f">= {ROUND_TRIP_TARGET:g}x faster",
            ratio >= ROUND_TRIP_TARGET,
        ),
        target(
            f"Jupyter kernel start, stigmer-local {start:.3f} s",
            f"bash_kernel {statistics.median(bash_starts):.3f} s",
            None,
            f"< {START_TARGET:g} s",
            start < START_TARGET,
        ),
    ]
    return 0 if all(ok) else 1


if __name__ == "__main__":
    sys.exit(main())
