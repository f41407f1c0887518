"""Streaming 100 MB of stdout: the Python client and `stigmer run` to a file, against docker exec.

    make bench            (or: python scripts/bench_stream.py --mb 100 --runs 3)

Runs a private server in a temporary runtime directory and a container of the offline test image
holding a file of the same size. Times, best of --runs each: `docker exec CONTAINER cat FILE >
file` (the baseline), `Client.execute` of a command writing that much (counted by an on_output
callback, nothing kept), and `stigmer run -- ... > file`. Prints the broker's and the agent's
peak RSS (VmHWM) after the streams, so the memory bound is visible. Targets: both >= 3x the
docker exec throughput. Exit code 1 if a target is missed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchlib import idle_container, target, venv_bin

from stigmer_kernel import Client, load_config
from stigmer_kernel.client.discovery import start_background_server

TARGET_RATIO = 3.0


def vm_hwm_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def best_seconds(fn: object, runs: int) -> float:
    assert callable(fn)
    best = float("inf")
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=100, help="megabytes (10^6 bytes) per stream")
    parser.add_argument("--runs", type=int, default=3, help="runs of each, the best counts")
    args = parser.parse_args()
    size = args.mb * 1_000_000
    # Printable bytes, as a build log would be (no NULs for the text decoders).
    produce = f"yes 0123456789abcdefghijklmnopqrstuvwxyz 2>/dev/null | head -c {size}"

    runtime = tempfile.mkdtemp(prefix="stg-bench-", dir="/tmp")
    out_dir = tempfile.mkdtemp(prefix="stg-bench-out-", dir="/tmp")
    sink = Path(out_dir) / "out"
    config = load_config({"runtime_dir": runtime})
    address = start_background_server(config)
    env = {**os.environ, "STIGMER_RUNTIME_DIR": runtime}
    box = idle_container()
    try:
        subprocess.run(["docker", "exec", box, "sh", "-c", f"{produce} > /tmp/big"], check=True)

        def docker_cat() -> None:
            with sink.open("wb") as f:
                subprocess.run(["docker", "exec", box, "cat", "/tmp/big"], stdout=f, check=True)
            assert sink.stat().st_size == size

        def cli_run() -> None:
            with sink.open("wb") as f:
                subprocess.run(
                    [venv_bin("stigmer"), "run", "-k", "stream", "--", produce],
                    stdout=f,
                    env=env,
                    check=True,
                )
            assert sink.stat().st_size == size, sink.stat().st_size

        with Client(config, autostart=False) as c:
            c.execute("true", kernel="stream")
            received = [0]

            def count(stream: str, data: bytes) -> None:
                if stream == "stdout":
                    received[0] += len(data)

            def client_run() -> None:
                received[0] = 0
                r = c.execute(produce, kernel="stream", on_output=count, output_limit=0)
                assert r.exit_code == 0 and received[0] == size, (r.status, received[0])

            docker_s = best_seconds(docker_cat, args.runs)
            client_s = best_seconds(client_run, args.runs)
            cli_s = best_seconds(cli_run, args.runs)
            agents = [k["pid"] for k in c.list_kernels() if k["name"] == "stream" and k.get("pid")]
            broker_hwm = vm_hwm_kb(address.pid)
            agent_hwm = max((vm_hwm_kb(p) for p in agents), default=0)
            c.shutdown_server()
    finally:
        subprocess.run(["docker", "rm", "-f", box], capture_output=True, check=False)
        shutil.rmtree(runtime, ignore_errors=True)
        shutil.rmtree(out_dir, ignore_errors=True)

    rates = {name: args.mb / s for name, s in (("docker", docker_s), ("client", client_s))}
    rates["cli"] = args.mb / cli_s
    print(f"streaming {args.mb} MB of stdout, best of {args.runs}, {os.cpu_count()} cores")
    print(f"{'what':44} {'s':>8} {'MB/s':>8}")
    print(f"{'docker exec CONTAINER cat FILE > file':44} {docker_s:8.2f} {rates['docker']:8.0f}")
    print(f"{'Client.execute, on_output counts':44} {client_s:8.2f} {rates['client']:8.0f}")
    print(f"{'stigmer run -- ... > file':44} {cli_s:8.2f} {rates['cli']:8.0f}")
    print(
        f"peak RSS (VmHWM) after the streams: broker {broker_hwm / 1024:.0f} MB, "
        f"agent {agent_hwm / 1024:.0f} MB (stream size {args.mb} MB)"
    )
    base = f"docker exec cat {rates['docker']:.0f} MB/s"
    ok = [
        target(
            f"stream {args.mb} MB, Python client {rates['client']:.0f} MB/s",
            base,
            rates["client"] / rates["docker"],
            f">= {TARGET_RATIO:g}x",
            rates["client"] / rates["docker"] >= TARGET_RATIO,
        ),
        target(
            f"stream {args.mb} MB, stigmer run to a file {rates['cli']:.0f} MB/s",
            base,
            rates["cli"] / rates["docker"],
            f">= {TARGET_RATIO:g}x",
            rates["cli"] / rates["docker"] >= TARGET_RATIO,
        ),
    ]
    return 0 if all(ok) else 1


if __name__ == "__main__":
    sys.exit(main())
