"""How an agent runner uses the asyncio client: several agents, each with its own kernel,
running commands concurrently over one connection."""

from __future__ import annotations

import asyncio

from stigmer_kernel import AsyncClient


async def agent(client: AsyncClient, name: str, commands: list[str]) -> None:
    for command in commands:
        r = await client.execute(command, kernel=f"agent-{name}", timeout=60)
        first = (r.stdout or r.stderr).strip().splitlines()[:1]
        print(f"[{name}] $ {command}  -> exit {r.exit_code} in {r.duration * 1000:.1f} ms {first}")


async def main() -> None:
    async with AsyncClient() as client:
        await asyncio.gather(
            agent(
                client,
                "alpha",
                [
                    'cd "$(mktemp -d)"',  # a directory of its own, removed at the end
                    "pwd",
                    "git --version",
                    'cd / && rmdir "$OLDPWD"',
                ],
            ),
            agent(client, "beta", ["export N=41", "echo $((N + 1))", "python3 --version"]),
            agent(client, "gamma", ["ls /nonexistent", "echo recovered"]),
        )
        for name in ("alpha", "beta", "gamma"):
            await client.shutdown_kernel(f"agent-{name}")


if __name__ == "__main__":
    asyncio.run(main())
