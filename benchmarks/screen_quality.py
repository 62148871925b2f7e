"""Does the screen rank backbones as training does? Scores against trained accuracy on the grid's datasets.

    OMP_NUM_THREADS=1 python -m benchmarks.screen_quality [--part backbones|candidates|lp_trials|all|summary]
    OMP_NUM_THREADS=1 python -m benchmarks.screen_quality --backbones A,B,C,D --out DIR   # any timm hub backbones

Two checks, each on hymenoptera, flowers and digits as the search-quality grid splits them
(``benchmarks/grid.py``):

* ``backbones``: the four zoo backbones at the grid's resolution. The truth of a backbone is its
  best epoch-4 val accuracy over the grid's 36 strategies (``benchmarks/search_quality/grid.csv``).
* ``candidates``: 12 candidates, the four backbones x three input resolutions (the grid's, one between,
  224 px). The truth of a candidate is its best epoch-4 val accuracy over :data:`TRUTH_STRATEGIES`
  (three strategies that are on average within 1-2 points of each backbone's best in the grid), trained
  here by the grid's own recorder (:func:`benchmarks.record_grid.record_strategy`); at the grid's
  resolution they are read from the grid, which recorded the same strategies with the same code and seed.

* ``lp_trials``: one uncached linear-probe trial per zoo backbone at the grid's resolution (features
  extracted, then the grid's epochs of head training: what a search spends before it knows the first
  thing about a backbone), the cost the screen must beat.

Each truth is given twice: on val (the search's own metric) and on test (``*_test``: the best test
accuracy over the same strategies; the test images are never screened). Every candidate is screened
cold (its features extracted, nothing cached before) by :func:`autotransfer.screen.screen.screen`.
Every part writes its rows to ``scores.csv``, ``truth.csv`` and ``lp_trials.csv`` in the output
folder as it goes and skips rows already there, so an interrupted run resumes. ``summary.csv`` and
``results.md`` then hold, per dataset, check, truth and score: Spearman's rho and Kendall's tau-b
(``scipy.stats``) between score and truth, the one-sided p-value of tau under random rankings (an
exact permutation test for up to 8 candidates, 9,999 random permutations above; ``scipy.stats.permutation_test``),
whether the score's top candidate is a best one, whether its top 2 keep a best one (what
``--screen 2`` keeps), and the regret of keeping the top 1 and top 2 (the truth's best minus the best
truth among those kept, in accuracy points).

With ``--backbones`` (timm hub names, on a machine that can download them, or names of another
``--zoo``) the check runs on those backbones at the grid's resolution instead: the truth is then the
best of :data:`TRUTH_STRATEGIES`, trained here, and everything goes to ``--out``.
"""

from __future__ import annotations

import argparse
import io
import itertools
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from scipy.stats import kendalltau, permutation_test, spearmanr

from autotransfer.files import atomic_write_text
from autotransfer.models.network import BackboneWithHead
from autotransfer.models.zoo import create_backbone, load_zoo
from autotransfer.screen.scores import SCORES
from autotransfer.screen.screen import screen
from autotransfer.settings import Budget
from autotransfer.training.runtime import Runtime
from autotransfer.training.trainer import fit

from .grid import DATASETS, SHARED, Grid, grid_dataset, read_table
from .record_grid import record_strategy

OUT = Path(__file__).resolve().parent / "screen_quality"
TRUTH_STRATEGIES = [(0.5, 256, 1e-3), (0.75, 256, 1e-3), (1.0, 1024, 1e-3)]  # (freeze depth, head, lr)
LINEAR_PROBE = (1.0, 0, 1e-3)  # the uncached trial the screen is timed against: a linear head on features
RESOLUTIONS = {"hymenoptera": (128, 176, 224), "flowers": (112, 168, 224), "digits": (64, 144, 224)}
EPOCH = 4  # the grid's budget
EXACT_UP_TO = 8  # candidates up to which the permutation test enumerates every ranking (8! = 40,320)


@dataclass(frozen=True)
class Setup:
    """Where the rows go and which backbones are screened.

    Attributes:
        out: Output folder (``scores.csv``, ``truth.csv``, ``lp_trials.csv``, ``summary.csv``, ``results.md``).
        zoo: Zoo file (hub names not in it are downloaded by timm).
        backbones: The backbones; None: the grid's four, whose native-resolution truth the grid holds.
    """

    out: Path = OUT
    zoo: Path = SHARED / "data" / "weights" / "zoo.yaml"
    backbones: tuple[str, ...] | None = None

    def names(self, grid: Grid) -> list[str]:
        return list(self.backbones or grid.backbone)

    def csv(self, name: str) -> Path:
        return self.out / f"{name}.csv"


