"""What an agent runner does with a dev server, in a sandbox kernel: start it as a background
process, wait until it listens, fetch a page from it with a foreground command in the same
kernel, read its access log from an offset, write and read back a file through the file API,
then stop the server and get its exit status.

    python examples/dev_server_agent.py                 (sandbox mode: needs Docker)
    python examples/dev_server_agent.py --mode local    (on this host)

The kernel's workspace is the directory you run it from (mounted at /workspace in the sandbox).
"""

from __future__ import annotations

import argparse
import time

from stigmer_kernel import Client
from stigmer_kernel.client import Process

KERNEL = "dev-server-example"
PORT = 8765


def wait_for(
    process: Process, text: bytes, stream: str, since: int = 0, timeout: float = 30.0
) -> int:
    """Read ``stream`` from ``since`` until ``text`` appears; the offset just after it."""
    seen = b""
    deadline = time.monotonic() + timeout
    while text not in seen:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"no {text!r} on the server's {stream} in {timeout:g}s")
        chunk = process.output(since, stream, wait=min(left, 5.0))
        if not chunk.running and not chunk.data:
            raise RuntimeError(f"the server exited ({chunk.exit_code}) before {text!r}")
        seen += chunk.data
        since = chunk.next
    return since


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", default="sandbox", choices=("sandbox", "local", "auto"))
    mode = parser.parse_args().mode
    with Client() as c:
        # A page to serve, written through the file API (no shell quoting involved).
        c.make_dir(KERNEL, "site", parents=True, mode=mode)
        c.write_file(KERNEL, "site/index.html", b"<h1>hello from the kernel</h1>\n", mode=mode)
        server = c.start(
            f"cd site && exec python3 -u -m http.server {PORT} --bind 127.0.0.1",
            kernel=KERNEL,
            mode=mode,
        )
        print(f"started the server as process {server.id}")
        wait_for(server, b"Serving HTTP", "stdout")  # it says so once it listens
        log_offset = server.output(0, "stderr").next  # its access log, from here on

        # A foreground command in the same kernel (the same sandbox) reaches it.
        fetch = c.execute(
            "python3 -c 'import urllib.request as u; "
            f'print(u.urlopen("http://127.0.0.1:{PORT}/").read().decode(), end="")\'',
            kernel=KERNEL,
            timeout=30,
        )
        print(f"fetched: {fetch.stdout.strip()}  (exit {fetch.exit_code})")

        # The access log line of that request, read from the offset taken before it.
        wait_for(server, b"GET / ", "stderr", since=log_offset)
        line = server.output(log_offset, "stderr").data.decode().strip()
        print(f"access log: {line}")

        # A file written through the file API, read back.
        c.write_file(KERNEL, "notes.txt", b"the server answered\n", mode=mode)
        print(f"read back: {c.read_file(KERNEL, 'notes.txt', mode=mode).decode().strip()}")

        server.kill()
        print(f"server exit status: {server.wait(timeout=30)}")
        c.shutdown_kernel(KERNEL)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
