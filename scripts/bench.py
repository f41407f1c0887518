"""Every benchmark, then one table of their targets and a plot of their latency distributions.

    make bench            (or: python scripts/bench.py [--plot docs/performance.png])

Runs scripts/bench_roundtrip.py, bench_jupyter.py, bench_sandbox.py, bench_cli.py,
bench_stream.py and load.py --bench one after another (each measures its own baseline in the
same run), whatever the earlier ones found, prints what each printed, then one table of every
target (figure, baseline, ratio, target, met/missed) gathered from their ``BENCH {json}`` lines,
and writes a PNG of the latency samples they saved (CDFs, log scale). Exit code 1 if a target was
missed or a benchmark failed, after all of them ran.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchlib import RESULT_PREFIX, SAMPLES_ENV

HERE = Path(__file__).resolve().parent
BENCHMARKS = (
    ["bench_roundtrip.py"],
    ["bench_jupyter.py"],
    ["bench_sandbox.py"],
    ["bench_cli.py"],
    ["bench_stream.py"],
    ["load.py", "--bench"],
)


def run_all(samples_dir: str) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    env = {**os.environ, SAMPLES_ENV: samples_dir}
    for argv in BENCHMARKS:
        name = argv[0]
        print(f"== {' '.join(argv)}", flush=True)
        t = time.monotonic()
        run = subprocess.run(
            [sys.executable, str(HERE / name), *argv[1:]],
            stdout=subprocess.PIPE,
            text=True,
            env=env,
            check=False,
        )
        found = []
        for line in run.stdout.splitlines():
            if line.startswith(RESULT_PREFIX):
                found.append({"benchmark": name, **json.loads(line[len(RESULT_PREFIX) :])})
            else:
                print(line)
        print(f"({time.monotonic() - t:.0f} s)", flush=True)
        rows += found
        if run.returncode not in (0, 1) or not found:
            rows.append(
                {
                    "benchmark": name,
                    "figure": f"{name} failed (exit code {run.returncode})",
                    "baseline": "-",
                    "ratio": None,
                    "target": "runs",
                    "met": False,
                }
            )
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    """The targets as a Markdown table (readable as is in a terminal)."""
    lines = [
        "| figure | baseline | ratio | target | met/missed |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        ratio = "-" if r["ratio"] is None else f"{r['ratio']:.2f}"
        verdict = "met" if r["met"] else "MISSED"
        lines.append(f"| {r['figure']} | {r['baseline']} | {ratio} | {r['target']} | {verdict} |")
    return "\n".join(lines)


def plot(samples_dir: str, out: Path) -> None:
    """CDFs of every latency sample set the benchmarks saved, on one log-scale axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series: dict[str, list[float]] = {}
    for path in sorted(Path(samples_dir).glob("*.json")):
        series.update(json.loads(path.read_text()))
    if not series:
        print("no samples to plot", file=sys.stderr)
        return
    fig, ax = plt.subplots(figsize=(10, 6))
    for label, values in series.items():
        ordered = sorted(values)
        if not ordered:
            continue
        ys = [(i + 1) / len(ordered) for i in range(len(ordered))]
        ax.step(ordered, ys, where="post", label=f"{label} (n={len(ordered)})")
    ax.set_xscale("log")
    ax.set_xlabel("latency, ms (log scale)")
    ax.set_ylabel("fraction of samples <= x")
    ax.set_title(f"stigmer-kernel latency distributions ({os.cpu_count()} cores)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize="small", loc="lower right")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    print(f"plot: {out}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--plot",
        type=Path,
        default=HERE.parent / "docs" / "performance.png",
        help="where to write the PNG (default: docs/performance.png)",
    )
    args = parser.parse_args()
    samples_dir = tempfile.mkdtemp(prefix="stg-bench-samples-", dir="/tmp")
    start = time.monotonic()
    try:
        rows = run_all(samples_dir)
        print(f"\nall benchmarks: {time.monotonic() - start:.0f} s\n")
        print(table(rows))
        plot(samples_dir, args.plot)
    finally:
        shutil.rmtree(samples_dir, ignore_errors=True)
    return 0 if all(r["met"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