def _write(frame: pd.DataFrame, path: Path) -> None:
    buffer = io.StringIO()
    frame.to_csv(buffer, index=False, float_format="%.6g")
    atomic_write_text(path, buffer.getvalue())


def _read(path: Path) -> pd.DataFrame:
    return pd.read_csv(path) if path.exists() else pd.DataFrame()


def screen_dataset(name: str, grid: Grid, resolutions: tuple[int, ...], setup: Setup) -> None:
    """Screen the backbones on ``name`` at each resolution (cold), appending to ``scores.csv``."""
    table = _read(setup.csv("scores"))
    done = set() if table.empty else set(zip(table["dataset"], table["backbone"], table["resolution"], strict=True))
    dataset = grid_dataset(name, grid)
    zoo = load_zoo(setup.zoo)
    for size in resolutions:
        for backbone in setup.names(grid):
            if (name, backbone, size) in done:
                continue
            runtime = Runtime(cache_mb=2048)
            runtime.memory().clear()  # cold: decode the images and extract the features again
            result = screen(dataset, [backbone], resolutions=[size], zoo=zoo, device="cpu", runtime=runtime,
                            seed=grid.seed)
            row = result.table.drop(columns=["rank", "kept"]).assign(dataset=name)
            table = pd.concat([table, row], ignore_index=True)
            _write(table, setup.csv("scores"))
            print(f"  screened {name} {backbone} {size} px in {row['seconds'].iloc[0]:.1f} s", flush=True)


def truth_dataset(name: str, grid: Grid, resolutions: tuple[int, ...], setup: Setup) -> None:
    """Train :data:`TRUTH_STRATEGIES` for every backbone at the resolutions the grid lacks (``truth.csv``)."""
    table = _read(setup.csv("truth"))
    key = ["dataset", "backbone", "resolution", "freeze_depth", "head_width", "learning_rate"]
    done = set() if table.empty else set(map(tuple, table[key].itertuples(index=False)))
    dataset = grid_dataset(name, grid)
    zoo = load_zoo(setup.zoo)
    native = grid.datasets[name]["resolution"] if setup.backbones is None else None  # the grid holds it
    for size in (s for s in resolutions if s != native):
        runtime = Runtime(cache_mb=4096)  # one cache per dataset and resolution, as in one search
        for backbone in setup.names(grid):
            for depth, head, lr in TRUTH_STRATEGIES:
                if (name, backbone, size, depth, head, lr) in done:
                    continue
                tick = time.perf_counter()
                rows = pd.DataFrame(record_strategy(dataset, (backbone, depth, head, lr), grid, zoo, runtime, size))
                table = pd.concat([table, rows], ignore_index=True)
                _write(table, setup.csv("truth"))
                last = rows.iloc[-1]
                print(f"  trained {name} {backbone} {size} px {(depth, head, lr)}: val {last['val_accuracy']:.4f} "
                      f"in {time.perf_counter() - tick:.1f} s", flush=True)
        runtime.memory().clear()


def lp_trials_dataset(name: str, grid: Grid, setup: Setup) -> None:
    """Time one uncached linear-probe trial per backbone at the grid's resolution (``lp_trials.csv``).

    Timed as a search runs it: build the network, extract the train and val features (cold), train the
    head for the grid's epochs and score val; the test split is left out, as the screen leaves it out.
    """
    table = _read(setup.csv("lp_trials"))
    done = set() if table.empty else set(zip(table["dataset"], table["backbone"], strict=True))
    dataset = grid_dataset(name, grid)
    dataset = replace(dataset, splits={s: dataset.splits[s] for s in ("train", "val")})
    zoo, size = load_zoo(setup.zoo), grid.datasets[name]["resolution"]
    depth, head, lr = LINEAR_PROBE
    for backbone_name in setup.names(grid):
        if (name, backbone_name) in done:
            continue
        runtime = Runtime(cache_mb=2048)
        runtime.memory().clear()
        tick = time.perf_counter()
        backbone, data_config = create_backbone(backbone_name, zoo)
        net = BackboneWithHead.build(backbone, depth, head, dataset.n_classes)
        result = fit(net, dataset, {**data_config, "input_size": (3, size, size)},
                     Budget(epochs=grid.epochs, batch_size=grid.batch_size), lr, seed=grid.seed,
                     device=torch.device("cpu"), hflip=name != "digits", runtime=runtime)
        row = {"dataset": name, "backbone": backbone_name, "resolution": size, "inputs": result.inputs,
               "val_accuracy": result.metrics["accuracy"], "seconds": time.perf_counter() - tick}
        table = pd.concat([table, pd.DataFrame([row])], ignore_index=True)
        _write(table, setup.csv("lp_trials"))
        print(f"  linear-probe trial {name} {backbone_name}: {row['seconds']:.1f} s", flush=True)


