"""Round-trip latency of `true` through a warm local kernel, against a subprocess baseline.

    make bench            (or: python scripts/bench_roundtrip.py --n 2000)

Runs a private server in a temporary runtime directory, so it never touches yours. Prints p50 and
p99 for `subprocess.run(["/bin/sh", "-c", "true"])` (the baseline, measured in the same run) and
for the native clients, and the ratio of the p50s. Target: native p50 <= 0.5x the baseline
(a warm kernel should cost less than spawning one `sh`).
Exit code 1 if the target is missed.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from benchlib import save_samples, target, timed

from stigmer_kernel import AsyncClient, Client, load_config
from stigmer_kernel.client.discovery import start_background_server

TARGET_RATIO = 0.5


def percentiles(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return statistics.median(ordered), p99


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000, help="round trips per measurement")
    args = parser.parse_args()

    runtime = tempfile.mkdtemp(prefix="stg-bench-", dir="/tmp")
    config = load_config({"runtime_dir": runtime})
    start_background_server(config)
    results: dict[str, tuple[float, float]] = {}
    try:
        # Interleave baseline and native rounds so drift on a shared machine hits both.
        base: list[float] = []
        sync: list[float] = []
        with Client(config, autostart=False) as c:
            c.execute("true", kernel="bench")  # start the kernel: we measure warm round trips
            timed(lambda: c.execute("true", kernel="bench"), 100)
            timed(lambda: subprocess.run(["/bin/sh", "-c", "true"], check=True), 50)
            rounds = 5
            for _ in range(rounds):
                base += timed(
                    lambda: subprocess.run(["/bin/sh", "-c", "true"], check=True), args.n // rounds
                )
                sync += timed(lambda: c.execute("true", kernel="bench"), args.n // rounds)
            results["subprocess.run(sh -c true)  [baseline]"] = percentiles(base)
            results["Client.execute('true')  (blocking)"] = percentiles(sync)

        async def run_async() -> tuple[list[float], float]:
            samples: list[float] = []
            async with AsyncClient(config, autostart=False) as ac:
                await ac.execute("true", kernel="bench")
                for _ in range(args.n):
                    t = time.perf_counter()
                    await ac.execute("true", kernel="bench")
                    samples.append((time.perf_counter() - t) * 1000)
                # Throughput: 8 kernels driven concurrently over one connection.
                for i in range(8):
                    await ac.execute("true", kernel=f"par{i}")
                t = time.perf_counter()
                total = 2000
                await asyncio.gather(
                    *(ac.execute("true", kernel=f"par{i % 8}") for i in range(total))
                )
                rate = total / (time.perf_counter() - t)
            return samples, rate

        samples, rate = asyncio.run(run_async())
        results["AsyncClient.execute('true')"] = percentiles(samples)
    finally:
        with Client(config, autostart=False) as c:
            c.shutdown_server()
        shutil.rmtree(runtime, ignore_errors=True)

    print(
        f"stigmer-kernel round trip of `true`, n={args.n}, {os.cpu_count()} cores, "
        f"Python {sys.version.split()[0]}"
    )
    print(f"{'what':44} {'p50 ms':>8} {'p99 ms':>8}")
    for name, (p50, p99) in results.items():
        print(f"{name:44} {p50:8.3f} {p99:8.3f}")
    baseline = results["subprocess.run(sh -c true)  [baseline]"][0]
    native = results["Client.execute('true')  (blocking)"][0]
    ratio = native / baseline
    print(f"throughput, 8 kernels in parallel over one AsyncClient: {rate:,.0f} commands/s")
    save_samples({"subprocess.run(sh -c true)": base, "Client.execute('true') local": sync})
    ok = target(
        f"local Client.execute('true') p50 {native:.3f} ms",
        f"subprocess.run sh -c true {baseline:.3f} ms",
        ratio,
        f"<= {TARGET_RATIO:g}x",
        ratio <= TARGET_RATIO,
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
