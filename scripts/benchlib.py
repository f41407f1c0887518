"""What every benchmark script shares: percentiles, timing, and its machine-readable results.

Each target is printed twice: as prose ending ``: met`` / ``: MISSED`` for people, and as one line
``BENCH {json}`` (figure, baseline, ratio, target, met) that scripts/bench.py gathers into one
table. Samples for the plot go to ``$STIGMER_BENCH_SAMPLES/<script>.json`` when that is set.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

#: Directory scripts/bench.py passes to every benchmark for its latency samples (ms).
SAMPLES_ENV = "STIGMER_BENCH_SAMPLES"
#: Prefix of the machine-readable result lines.
RESULT_PREFIX = "BENCH "
#: The image of the baseline containers (``docker exec``) and of the sandbox kernels.
IMAGE = os.environ.get("STIGMER_SANDBOX_IMAGE", "stigmer-test-base:bookworm")


def p50_p99(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return statistics.median(ordered), ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


def timed(fn: Callable[[], object], n: int) -> list[float]:
    """Run ``fn`` ``n`` times; each call's wall time in ms."""
    out = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t) * 1000)
    return out


def target(figure: str, baseline: str, ratio: float | None, goal: str, met: bool) -> bool:
    """Print one target as prose and as a ``BENCH`` line; return ``met``."""
    verdict = "met" if met else "MISSED"
    shown = f", ratio {ratio:.2f}" if ratio is not None else ""
    print(f"{figure} (baseline {baseline}{shown}; target {goal}): {verdict}")
    result = {"figure": figure, "baseline": baseline, "ratio": ratio, "target": goal, "met": met}
    print(RESULT_PREFIX + json.dumps(result), flush=True)
    return met


def save_samples(samples: dict[str, list[float]]) -> None:
    """Write latency samples (ms, by label) for bench.py's plot, if it asked for them."""
    folder = os.environ.get(SAMPLES_ENV)
    if folder:
        name = Path(sys.argv[0]).stem
        (Path(folder) / f"{name}.json").write_text(json.dumps(samples))


def venv_bin(name: str) -> str:
    """An entry point installed next to this interpreter (the venv's bin)."""
    return str(Path(sys.executable).parent / name)


def idle_container() -> str:
    """Start a container of :data:`IMAGE` that sleeps (for ``docker exec`` baselines); its id.
    The caller removes it (``docker rm -f``)."""
    return subprocess.run(
        ["docker", "run", "-d", "--init", IMAGE, "sleep", "infinity"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
