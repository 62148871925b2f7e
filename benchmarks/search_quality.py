"""Does the search find the right strategy? Replay every method over many seeds on the recorded grid.

    python -m benchmarks.search_quality [--seeds 20] [--budget-fraction 2.0] [--jobs 2]

Reads ``benchmarks/search_quality/grid.csv`` (``python -m benchmarks.record_grid`` records it) and
writes, under ``benchmarks/search_quality/``: ``traces.csv`` (every replayed trial),
``summary.csv``, ``results.md`` (the tables of ``benchmarks/README.md``) and the figures
``best_so_far.png``, ``pick_test.png`` and ``compute_to_target.png`` (matplotlib, from the
``bench`` extra). Each dataset's compute budget is ``--budget-fraction`` of what training every
grid strategy for the full budget costs (a full study).
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pandas as pd
from joblib import Parallel, delayed
from scipy.stats import kendalltau

from autotransfer.files import atomic_write_text
from autotransfer.results.leaderboard import leaderboard
from autotransfer.results.report.evidence import family_ranking

from .grid import DATASETS, TABLE, Grid, read_table
from .replay import Method, RecordedGrid, grid_space, replay_one_epoch, replay_study, replay_textbook

OUT = TABLE.parent
TARGET = 0.01  # "within one point" of the grid's best val accuracy

METHODS = {  # the methods; "default" is what `autotransfer search` runs (Hyperband's rf=2 since issue 7)
    "default": Method("default", "tpe", "hyperband", baseline=True),
    "tpe": Method("tpe", "tpe", "none", baseline=True),
    "random": Method("random", "random", "none"),
    "random+sha": Method("random+sha", "random", "sha"),
}
CANDIDATES = {  # settings the defaults were chosen among
    "tpe+sha": Method("tpe+sha", "tpe", "sha", baseline=True),
    "tpe+hyperband(rf=3)": Method("tpe+hyperband(rf=3)", "tpe", "hyperband", baseline=True,
                                  pruner_kwargs={"reduction_factor": 3}),  # the default before issue 7
    "tpe+median": Method("tpe+median", "tpe", "median", baseline=True),
    "tpe(10 startup)+hyperband(rf=3)": Method("tpe(10 startup)+hyperband(rf=3)", "tpe", "hyperband", baseline=True,
                                              sampler_kwargs={"n_startup_trials": 10},
                                              pruner_kwargs={"reduction_factor": 3}),
    "tpe+sha(rf=2)": Method("tpe+sha(rf=2)", "tpe", "sha", baseline=True, pruner_kwargs={"reduction_factor": 2}),
    "tpe(10 startup)+hyperband(rf=2)": Method("tpe(10 startup)+hyperband(rf=2)", "tpe", "hyperband", baseline=True,
                                              sampler_kwargs={"n_startup_trials": 10},
                                              pruner_kwargs={"reduction_factor": 2}),
    "tpe(10 startup)": Method("tpe(10 startup)", "tpe", "none", baseline=True, sampler_kwargs={"n_startup_trials": 10}),
}
SPECIAL = ("one-epoch", "textbook")


def run_one(table: pd.DataFrame, dataset: str, method: str, seed: int, budget_fraction: float) -> pd.DataFrame:
    """One replayed run: its trace with ``dataset``, ``method`` and ``seed`` columns."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    grid = RecordedGrid(table, dataset)
    space = grid_space(Grid.load())
    if method == "one-epoch":
        trace = replay_one_epoch(grid, seed)
    elif method == "textbook":
        trace = replay_textbook(grid, space)
    else:
        spec = {**METHODS, **CANDIDATES}[method]
        _, trace = replay_study(spec, grid, space, seed, budget_seconds=budget_fraction * grid.full_cost())
    return trace.assign(dataset=dataset, method=method, seed=seed)


def kendall_one(grid: RecordedGrid, seed: int, n_trials: int) -> dict[str, Any]:
    """Kendall's tau between the family rankings of a default search of ``n_trials`` and of the grid.

    ``tau`` ranks families as the report does (section 2: by their best complete trial; families
    whose trials were all pruned are not ranked). ``tau_epoch1`` ranks every family the search
    tried by its best val metric after epoch 1, which every trial reports. Both compare with the
    same families ranked by their best full-budget val metric in the grid (tau-b: ties allowed).
    """
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study, _ = replay_study(METHODS["default"], grid, grid_space(Grid.load()), seed, budget_seconds=math.inf,
                            max_trials=n_trials)
    truth = grid.family_values()
    ranking = family_ranking(leaderboard(study)).dropna(subset=["best"])
    first: dict[str, float] = {}
    for trial in study.trials:
        if 1 in trial.intermediate_values:
            family = str(trial.user_attrs["family"])
            first[family] = max(first.get(family, -math.inf), trial.intermediate_values[1])
    top = str(ranking["family"].iloc[0]) if len(ranking) else ""
    return {"dataset": grid.dataset, "seed": seed, "families": len(ranking),
            "tau": _tau(ranking["best"].to_numpy(), truth[ranking["family"]].to_numpy()),
            "families_tried": len(first),
            "tau_epoch1": _tau(np.array(list(first.values())), truth[list(first)].to_numpy()),
            "top_family": top, "top_is_grid_best": top == truth.index[0]}


