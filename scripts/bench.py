"""Every benchmark, then one table of their targets.

    make bench            (or: python scripts/bench.py)

Runs scripts/bench_roundtrip.py, bench_jupyter.py and bench_sandbox.py one after another (each
measures its own baseline in the same run), whatever the earlier ones found, prints what each
printed, then a table of every target line (``...: met`` / ``...: MISSED``). Exit code 1 if a
target was missed or a benchmark failed, after all of them ran.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHMARKS = ("bench_roundtrip.py", "bench_jupyter.py", "bench_sandbox.py")


def main() -> int:
    rows: list[tuple[str, str, str]] = []
    failed = False
    for name in BENCHMARKS:
        print(f"== {name}", flush=True)
        run = subprocess.run(
            [sys.executable, str(HERE / name)],
            stdout=subprocess.PIPE,
            text=True,
            check=False,
        )
        print(run.stdout, end="", flush=True)
        targets = [line for line in run.stdout.splitlines() if line.endswith((": met", ": MISSED"))]
        for line in targets:
            what, _, verdict = line.rpartition(": ")
            rows.append((name, what, verdict))
        if run.returncode not in (0, 1) or not targets:
            failed = True
            rows.append((name, f"the benchmark failed (exit code {run.returncode})", "FAILED"))
    width = max(len(what) for _, what, _ in rows)
    print(f"\n{'benchmark':20} {'target':{width}} result")
    for name, what, verdict in rows:
        print(f"{name:20} {what:{width}} {verdict}")
    missed = any(verdict != "met" for _, _, verdict in rows)
    return 1 if missed or failed else 0


if __name__ == "__main__":
    sys.exit(main())
