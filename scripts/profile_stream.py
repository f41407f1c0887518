"""The floor under bench_stream.py: how fast 100 MB can cross the same processes with nothing of
stigmer in them.

    python scripts/profile_stream.py [--mb 100] [--runs 3]

Each row is the best of --runs, in one run, against `docker exec CONTAINER cat FILE > file` (the
streaming benchmark's baseline):
1. the producer alone (the benchmark's `yes | head -c`) read by one Python process from its pipe
   in 1 MiB reads: the pipe's speed here;
2. the floor: that reader sends each chunk as one raw ZeroMQ frame (no signature, no header) to
   a ROUTER-ROUTER relay process, which forwards it to a client process that counts the bytes:
   the agent, broker and client of a real stream, with none of their work;
3. the same with one SHA-256 pass over each chunk at the sender and one at the receiver, as a
   signed chunk costs the agent and the client.
Prints what the benchmark's target (>= 3x docker exec) asks of this machine next to them.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

import zmq
from benchlib import idle_container

CHUNK = 1024 * 1024
TEXT = "0123456789abcdefghijklmnopqrstuvwxyz"
END = b""


def producer(size: int) -> subprocess.Popen[bytes]:
    """The benchmark's `yes | head -c`, or with STIGMER_FLOOR_FILE `cat` of that file (what
    docker exec runs in the baseline)."""
    path = os.environ.get("STIGMER_FLOOR_FILE")
    command = f"cat {path}" if path else f"yes {TEXT} 2>/dev/null | head -c {size}"
    return subprocess.Popen(["sh", "-c", command], stdout=subprocess.PIPE)


def relay(where: str) -> None:
    ctx = zmq.Context()
    front, back = ctx.socket(zmq.ROUTER), ctx.socket(zmq.ROUTER)
    front.setsockopt(zmq.ROUTER_MANDATORY, 1)  # a full queue blocks the relay, drops nothing
    front.bind(f"ipc://{where}/front")
    back.bind(f"ipc://{where}/back")
    client = front.recv_multipart()[0]  # its hello
    while True:
        frames = back.recv_multipart(copy=False)
        front.send_multipart([client, frames[1]], copy=False)


def sender(where: str, size: int, hashed: bool) -> None:
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.connect(f"ipc://{where}/back")
    proc = producer(size)
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    while chunk := os.read(fd, CHUNK):
        if hashed:
            hashlib.sha256(chunk).digest()
        sock.send(chunk)
    sock.send(END)
    proc.wait()
    sock.close(linger=-1)


def pipe_alone(size: int) -> float:
    proc = producer(size)
    assert proc.stdout is not None
    fd, got = proc.stdout.fileno(), 0
    t = time.perf_counter()
    while chunk := os.read(fd, CHUNK):
        got += len(chunk)
    elapsed = time.perf_counter() - t
    proc.wait()
    assert got == size, (got, size)
    return elapsed


def relayed(size: int, hashed: bool) -> float:
    """Seconds from the first chunk the client gets to the last (start-up left out)."""
    where = tempfile.mkdtemp(prefix="stg-sfloor-", dir="/tmp")
    me = [sys.executable, __file__, "--where", where, "--bytes", str(size), "--role"]
    procs = [subprocess.Popen([*me, "relay"])]
    ctx = zmq.Context()
    try:
        sock = ctx.socket(zmq.DEALER)
        sock.connect(f"ipc://{where}/front")
        sock.send(b"hello")  # the relay forwards to whoever said hello
        procs.append(subprocess.Popen([*me, "hashed" if hashed else "sender"]))
        got, t = 0, 0.0
        while True:
            frame = sock.recv(copy=False)
            if not t:
                t = time.perf_counter()
            if len(frame) == 0:
                break
            if hashed:
                hashlib.sha256(frame.buffer).digest()
            got += len(frame)
        elapsed = time.perf_counter() - t
        assert got == size, (got, size)
        return elapsed
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
        ctx.destroy(linger=0)
        shutil.rmtree(where, ignore_errors=True)


def docker_cat(size: int) -> float:
    box = idle_container()
    out = tempfile.mkdtemp(prefix="stg-sfloor-out-", dir="/tmp")
    try:
        subprocess.run(
            ["docker", "exec", box, "sh", "-c", f"head -c {size} /dev/zero > /tmp/f"], check=True
        )
        with open(f"{out}/f", "wb") as sink:
            t = time.perf_counter()
            subprocess.run(["docker", "exec", box, "cat", "/tmp/f"], stdout=sink, check=True)
            return time.perf_counter() - t
    finally:
        subprocess.run(["docker", "rm", "-f", box], capture_output=True, check=False)
        shutil.rmtree(out, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=100)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--role", choices=("relay", "sender", "hashed"), help=argparse.SUPPRESS)
    parser.add_argument("--where", help=argparse.SUPPRESS)
    parser.add_argument("--bytes", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role == "relay":
        relay(args.where)
        return 0
    if args.role in ("sender", "hashed"):
        sender(args.where, args.bytes, args.role == "hashed")
        return 0
    size = args.mb * 1_000_000
    work = tempfile.mkdtemp(prefix="stg-sfloor-file-", dir="/tmp")
    try:
        with open(f"{work}/f", "wb") as out:
            out.write((TEXT * (size // len(TEXT) + 1)).encode()[:size])
        rows = measure(size, args.runs, f"{work}/f")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    base = size / rows["docker exec cat > file  [baseline]"] / 1e6
    print(f"streaming {args.mb} MB, best of {args.runs}, {os.cpu_count()} cores")
    print(f"{'what':52} {'MB/s':>8} {'x base':>7}")
    for name, seconds in rows.items():
        rate = size / seconds / 1e6
        print(f"{name:52} {rate:8.0f} {rate / base:7.2f}")
    print(f"the target (>= 3x the baseline) asks for {3 * base:.0f} MB/s")
    return 0


def measure(size: int, runs: int, path: str) -> dict[str, float]:
    def best(fn: Callable[[], float], file: bool = False) -> float:
        if file:
            os.environ["STIGMER_FLOOR_FILE"] = path
        try:
            return min(fn() for _ in range(runs))
        finally:
            os.environ.pop("STIGMER_FLOOR_FILE", None)

    return {
        "docker exec cat > file  [baseline]": best(lambda: docker_cat(size)),
        "1. the producer's pipe (yes | head), read by Python": best(lambda: pipe_alone(size)),
        "1b. the same, `cat FILE` as producer": best(lambda: pipe_alone(size), file=True),
        "2. floor: sender, relay, client (raw frames)": best(lambda: relayed(size, False)),
        "2b. the same, `cat FILE` as producer": best(lambda: relayed(size, False), file=True),
        "3. floor with a SHA-256 pass at each end": best(lambda: relayed(size, True)),
    }


if __name__ == "__main__":
    sys.exit(main())