def _tau(a: np.ndarray, b: np.ndarray) -> float:
    """Kendall's tau-b (scipy), NaN for fewer than two families or no variation."""
    return float(kendalltau(a, b).statistic) if len(a) >= 2 else math.nan


def best_so_far(trace: pd.DataFrame, xs: np.ndarray) -> np.ndarray:
    """Best complete val metric reached by compute ``xs`` (NaN before the first complete trial)."""
    trace = trace.sort_values("seconds")
    best = trace["value"].cummax().ffill().to_numpy()  # NaN: pruned or failed trials
    index = np.searchsorted(trace["seconds"].to_numpy(), xs, side="right") - 1
    return np.where(index >= 0, best[np.clip(index, 0, None)], np.nan)


def summarise(traces: pd.DataFrame, grids: dict[str, RecordedGrid], budgets: dict[str, float]) -> pd.DataFrame:
    """Per dataset, method and seed: final best val, the pick's test accuracy, compute to within one point."""
    rows = []
    for (dataset, method, seed), trace in traces.groupby(["dataset", "method", "seed"]):
        dataset = str(dataset)
        trace = trace.sort_values("seconds")
        target = grids[dataset].best_val() - TARGET - 1e-9
        best = trace["value"].cummax().ffill()  # pruned and failed trials (NaN) keep the best so far
        reached = trace.loc[best >= target, "seconds"]
        values = trace["value"].fillna(-math.inf).to_numpy()
        pick = int(np.argmax(values)) if np.isfinite(values).any() else None
        rows.append({"dataset": dataset, "method": method, "seed": seed, "trials": len(trace),
                     "seconds": float(trace["seconds"].iloc[-1]), "budget": budgets[dataset],
                     "best_val": float(best.iloc[-1]) if pick is not None else math.nan,
                     "pick_test": float(trace["test"].iloc[pick]) if pick is not None else math.nan,
                     "to_target": float(reached.iloc[0]) if len(reached) else math.inf})
    return pd.DataFrame(rows)


def by_trials(traces: pd.DataFrame, grids: dict[str, RecordedGrid], counts: tuple[int, ...] = (20, 50, 100)
              ) -> pd.DataFrame:
    """After the first N trials of each run (the CLI's budget is ``--n-trials``): the share of runs
    within one point of the grid's best val, and the median compute spent."""
    rows = []
    for (dataset, method, seed), trace in traces.groupby(["dataset", "method", "seed"]):
        trace = trace.sort_values("trial")
        target = grids[str(dataset)].best_val() - TARGET - 1e-9
        for n in counts:
            head = trace.head(n)
            rows.append({"dataset": dataset, "method": method, "seed": seed, "n_trials": n,
                         "hit": bool(head["value"].max() >= target), "seconds": float(head["seconds"].iloc[-1])})
    return pd.DataFrame(rows).groupby(["dataset", "method", "n_trials"], sort=False).agg(
        hit=("hit", "mean"), seconds=("seconds", "median")).reset_index()


