"""Does the screen rank backbones as training does? Scores against trained accuracy on the grid's datasets.

    OMP_NUM_THREADS=1 python -m benchmarks.screen_quality [--part backbones|candidates|all] [--datasets ...]

Two checks, each on hymenoptera, flowers and digits as the search-quality grid splits them
(``benchmarks/grid.py``):

* ``backbones``: the four zoo backbones at the grid's resolution. The truth of a backbone is its
  best epoch-4 val accuracy over the grid's 36 strategies (``benchmarks/search_quality/grid.csv``).
* ``candidates``: 12 candidates, the four backbones x three input resolutions (the grid's, one between,
  224 px). The truth of a candidate is its best epoch-4 val accuracy over :data:`TRUTH_STRATEGIES`
  (three strategies that are on average within 1-2 points of each backbone's best in the grid), trained
  here by the grid's own recorder (:func:`benchmarks.record_grid.record_strategy`); at the grid's
  resolution they are read from the grid, which recorded the same strategies with the same code and seed.

Every candidate is screened cold (its features extracted, nothing cached before) by
:func:`autotransfer.screen.screen.screen`. Both checks write their rows to
``benchmarks/screen_quality/scores.csv`` and ``truth.csv`` as they go and skip rows already there, so
an interrupted run resumes. ``summary.csv`` and ``results.md`` then hold, per dataset, check and score:
Spearman's rho and Kendall's tau-b (``scipy.stats``) between score and truth, whether the score's top
candidate is a best one, and the val regret of keeping the top 1 and top 2 (the truth's best minus the
best truth among those kept, in accuracy points).
"""

from __future__ import annotations

import argparse
import io
import time
from pathlib import Path

import pandas as pd
import torch
from scipy.stats import kendalltau, spearmanr

from autotransfer.files import atomic_write_text
from autotransfer.models.zoo import load_zoo
from autotransfer.screen.scores import SCORES
from autotransfer.screen.screen import screen
from autotransfer.training.runtime import Runtime

from .grid import DATASETS, SHARED, Grid, grid_dataset, read_table
from .record_grid import record_strategy

OUT = Path(__file__).resolve().parent / "screen_quality"
SCORES_CSV, TRUTH_CSV = OUT / "scores.csv", OUT / "truth.csv"
TRUTH_STRATEGIES = [(0.5, 256, 1e-3), (0.75, 256, 1e-3), (1.0, 1024, 1e-3)]  # (freeze depth, head, lr)
RESOLUTIONS = {"hymenoptera": (128, 176, 224), "flowers": (112, 168, 224), "digits": (64, 144, 224)}
EPOCH = 4  # the grid's budget


def _write(frame: pd.DataFrame, path: Path) -> None:
    buffer = io.StringIO()
    frame.to_csv(buffer, index=False, float_format="%.6g")
    atomic_write_text(path, buffer.getvalue())


def _read(path: Path) -> pd.DataFrame:
    return pd.read_csv(path) if path.exists() else pd.DataFrame()


def screen_dataset(name: str, grid: Grid, resolutions: tuple[int, ...]) -> None:
    """Screen the grid's backbones on ``name`` at each resolution (cold), appending to ``scores.csv``."""
    table = _read(SCORES_CSV)
    done = set() if table.empty else set(zip(table["dataset"], table["backbone"], table["resolution"], strict=True))
    dataset = grid_dataset(name, grid)
    zoo = load_zoo(SHARED / "data" / "weights" / "zoo.yaml")
    for size in resolutions:
        for backbone in grid.backbone:
            if (name, backbone, size) in done:
                continue
            runtime = Runtime(cache_mb=2048)
            runtime.memory().clear()  # cold: decode the images and extract the features again
            result = screen(dataset, [backbone], resolutions=[size], zoo=zoo, device="cpu", runtime=runtime,
                            seed=grid.seed)
            row = result.table.drop(columns=["rank", "kept"]).assign(dataset=name)
            table = pd.concat([table, row], ignore_index=True)
            _write(table, SCORES_CSV)
            print(f"  screened {name} {backbone} {size} px in {row['seconds'].iloc[0]:.1f} s", flush=True)


def truth_dataset(name: str, grid: Grid, resolutions: tuple[int, ...]) -> None:
    """Train :data:`TRUTH_STRATEGIES` for every backbone at the resolutions the grid lacks (``truth.csv``)."""
    table = _read(TRUTH_CSV)
    key = ["dataset", "backbone", "resolution", "freeze_depth", "head_width", "learning_rate"]
    done = set() if table.empty else set(map(tuple, table[key].itertuples(index=False)))
    dataset = grid_dataset(name, grid)
    zoo = load_zoo(SHARED / "data" / "weights" / "zoo.yaml")
    native = grid.datasets[name]["resolution"]
    for size in (s for s in resolutions if s != native):
        runtime = Runtime(cache_mb=4096)  # one cache per dataset and resolution, as in one search
        for backbone in grid.backbone:
            for depth, head, lr in TRUTH_STRATEGIES:
                if (name, backbone, size, depth, head, lr) in done:
                    continue
                tick = time.perf_counter()
                rows = pd.DataFrame(record_strategy(dataset, (backbone, depth, head, lr), grid, zoo, runtime, size))
                table = pd.concat([table, rows], ignore_index=True)
                _write(table, TRUTH_CSV)
                last = rows.iloc[-1]
                print(f"  trained {name} {backbone} {size} px {(depth, head, lr)}: val {last['val_accuracy']:.4f} "
                      f"in {time.perf_counter() - tick:.1f} s", flush=True)
        runtime.memory().clear()


