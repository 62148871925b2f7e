"""Benchmark: render the report of a study of 1,000 synthetic trials read from SQLite.

Target (issue 3): under 10 seconds and under 10 MB on a 2-core CPU. Timed end to end as
``autotransfer report`` does it: load the study from its storage, collect the evidence, draw
the figures, render and write the file atomically. Run by hand::

    python -m benchmarks.report_render [--trials 1000] [--repeats 3]

and record the printed table in ``benchmarks/README.md`` with the machine.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import optuna

from autotransfer import load_existing_study, write_report
from benchmarks.synthetic_study import make_synthetic_study


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{Path(tmp) / 'study.db'}"
        start = time.perf_counter()
        make_synthetic_study(args.trials, storage=url, study_name="synthetic")
        setup = time.perf_counter() - start
        seconds = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            path = write_report(load_existing_study(url, "synthetic"), Path(tmp) / "report.html")
            seconds.append(time.perf_counter() - start)
        size = path.stat().st_size
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
          f"Optuna {optuna.__version__}; study written to SQLite in {setup:.1f} s")
    print(f"| trials | render, median of {args.repeats} (s) | min (s) | max (s) | report size (MB) |")
    print("|---:|---:|---:|---:|---:|")
    print(f"| {args.trials} | {statistics.median(seconds):.2f} | {min(seconds):.2f} | {max(seconds):.2f} "
          f"| {size / 1e6:.2f} |")


if __name__ == "__main__":
    main()
