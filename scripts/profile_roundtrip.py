"""Where a local round trip's time goes: the same `true` measured layer by layer, in one run.

    python scripts/profile_roundtrip.py [--n 2000]

Each line adds one layer to the one before, so the differences are the layers' costs:

1. ``subprocess.run(["/bin/sh", "-c", "true"])``: the baseline of the performance targets.
2. The floor: the same three processes as a real round trip (a client, a ROUTER-ROUTER relay
   and an agent writing the line to a warm bash and reading a marker back), each message
   msgpack-packed and HMAC-signed, every loop as lean as Python and pyzmq allow. This is what
   the architecture costs before any of stigmer's own work.
3. A signed ``execute_request`` sent on a bare blocking DEALER to a real server and agent:
   the server side (broker, agent, the session's wrapper and end report in bash).
4. ``Client.execute`` (blocking) and ``AsyncClient.execute``: what the client adds.

The agent's ``duration`` (from writing the line to bash to reading its end report) is printed
too. Each measurement alternates with the baseline, so drift on a shared machine hits both.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

import msgpack
import zmq
from benchlib import timed

from stigmer_kernel import AsyncClient, Client, load_config
from stigmer_kernel.client.discovery import find_server, start_background_server
from stigmer_kernel.protocol import Session

#: The floor's signing key, the same in its three processes.
KEY = bytes.fromhex(os.environ.setdefault("STIGMER_FLOOR_KEY", os.urandom(32).hex()))


def _sign(payload: bytes) -> bytes:
    return hmac.new(KEY, payload, hashlib.sha256).hexdigest().encode()


def floor_relay(where: str) -> None:
    """The floor's broker: a ROUTER for the client, one for the agent, a poll loop."""
    ctx = zmq.Context()
    front, back = ctx.socket(zmq.ROUTER), ctx.socket(zmq.ROUTER)
    front.bind(f"ipc://{where}/front")
    back.bind(f"ipc://{where}/back")
    poller = zmq.Poller()
    poller.register(front, zmq.POLLIN)
    poller.register(back, zmq.POLLIN)
    agent = client = b""
    while True:
        for sock, _ in poller.poll():
            frames = sock.recv_multipart()
            if sock is back and frames[1] == b"hello":
                agent = frames[0]
                continue
            if not hmac.compare_digest(frames[1], _sign(frames[2])):
                continue
            body = msgpack.packb(
                msgpack.unpackb(frames[2])
            )  # read and written again, as a broker does
            if sock is front:
                client = frames[0]
                back.send_multipart([agent, _sign(body), body])
            else:
                front.send_multipart([client, _sign(body), body])


def floor_agent(where: str) -> None:
    """The floor's agent: a warm bash reading lines from a pipe, a marker on another pipe."""
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.connect(f"ipc://{where}/back")
    sock.send_multipart([b"hello"])
    cmd_r, cmd_w = os.pipe()
    ctl_r, ctl_w = os.pipe()
    loop = f'while IFS= read -r line; do eval "$line"; printf "M%s\\n" $? >&{ctl_w}; done'
    subprocess.Popen(["bash", "--norc", "-c", loop], stdin=cmd_r, pass_fds=(ctl_w,))
    poller = zmq.Poller()
    poller.register(sock, zmq.POLLIN)
    poller.register(ctl_r, zmq.POLLIN)
    while True:
        for ready, _ in poller.poll():
            if ready is sock:
                frames = sock.recv_multipart()
                if hmac.compare_digest(frames[0], _sign(frames[1])):
                    os.write(cmd_w, msgpack.unpackb(frames[1])["code"].encode() + b"\n")
            else:
                os.read(ctl_r, 4096)
                body = msgpack.packb({"msg_type": "execute_reply", "status": "ok"})
                sock.send_multipart([_sign(body), body])


def baseline() -> None:
    subprocess.run(["/bin/sh", "-c", "true"], check=True)


