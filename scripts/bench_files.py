"""Throughput of the file API: one big file up to a kernel and back, in MB/s.

    python scripts/bench_files.py --mb 500 [--mode sandbox --image stigmer-test-base:bookworm]

Runs a private server in a temporary runtime directory, so it never touches yours. Prints the
MB/s of ``Client.upload`` and ``Client.download`` (sha256 checked on both sides, atomic writes
included) and, as a baseline measured in the same run, of ``shutil.copyfile`` on this disk.
No target: it only reports.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import tempfile
import time

from stigmer_kernel import Client, load_config
from stigmer_kernel.client.discovery import start_background_server

MB = 1024 * 1024


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mb", type=int, default=200, help="size of the file (default 200)")
    parser.add_argument("--mode", choices=["local", "sandbox"], default="local")
    parser.add_argument("--image", help="sandbox image (sandbox mode)")
    args = parser.parse_args()
    runtime = tempfile.mkdtemp(prefix="stg-bench-", dir="/tmp")
    work = tempfile.mkdtemp(prefix="stg-bench-files-", dir="/tmp")
    os.chmod(work, 0o777)  # a sandbox's uid writes its /workspace here
    overrides = {"runtime_dir": runtime}
    if args.image:
        overrides["sandbox_image"] = args.image
    config = load_config(overrides)
    start_background_server(config)
    source, back = os.path.join(work, "source.bin"), os.path.join(work, "back.bin")
    digest = hashlib.sha256()
    with open(source, "wb") as handle:
        block = bytearray(os.urandom(MB))
        for n in range(args.mb):
            block[:8] = n.to_bytes(8, "big")
            handle.write(block)
            digest.update(block)
    try:
        started = time.perf_counter()
        shutil.copyfile(source, os.path.join(work, "baseline.bin"))
        baseline = args.mb / (time.perf_counter() - started)
        os.unlink(os.path.join(work, "baseline.bin"))
        with Client(config, autostart=False) as c:
            c.execute("true", kernel="bench", mode=args.mode, cwd=work)
            remote = "/workspace/up.bin" if args.mode == "sandbox" else f"{work}/up.bin"
            started = time.perf_counter()
            c.upload("bench", source, remote)
            up = args.mb / (time.perf_counter() - started)
            started = time.perf_counter()
            c.download("bench", remote, back)
            down = args.mb / (time.perf_counter() - started)
            with open(back, "rb") as handle:
                assert hashlib.file_digest(handle, "sha256").hexdigest() == digest.hexdigest()
            print(f"{args.mb} MB, {args.mode} kernel:")
            print(f"  upload    {up:7.0f} MB/s")
            print(f"  download  {down:7.0f} MB/s")
            print(f"  baseline  {baseline:7.0f} MB/s (shutil.copyfile on this disk)")
            c.shutdown_server()
    finally:
        shutil.rmtree(runtime, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