def truths(grid_table: pd.DataFrame, trained: pd.DataFrame) -> pd.DataFrame:
    """Per dataset, backbone and resolution, at epoch 4: ``truth`` (best val over :data:`TRUTH_STRATEGIES`)
    and ``truth_all`` (best val over the grid's 36 strategies, at the grid's resolution only), each with
    its ``*_test`` twin (best test accuracy over the same strategies)."""
    final = pd.concat([grid_table, trained], ignore_index=True)
    final = final[(final["epoch"] == EPOCH) & (final["status"] == "completed")]
    group = ["dataset", "backbone", "resolution"]
    subset = final.set_index(["freeze_depth", "head_width", "learning_rate"]).index.isin(TRUTH_STRATEGIES)
    best = final[subset].groupby(group)
    out = pd.DataFrame({"truth": best["val_accuracy"].max(), "truth_test": best["test_accuracy"].max()})
    if not grid_table.empty:
        whole = grid_table[grid_table["epoch"] == EPOCH].groupby(group)
        out["truth_all"], out["truth_all_test"] = whole["val_accuracy"].max(), whole["test_accuracy"].max()
    return out.reset_index()


def kendall_p(score: pd.Series, truth: pd.Series) -> float:
    """One-sided p-value of Kendall's tau-b against random rankings (permutation test, scipy.stats)."""
    def tau(x: np.ndarray, y: np.ndarray) -> float:
        return float(kendalltau(x, y).statistic)

    n_resamples = np.inf if len(score) <= EXACT_UP_TO else 9999
    result = permutation_test((score.to_numpy(), truth.to_numpy()), tau, permutation_type="pairings",
                              alternative="greater", n_resamples=n_resamples, random_state=0)
    return float(result.pvalue)


def kendall_null(n: int) -> pd.DataFrame:
    """The exact distribution of Kendall's tau over the ``n!`` rankings of ``n`` untied candidates."""
    taus = [round(float(kendalltau(range(n), order).statistic), 6) for order in itertools.permutations(range(n))]
    counts = pd.Series(taus).value_counts().sort_index(ascending=False)
    return pd.DataFrame({"tau": counts.index, "rankings": counts.to_numpy(),
                         "probability": counts.to_numpy() / len(taus),
                         "p_at_least": np.cumsum(counts.to_numpy()) / len(taus)})


def agreement(frame: pd.DataFrame, truth: str, cost: pd.Series | None = None) -> list[dict[str, object]]:
    """Per score: rank correlations with ``truth`` (and tau's p-value), top-1 hit, whether the top 2 keep
    a best one, top-1 / top-2 regret (points), and with ``cost`` (seconds by backbone) the share of it the
    top 2 backbones hold."""
    rows = []
    best = frame[truth].max()
    for score in SCORES:
        ranked = frame.sort_values(score, ascending=False, kind="stable")
        rho = spearmanr(frame[score], frame[truth]).statistic
        tau = kendalltau(frame[score], frame[truth]).statistic
        rows.append({"score": score, "candidates": len(frame), "spearman": float(rho), "kendall": float(tau),
                     "kendall_p": kendall_p(frame[score], frame[truth]),
                     "top1_is_best": bool(ranked[truth].iloc[0] == best),
                     "top2_keeps_best": bool(ranked[truth].iloc[:2].max() == best),
                     "regret_top1": 100 * (best - ranked[truth].iloc[0]),
                     "regret_top2": 100 * (best - ranked[truth].iloc[:2].max()),
                     "top2_compute_share": (float(cost[ranked["backbone"].iloc[:2]].sum() / cost.sum())
                                            if cost is not None else float("nan"))})
    return rows


def _checks(frame: pd.DataFrame, native_px: int) -> dict[str, tuple[pd.DataFrame, str]]:
    """The (candidates, truth column) pairs of one dataset."""
    native = frame[frame["resolution"] == native_px]
    n = len(native)
    checks = {}
    for split, suffix in (("val", ""), ("test", "_test")):
        if f"truth_all{suffix}" in frame:
            checks[f"{n} backbones, {split} (truth: best of 36)"] = (native, f"truth_all{suffix}")
        checks[f"{n} backbones, {split} (truth: best of 3)"] = (native, f"truth{suffix}")
        if frame["resolution"].nunique() > 1:
            checks[f"{len(frame)} candidates, {split} (truth: best of 3)"] = (frame, f"truth{suffix}")
    return checks


