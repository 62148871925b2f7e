"""optuna-dashboard on the 1,000-trial synthetic study: start-up and the time to serve the study's trials.

Stores ``benchmarks/synthetic_study.py``'s study (1,000 trials, user attributes and val predictions as a
search stores them) in SQLite, starts ``optuna-dashboard`` on loopback, and times ``GET /api/studies``
and ``GET /api/studies/<id>`` (every trial with its parameters, intermediate values and user attributes:
what the dashboard's trial table loads), the first request and the median of ``--repeats`` more.

    python -m benchmarks.dashboard                # needs the dashboard extra
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from .synthetic_study import make_synthetic_study


def _get(url: str) -> tuple[Any, float, int]:
    tick = time.perf_counter()
    with urllib.request.urlopen(url, timeout=120) as answer:
        body = answer.read()
    return json.loads(body), time.perf_counter() - tick, len(body)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    executable = shutil.which("optuna-dashboard")
    if executable is None:
        raise SystemExit("optuna-dashboard is not installed: pip install 'autotransfer[dashboard]'")
    with tempfile.TemporaryDirectory() as folder:
        storage = f"sqlite:///{Path(folder) / 'study.db'}"
        make_synthetic_study(args.trials, storage=storage)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        tick = time.perf_counter()
        process = subprocess.Popen([executable, storage, "--host", "127.0.0.1", "--port", str(port), "--quiet"],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        base = f"http://127.0.0.1:{port}"
        try:
            while True:
                try:
                    studies, _, _ = _get(f"{base}/api/studies")
                    break
                except OSError:
                    time.sleep(0.1)
            started = time.perf_counter() - tick
            study_id = studies["study_summaries"][0]["study_id"]
            detail, first, size = _get(f"{base}/api/studies/{study_id}")
            again = [_get(f"{base}/api/studies/{study_id}")[1] for _ in range(args.repeats)]
        finally:
            process.terminate()
            process.wait(timeout=10)
    print("| trials | start-up to first answer (s) | first GET study (s) | median of next "
          f"{args.repeats} (s) | response (MB) |")
    print("|---:|---:|---:|---:|---:|")
    print(f"| {len(detail['trials'])} | {started:.2f} | {first:.2f} | {statistics.median(again):.2f} | "
          f"{size / 1e6:.1f} |")


if __name__ == "__main__":
    main()
