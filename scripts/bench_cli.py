"""`stigmer run -- true` as a whole process, against `docker exec CONTAINER true` (docker CLI).

    make bench            (or: python scripts/bench_cli.py --n 20)

Runs a private server in a temporary runtime directory (the CLI finds it through
STIGMER_RUNTIME_DIR) with a warm kernel, and a container of the offline test image, then times
both commands as whole processes, interleaved. Target: `stigmer run` p50 <= 0.5x docker exec p50.
Exit code 1 if the target is missed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile

from benchlib import (
    SAMPLES_ENV,
    idle_container,
    p50_p99,
    save_samples,
    target,
    timed,
    venv_bin,
)

from stigmer_kernel import Client, load_config
from stigmer_kernel.client.discovery import start_background_server

TARGET_RATIO = 0.5


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20, help="runs of each command")
    args = parser.parse_args()

    runtime = tempfile.mkdtemp(prefix="stg-bench-", dir="/tmp")
    config = load_config({"runtime_dir": runtime})
    start_background_server(config)
    # The run's environment as a user's: not this script's own STIGMER_BENCH_SAMPLES.
    env = {**os.environ, "STIGMER_RUNTIME_DIR": runtime}
    env.pop(SAMPLES_ENV, None)
    stigmer = [venv_bin("stigmer"), "run", "--", "true"]
    box = idle_container()
    docker = ["docker", "exec", box, "true"]
    cli: list[float] = []
    exec_ms: list[float] = []
    try:
        with Client(config, autostart=False) as c:
            c.execute("true", kernel="default")  # the kernel `stigmer run` uses, warm

            def run(argv: list[str]) -> None:
                # Neither gets a stdin to pass on (docker exec without -i passes none; stigmer
                # run would stream a pipe or file it was given, on its asyncio path).
                subprocess.run(
                    argv, env=env, check=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL
                )

            timed(lambda: run(stigmer), 2)
            timed(lambda: run(docker), 2)
            for _ in range(args.n):  # interleaved, so drift on a shared machine hits both
                cli += timed(lambda: run(stigmer), 1)
                exec_ms += timed(lambda: run(docker), 1)
            c.shutdown_server()
    finally:
        subprocess.run(["docker", "rm", "-f", box], capture_output=True, check=False)
        shutil.rmtree(runtime, ignore_errors=True)

    c50, c99 = p50_p99(cli)
    e50, e99 = p50_p99(exec_ms)
    print(f"whole-process wall time, n={args.n}, {os.cpu_count()} cores")
    print(f"{'what':44} {'p50 ms':>8} {'p99 ms':>8}")
    print(f"{'docker exec CONTAINER true  [baseline]':44} {e50:8.1f} {e99:8.1f}")
    print(f"{'stigmer run -- true (server running)':44} {c50:8.1f} {c99:8.1f}")
    save_samples({"docker exec true (CLI)": exec_ms, "stigmer run -- true": cli})
    ok = target(
        f"stigmer run -- true p50 {c50:.0f} ms",
        f"docker exec true {e50:.0f} ms",
        c50 / e50,
        f"<= {TARGET_RATIO:g}x",
        c50 / e50 <= TARGET_RATIO,
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