def summarise(grid: Grid, setup: Setup) -> pd.DataFrame:
    """``summary.csv``, ``merged.csv`` and ``results.md`` from the output folder's CSVs and the grid."""
    scores = _read(setup.csv("scores"))
    grid_table = read_table() if setup.backbones is None else pd.DataFrame()
    merged = scores.merge(truths(grid_table, _read(setup.csv("truth"))), on=["dataset", "backbone", "resolution"],
                          how="left")
    cost = None
    if not grid_table.empty:  # what training the whole grid costs per backbone (seconds): a top-2 screen keeps it
        spent = grid_table.assign(spent=grid_table[["setup_seconds", "train_seconds", "eval_seconds"]].sum(axis=1))
        cost = spent.groupby(["dataset", "backbone"])["spent"].sum()
    rows = []
    for name, frame in merged.groupby("dataset", sort=False):
        for check, (part, column) in _checks(frame, grid.datasets[str(name)]["resolution"]).items():
            if len(part) < 2 or column not in part or part[column].isna().any():
                continue
            by_backbone = cost[name] if cost is not None and part["backbone"].is_unique else None
            rows += [{"dataset": name, "check": check, **row, "screen_seconds": float(part["seconds"].sum())}
                     for row in agreement(part, column, by_backbone)]
    summary = pd.DataFrame(rows)
    _write(summary, setup.csv("summary"))
    _write(merged, setup.csv("merged"))
    atomic_write_text(setup.out / "results.md", _results(summary, merged, _read(setup.csv("lp_trials")), grid))
    return summary


def _results(summary: pd.DataFrame, merged: pd.DataFrame, lp_trials: pd.DataFrame, grid: Grid) -> str:
    """``results.md``: the agreement table, the screen's cost against linear-probe trials, tau's null."""
    parts = ["## Agreement with training\n\n", _markdown(summary)]
    if not lp_trials.empty:
        native = merged[merged["resolution"] == merged["dataset"].map(lambda d: grid.datasets[d]["resolution"])]
        cost = lp_trials.merge(native[["dataset", "backbone", "seconds"]].rename(columns={"seconds": "screen_seconds"}),
                               on=["dataset", "backbone"], how="left")
        cost["screen_over_trial"] = cost["screen_seconds"] / cost["seconds"]
        parts += ["\n## The screen against one uncached linear-probe trial per backbone (seconds)\n\n",
                  _markdown(cost.rename(columns={"seconds": "trial_seconds"}))]
    parts += ["\n## Kendall's tau of 4 untied candidates under random rankings (exact)\n\n",
              _markdown(kendall_null(4))]
    return "".join(parts)


def _markdown(frame: pd.DataFrame) -> str:
    """A pipe table (``DataFrame.to_markdown`` needs ``tabulate``, which the project does not install)."""
    cells = frame.map(lambda v: f"{v:.3f}" if isinstance(v, float) else str(v))
    lines = [list(frame.columns), ["---"] * len(frame.columns), *cells.values.tolist()]
    return "".join("| " + " | ".join(map(str, line)) + " |\n" for line in lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", default="all", choices=["backbones", "candidates", "lp_trials", "all", "summary"])
    parser.add_argument("--datasets", default=",".join(DATASETS))
    parser.add_argument("--backbones", help="comma-separated timm hub (or --zoo) names instead of the grid's four; "
                        "their truth is trained here (the 3 strategies at the grid's resolution)")
    parser.add_argument("--zoo", type=Path, default=Setup.zoo, help="zoo file (default: the shared zoo)")
    parser.add_argument("--out", type=Path, help="output folder (default: benchmarks/screen_quality; required "
                        "with --backbones, so that the committed tables stay the grid's)")
    args = parser.parse_args(argv)
    if args.backbones and args.out is None:
        parser.error("--backbones needs --out DIR")
    setup = Setup(args.out or OUT, args.zoo, tuple(args.backbones.split(",")) if args.backbones else None)
    torch.set_num_threads(1)
    setup.out.mkdir(parents=True, exist_ok=True)
    grid = Grid.load()
    names = args.datasets.split(",")
    for name in names:
        native = grid.datasets[name]["resolution"]
        if args.part in ("backbones", "all"):
            print(f"{name}: screening {len(setup.names(grid))} backbones at {native} px", flush=True)
            screen_dataset(name, grid, (native,), setup)
            if setup.backbones is not None:
                truth_dataset(name, grid, (native,), setup)
        if args.part in ("candidates", "all") and setup.backbones is None:
            print(f"{name}: 12 candidates at {RESOLUTIONS[name]} px", flush=True)
            screen_dataset(name, grid, RESOLUTIONS[name], setup)
            truth_dataset(name, grid, RESOLUTIONS[name], setup)
        if args.part in ("lp_trials", "all"):
            print(f"{name}: one uncached linear-probe trial per backbone at {native} px", flush=True)
            lp_trials_dataset(name, grid, setup)
    summary = summarise(grid, setup)
    with pd.option_context("display.width", 250, "display.max_columns", 20):
        print(summary.to_string(index=False, float_format=lambda v: f"{v:.3f}"))


if __name__ == "__main__":
    main()
