"""Several clients on one warm kernel, and many clients at once."""

from __future__ import annotations

import asyncio
import threading

from stigmer_kernel import AsyncClient, Client
from tests.conftest import Server


def test_two_clients_share_one_kernel(server: Server) -> None:
    a, b = server.client(), server.client()
    a.execute("cd /etc; shared=from-a", kernel="team")
    r = b.execute("pwd; echo $shared", kernel="team")
    assert r.stdout == "/etc\nfrom-a\n"
    (info,) = [k for k in a.list_kernels() if k["name"] == "team"]
    assert info["clients"] == 2
    assert info["executions"] == 2


def test_twenty_clients_fifty_commands_each(server: Server) -> None:
    clients = [server.client() for _ in range(20)]
    errors: list[str] = []

    def work(index: int, c: Client) -> None:
        for i in range(50):
            token = f"c{index}-n{i}"
            r = c.execute(f"echo {token}; echo {token} >&2", kernel=f"k{index % 5}")
            if (r.stdout, r.stderr, r.exit_code) != (f"{token}\n", f"{token}\n", 0):
                errors.append(f"{token}: {r!r} {r.stdout!r}")

    threads = [threading.Thread(target=work, args=(i, c)) for i, c in enumerate(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert errors == []
    kernels = {k["name"]: k for k in clients[0].list_kernels()}
    assert sum(kernels[f"k{i}"]["executions"] for i in range(5)) == 1000


def test_one_client_many_tasks(server: Server) -> None:
    async def main() -> list[tuple[str, str]]:
        async with AsyncClient(server.config, autostart=False) as c:
            results = await asyncio.gather(
                *(c.execute(f"echo t{i}", kernel=f"a{i % 4}") for i in range(200))
            )
        return [(f"t{i}\n", r.stdout) for i, r in enumerate(results)]

    for expected, got in asyncio.run(main()):
        assert expected == got


def test_one_client_many_threads(server: Server) -> None:
    c = server.client()
    out: dict[int, str] = {}

    def work(i: int) -> None:
        out[i] = c.execute(f"echo th{i}", kernel="threads").stdout

    threads = [threading.Thread(target=work, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert out == {i: f"th{i}\n" for i in range(16)}