def truths(grid_table: pd.DataFrame, trained: pd.DataFrame) -> pd.DataFrame:
    """Per dataset, backbone and resolution: ``truth_all`` (best val over the grid's 36 strategies, at the
    grid's resolution only) and ``truth`` (best val over :data:`TRUTH_STRATEGIES`), both at epoch 4."""
    final = pd.concat([grid_table, trained], ignore_index=True)
    final = final[(final["epoch"] == EPOCH) & (final["status"] == "completed")]
    group = ["dataset", "backbone", "resolution"]
    subset = final.set_index(["freeze_depth", "head_width", "learning_rate"]).index.isin(TRUTH_STRATEGIES)
    out = final[subset].groupby(group)["val_accuracy"].max().rename("truth").to_frame()
    out["truth_all"] = grid_table[grid_table["epoch"] == EPOCH].groupby(group)["val_accuracy"].max()
    return out.reset_index()


def agreement(frame: pd.DataFrame, truth: str, cost: pd.Series | None = None) -> list[dict[str, object]]:
    """Per score: rank correlations with ``truth``, top-1 hit and top-1 / top-2 regret (points), and with
    ``cost`` (seconds by backbone) the share of it the top 2 backbones hold."""
    rows = []
    best = frame[truth].max()
    for score in SCORES:
        ranked = frame.sort_values(score, ascending=False, kind="stable")
        rho = spearmanr(frame[score], frame[truth]).statistic
        tau = kendalltau(frame[score], frame[truth]).statistic
        rows.append({"score": score, "candidates": len(frame), "spearman": float(rho), "kendall": float(tau),
                     "top1_is_best": bool(ranked[truth].iloc[0] == best),
                     "regret_top1": 100 * (best - ranked[truth].iloc[0]),
                     "regret_top2": 100 * (best - ranked[truth].iloc[:2].max()),
                     "top2_compute_share": (float(cost[ranked["backbone"].iloc[:2]].sum() / cost.sum())
                                            if cost is not None else float("nan"))})
    return rows


def summarise(grid: Grid) -> pd.DataFrame:
    """``summary.csv`` and ``results.md`` from ``scores.csv``, ``truth.csv`` and the grid."""
    scores, grid_table = _read(SCORES_CSV), read_table()
    truth = truths(grid_table, _read(TRUTH_CSV))
    merged = scores.merge(truth, on=["dataset", "backbone", "resolution"], how="left")
    # what training the whole grid costs per backbone (seconds): the share a top-2 screen keeps
    spent = grid_table.assign(spent=grid_table[["setup_seconds", "train_seconds", "eval_seconds"]].sum(axis=1))
    cost = spent.groupby(["dataset", "backbone"])["spent"].sum()
    rows = []
    for name, frame in merged.groupby("dataset", sort=False):
        native = frame[frame["resolution"] == grid.datasets[str(name)]["resolution"]]
        checks = {"4 backbones (truth: best of 36)": (native, "truth_all"),
                  "4 backbones (truth: best of 3)": (native, "truth")}
        if frame["resolution"].nunique() > 1:
            checks[f"{len(frame)} candidates (truth: best of 3)"] = (frame, "truth")
        for check, (part, column) in checks.items():
            if len(part) < 2 or part[column].isna().any():
                continue
            seconds = float(part["seconds"].sum())
            by_backbone = cost[name] if part["backbone"].is_unique else None
            rows += [{"dataset": name, "check": check, **row, "screen_seconds": seconds}
                     for row in agreement(part, column, by_backbone)]
    summary = pd.DataFrame(rows)
    _write(summary, OUT / "summary.csv")
    _write(merged, OUT / "merged.csv")
    atomic_write_text(OUT / "results.md", _markdown(summary))
    return summary


def _markdown(frame: pd.DataFrame) -> str:
    """A pipe table (``DataFrame.to_markdown`` needs ``tabulate``, which the project does not install)."""
    cells = frame.map(lambda v: f"{v:.3f}" if isinstance(v, float) else str(v))
    lines = [list(frame.columns), ["---"] * len(frame.columns), *cells.values.tolist()]
    return "".join("| " + " | ".join(map(str, line)) + " |\n" for line in lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", default="all", choices=["backbones", "candidates", "all", "summary"])
    parser.add_argument("--datasets", default=",".join(DATASETS))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    OUT.mkdir(exist_ok=True)
    grid = Grid.load()
    names = args.datasets.split(",")
    if args.part in ("backbones", "all"):
        for name in names:
            print(f"{name}: screening the 4 backbones at {grid.datasets[name]['resolution']} px", flush=True)
            screen_dataset(name, grid, (grid.datasets[name]["resolution"],))
    if args.part in ("candidates", "all"):
        for name in names:
            print(f"{name}: 12 candidates at {RESOLUTIONS[name]} px", flush=True)
            screen_dataset(name, grid, RESOLUTIONS[name])
            truth_dataset(name, grid, RESOLUTIONS[name])
    summary = summarise(grid)
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(summary.to_string(index=False, float_format=lambda v: f"{v:.3f}"))


if __name__ == "__main__":
    main()
