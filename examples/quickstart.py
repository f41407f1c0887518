"""A tour of stigmer-kernel in local mode: `make run` runs this.

It needs nothing but Python: the client starts a stigmer server in the background if none runs
(stop it with `stigmer server stop`).
"""

from __future__ import annotations

import sys
import time

from stigmer_kernel import Client


def show(title: str) -> None:
    print(f"\n== {title}")


def main() -> int:
    with Client() as c:
        info = c.server_info()
        print(f"stigmer server {info['version']} (pid {info['pid']}) in {info['runtime_dir']}")

        show("a warm, stateful shell: cwd, variables and functions persist")
        c.execute('cd /tmp && export GREETING=hello && shout() { echo "$1!"; }', kernel="demo")
        r = c.execute('pwd; shout "$GREETING"', kernel="demo")
        print(r.stdout, end="")

        show("stdout and stderr stay separate; the exit code comes back")
        r = c.execute("echo to-stdout; echo to-stderr >&2; exit 3", kernel="demo")
        print(f"stdout={r.stdout!r} stderr={r.stderr!r} exit_code={r.exit_code}")

        show("output streams as it is written")
        start = time.monotonic()
        c.execute(
            "for i in 1 2 3; do echo tick $i; sleep 0.3; done",
            kernel="demo",
            on_stdout=lambda text: print(f"  +{time.monotonic() - start:.1f}s {text}", end=""),
        )

        show("a timeout ends the command and everything it started; the session lives on")
        r = c.execute("echo working; sleep 30", kernel="demo", timeout=1)
        print(f"status={r.status} exit_code={r.exit_code} stdout={r.stdout!r}")
        print(c.execute("echo still $GREETING in $PWD", kernel="demo").stdout, end="")

        show("warm kernels make commands cheap")
        c.execute("true", kernel="demo")
        n = 200
        start = time.perf_counter()
        for _ in range(n):
            c.execute("true", kernel="demo")
        per = (time.perf_counter() - start) / n * 1000
        print(f"{n} round trips of `true`: {per:.2f} ms each")

        show("kernels")
        for k in c.list_kernels():
            print(f"  {k['name']}: {k['mode']} {k['state']}, pid {k['pid']}, cwd {k['cwd']}")
        c.shutdown_kernel("demo")
    print("\nTry the CLI next:  .venv/bin/stigmer run -- echo hi   (see README.md)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
