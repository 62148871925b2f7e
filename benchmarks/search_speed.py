"""Benchmark: the small-space hymenoptera search (12 trials, 3 epochs), before and after a change.

Runs the same command, with the same seeds, on this working tree and on an earlier revision (a
``git worktree`` of ``--before``), one run at a time, and prints wall-clock, peak resident memory
of the search process (``os.wait4``'s ``ru_maxrss``) and the best val accuracy of each::

    autotransfer search HYMENOPTERA --zoo ZOO --space search_spaces/small.yaml --n-trials 12 \\
        --epochs 3 --seed S --out TMP

TPE's path depends on every trial's value, so a change that moves values slightly also changes
which strategies later trials try; several seeds show the spread. ``--replay CSV`` removes that
noise: both trees run the same fixed strategies (enqueued in the study before the command starts,
``--no-baseline --pruner none``), so the same work is timed. Run by hand::

    python -m benchmarks.search_speed --before 3c0ffee [--seeds 0,1]
    python -m benchmarks.search_speed --before 3c0ffee --replay benchmarks/replay_small_12.csv
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"


def _enqueue(out: str, replay: Path) -> list[str]:
    """Create the study ``replay`` in ``OUT/study.db`` holding the strategies of ``replay`` as waiting trials."""
    with open(replay, newline="") as f:
        strategies = [{"backbone": r["backbone"], "freeze_depth": float(r["freeze_depth"]),
                       "head_width": int(r["head_width"]), "learning_rate": float(r["learning_rate"])}
                      for r in csv.DictReader(f)]
    study = optuna.create_study(storage=f"sqlite:///{Path(out) / 'study.db'}", study_name="replay",
                                direction="maximize")
    for params in strategies:
        study.enqueue_trial(params, skip_if_exists=False)
    return ["--n-trials", str(len(strategies)), "--study-name", "replay", "--no-baseline", "--pruner", "none"]


def run(tree: Path, seed: int, data: str, zoo: str, replay: Path | None = None) -> tuple[float, float, float]:
    """(seconds, peak RSS in GB, best val accuracy) of one search run from source tree ``tree``."""
    with tempfile.TemporaryDirectory() as out:
        extra = _enqueue(out, replay) if replay is not None else ["--n-trials", "12"]
        command = [sys.executable, "-m", "autotransfer", "search", data, "--zoo", zoo, "--space",
                   str(ROOT / "search_spaces" / "small.yaml"), "--epochs", "3", "--seed", str(seed), "--out", out,
                   *extra]
        env = {**os.environ, "PYTHONPATH": str(tree)}
        start = time.perf_counter()
        child = subprocess.Popen(command, cwd=tree, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        _, status, usage = os.wait4(child.pid, 0)
        seconds = time.perf_counter() - start
        if status != 0:
            raise SystemExit(f"{tree}: the search failed: {child.stderr.read().decode() if child.stderr else ''}")
        with open(Path(out) / "leaderboard.csv", newline="") as f:
            best = max(float(row["value"]) for row in csv.DictReader(f) if row["state"] == "COMPLETE")
        return seconds, usage.ru_maxrss / 2**20, best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", required=True, help="git revision to compare with (the commit before a change)")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--replay", type=Path, help="CSV of strategies to run in both trees instead of sampling")
    parser.add_argument("--data", default=str(SHARED / "datasets" / "hymenoptera_data"))
    parser.add_argument("--zoo", default=str(SHARED / "weights" / "zoo.yaml"))
    args = parser.parse_args()
    print(f"{platform.machine()} cores={os.cpu_count()} python {platform.python_version()}")
    print("| seed | code | wall-clock (s) | peak RSS (GB) | best val accuracy |\n|---:|---|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        worktree = Path(tmp) / "before"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(worktree), args.before],
                       check=True, capture_output=True)
        try:
            for seed in (int(s) for s in args.seeds.split(",")):
                for label, tree in ((f"before ({args.before})", worktree), ("after (this tree)", ROOT)):
                    seconds, rss, best = run(tree, seed, args.data, args.zoo, args.replay)
                    print(f"| {seed} | {label} | {seconds:.0f} | {rss:.2f} | {best:.4f} |", flush=True)
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(worktree)], check=False)


if __name__ == "__main__":
    main()