def alternate(fn: Callable[[], object], n: int, base: list[float]) -> list[float]:
    """``n`` samples of ``fn`` in five rounds, each followed by baseline samples."""
    timed(fn, 100)
    samples: list[float] = []
    for _ in range(5):
        samples += timed(fn, n // 5)
        base += timed(baseline, n // 25)
    return samples


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000, help="round trips per layer")
    parser.add_argument("--role", choices=("relay", "agent"), help=argparse.SUPPRESS)
    parser.add_argument("--where", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role == "relay":
        floor_relay(args.where)
    if args.role == "agent":
        floor_agent(args.where)

    base: list[float] = []
    rows: dict[str, list[float]] = {}
    where = tempfile.mkdtemp(prefix="stg-floor-", dir="/tmp")
    me = [sys.executable, __file__, "--where", where, "--role"]
    relay = subprocess.Popen([*me, "relay"])
    agent = subprocess.Popen([*me, "agent"])
    ctx = zmq.Context()
    try:
        sock = ctx.socket(zmq.DEALER)
        sock.connect(f"ipc://{where}/front")
        body = msgpack.packb({"msg_type": "execute_request", "code": "true"})

        def floor() -> None:
            sock.send_multipart([_sign(body), body])
            sock.recv_multipart()

        sock.RCVTIMEO = 200  # the relay drops what comes before the agent said hello
        for _ in range(100):
            try:
                floor()
                break
            except zmq.Again:
                continue
        sock.RCVTIMEO = -1
        rows["2. floor: bare Python client, relay, agent, bash"] = alternate(floor, args.n, base)
        sock.close(linger=0)
    finally:
        relay.kill()
        agent.kill()
        relay.wait()
        agent.wait()
        shutil.rmtree(where, ignore_errors=True)

    runtime = tempfile.mkdtemp(prefix="stg-profile-", dir="/tmp")
    config = load_config({"runtime_dir": runtime})
    start_background_server(config)
    durations: list[float] = []
    try:
        with Client(config, autostart=False) as c:
            c.execute("true", kernel="profile")
            address = find_server(config, autostart=False)
            session = Session(address.key)
            bare = ctx.socket(zmq.DEALER)
            bare.connect(address.endpoint)

            def raw() -> None:
                request = session.msg("execute_request", {"code": "true", "kernel": "profile"})
                bare.send_multipart(session.serialize(request))
                while True:
                    _, reply = session.deserialize(bare.recv_multipart())
                    if reply.msg_type == "execute_reply":
                        durations.append(float(reply.content["duration"]) * 1000)
                        return

            rows["3. signed request on a bare DEALER, real server"] = alternate(raw, args.n, base)
            bare.close(linger=0)
            rows["4. Client.execute (blocking)"] = alternate(
                lambda: c.execute("true", kernel="profile"), args.n, base
            )

            async def run_async() -> list[float]:
                async with AsyncClient(config, autostart=False) as ac:
                    samples: list[float] = []
                    for _ in range(5):
                        for _ in range(args.n // 5):
                            start = time.perf_counter()
                            await ac.execute("true", kernel="profile")
                            samples.append((time.perf_counter() - start) * 1000)
                        base.extend(timed(baseline, args.n // 25))
                    return samples

            rows["4. AsyncClient.execute"] = asyncio.run(run_async())
            c.shutdown_server()
    finally:
        ctx.term()
        shutil.rmtree(runtime, ignore_errors=True)

    print(f"round trip of `true`, layer by layer, n={args.n}, {os.cpu_count()} cores")
    print(f"{'what':52} {'p50 ms':>8} {'p99 ms':>8} {'x base':>7}")
    base50 = statistics.median(base)
    ordered = sorted(base)
    print(
        f"{'1. subprocess.run(sh -c true)  [baseline]':52} {base50:8.3f} "
        f"{ordered[int(len(ordered) * 0.99)]:8.3f} {1.0:7.2f}"
    )
    for name, samples in rows.items():
        ordered = sorted(samples)
        p50 = statistics.median(ordered)
        print(f"{name:52} {p50:8.3f} {ordered[int(len(ordered) * 0.99)]:8.3f} {p50 / base50:7.2f}")
    print(
        f"the agent's own duration of the command (write to end report): "
        f"p50 {statistics.median(durations):.3f} ms"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