def tables(summary: pd.DataFrame, taus: pd.DataFrame, grids: dict[str, RecordedGrid],
           trials: pd.DataFrame | None = None) -> str:
    """The markdown tables of ``benchmarks/README.md``."""
    out = ["| dataset | method | runs | median trials | best val (median) | pick's test acc. (median [IQR]) | "
           "compute to within 1 pt (median s) | runs that got there | vs random |",
           "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for dataset, group in summary.groupby("dataset", sort=False):
        random = group.loc[group["method"] == "random", "to_target"].median()
        for method, rows in group.groupby("method", sort=False):
            to = rows["to_target"].median()
            q1, q3 = rows["pick_test"].quantile([0.25, 0.75])
            ratio = f"{to / random:.2f}" if math.isfinite(to) and math.isfinite(random) else "n/a"
            out.append(f"| {dataset} | {method} | {len(rows)} | {rows['trials'].median():.0f} | "
                       f"{rows['best_val'].median():.4f} | {rows['pick_test'].median():.4f} [{q1:.4f}, {q3:.4f}] | "
                       f"{_seconds(to)} | {int(np.isfinite(rows['to_target']).sum())}/{len(rows)} | {ratio} |")
    out += ["", "| dataset | grid strategies | grid's best val | its test acc. | best test in grid | "
            "full-study compute (s) | replay budget (s) |", "|---|---:|---:|---:|---:|---:|---:|"]
    for dataset, grid in grids.items():
        best_key = max((k for k, c in grid.curves.items() if not c.diverged), key=lambda k: grid.curves[k].final)
        best_test = max(c.test[-1] for c in grid.curves.values() if not c.diverged)
        budget = summary.loc[summary["dataset"] == dataset, "budget"].iloc[0]
        out.append(f"| {dataset} | {len(grid.curves)} | {grid.best_val():.4f} | {grid.curves[best_key].test[-1]:.4f} | "
                   f"{best_test:.4f} | {grid.full_cost():.0f} | {budget:.0f} |")
    out += ["", "| dataset | seeds | families ranked by the report (median) | Kendall tau (median [IQR]; "
            "defined in) | families tried (median) | tau of epoch-1 ranking (median [IQR]) | "
            "report's top family is the grid's best |", "|---|---:|---:|---:|---:|---:|---:|"]
    for dataset, rows in taus.groupby("dataset", sort=False):
        out.append(f"| {dataset} | {len(rows)} | {rows['families'].median():.0f} | {_quartiles(rows['tau'])} | "
                   f"{rows['families_tried'].median():.0f} | {_quartiles(rows['tau_epoch1'])} | "
                   f"{int(rows['top_is_grid_best'].sum())}/{len(rows)} |")
    if trials is not None and not trials.empty:
        counts = sorted(trials["n_trials"].unique())
        out += ["", "| dataset | method | " + " | ".join(f"within 1 pt after {n} trials (median s)" for n in counts)
                + " |", "|---|---|" + "---:|" * len(counts)]
        for (dataset, method), rows in trials.groupby(["dataset", "method"], sort=False):
            if method in SPECIAL:
                continue
            cells = [f"{r.hit:.0%} ({r.seconds:.0f})" for r in rows.sort_values("n_trials").itertuples()]
            out.append(f"| {dataset} | {method} | " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


def _quartiles(values: pd.Series) -> str:
    """``median [q1, q3]`` of the defined values, and in how many runs they were defined."""
    defined = values.dropna()
    if defined.empty:
        return f"n/a (0/{len(values)})"
    q1, med, q3 = defined.quantile([0.25, 0.5, 0.75])
    return f"{med:.2f} [{q1:.2f}, {q3:.2f}]; {len(defined)}/{len(values)}"


def _seconds(value: float) -> str:
    return f"{value:.0f}" if math.isfinite(value) else "not reached"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--budget-fraction", type=float, default=2.0)
    parser.add_argument("--datasets", default=",".join(DATASETS))
    parser.add_argument("--methods", default=",".join([*METHODS, *SPECIAL, *CANDIDATES]))
    parser.add_argument("--kendall-trials", type=int, default=20, help="trials of the default budgeted search "
                        "(autotransfer search's --n-trials default)")
    parser.add_argument("--jobs", type=int, default=-1, help="joblib processes (default: all cores)")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--plots-only", action="store_true", help="redraw the figures from the CSVs in --out")
    args = parser.parse_args(argv)
    table = read_table()
    datasets = args.datasets.split(",")
    grids = {d: RecordedGrid(table, d) for d in datasets}
    budgets = {d: args.budget_fraction * g.full_cost() for d, g in grids.items()}
    if args.plots_only:
        from .search_quality_plots import plot_all

        plot_all(pd.read_csv(args.out / "traces.csv"), pd.read_csv(args.out / "summary.csv"), grids, budgets, args.out)
        return
    jobs = [(d, m, s) for d in datasets for m in args.methods.split(",")
            for s in (range(1) if m == "textbook" else range(args.seeds))]
    parallel = Parallel(n_jobs=args.jobs)
    traces = pd.concat(parallel(delayed(run_one)(table, d, m, s, args.budget_fraction) for d, m, s in jobs),
                       ignore_index=True)
    taus = pd.DataFrame(parallel(delayed(kendall_one)(grids[d], s, args.kendall_trials)
                                 for d in datasets for s in range(args.seeds)))
    summary = summarise(traces, grids, budgets)
    trials = by_trials(traces, grids)
    args.out.mkdir(parents=True, exist_ok=True)
    for name, frame in (("traces.csv", traces), ("summary.csv", summary), ("kendall.csv", taus),
                        ("by_trials.csv", trials)):
        atomic_write_text(args.out / name, frame.to_csv(index=False, float_format="%.6g"))
    markdown = tables(summary, taus, grids, trials)
    atomic_write_text(args.out / "results.md", markdown)
    from .search_quality_plots import plot_all  # matplotlib only here (the `bench` extra)

    plot_all(traces, summary, grids, budgets, args.out)
    print(markdown)


if __name__ == "__main__":
    main()
