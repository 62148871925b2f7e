"""Figures of the search-quality benchmark (matplotlib; ``pip install -e .[bench]``).

Static PNGs, because ``benchmarks/README.md`` shows them on any Markdown viewer; the report's
interactive plotly figures are for studies, not for this page.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from autotransfer.files import atomic_write

from .replay import RecordedGrid
from .search_quality import best_so_far

COLOURS = {"default": "#d62728", "tpe": "#ff7f0e", "random": "#1f77b4", "random+sha": "#17becf",
           "one-epoch": "#2ca02c", "textbook": "#7f7f7f", "tpe+hyperband(rf=3)": "#9467bd"}


def _save(fig: plt.Figure, path: Path) -> None:
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight"))
    plt.close(fig)


def plot_all(traces: pd.DataFrame, summary: pd.DataFrame, grids: dict[str, RecordedGrid],
             budgets: dict[str, float], out: Path) -> None:
    """Write ``best_so_far.png``, ``pick_test.png`` and ``compute_to_target.png`` under ``out``."""
    datasets = list(grids)
    methods = [m for m in COLOURS if m in set(traces["method"])]
    methods += sorted(set(traces["method"]) - set(methods))
    fig, axes = plt.subplots(1, len(datasets), figsize=(5.5 * len(datasets), 4.2), squeeze=False)
    for ax, dataset in zip(axes[0], datasets, strict=True):
        grid = grids[dataset]
        xs = np.geomspace(1.0, budgets[dataset], 200)
        for method in methods:
            runs = traces[(traces["dataset"] == dataset) & (traces["method"] == method)]
            if runs.empty or method not in COLOURS:  # the methods and the old default; the rest in tables
                continue
            curves = np.array([best_so_far(run, xs) for _, run in runs.groupby("seed")])
            enough = np.mean(~np.isnan(curves), axis=0) >= 0.5
            with np.errstate(all="ignore"):
                q1, med, q3 = (np.nanpercentile(curves, q, axis=0) if len(curves) > 1 else curves[0]
                               for q in (25, 50, 75))
            style = ":" if method == "tpe+hyperband(rf=3)" else "-"
            ax.plot(xs[enough], med[enough], style, color=COLOURS[method], label=method, lw=1.6)
            if len(curves) > 1:
                ax.fill_between(xs[enough], q1[enough], q3[enough], color=ax.lines[-1].get_color(), alpha=0.12)
        best = grid.best_val()
        ax.axhline(best, color="k", lw=0.8, ls="--")
        ax.axhline(best - 0.01, color="k", lw=0.8, ls=":")
        ax.set_xscale("log")
        ax.set_ylim(max(0.0, best - 0.15), min(1.0, best + 0.02))
        ax.set_title(dataset)
        ax.set_xlabel("compute (recorded seconds, 2-core CPU)")
        ax.set_ylabel("val accuracy (median, IQR band)")
    axes[0][-1].legend(fontsize=7, loc="lower right")
    fig.suptitle("Best-so-far val accuracy against compute (dashed: the grid's best; dotted: one point below)")
    _save(fig, out / "best_so_far.png")

    fig, axes = plt.subplots(1, len(datasets), figsize=(5.5 * len(datasets), 4.2), squeeze=False)
    for ax, dataset in zip(axes[0], datasets, strict=True):
        rows = summary[summary["dataset"] == dataset]
        data = [rows.loc[rows["method"] == m, "pick_test"].dropna().to_numpy() for m in methods]
        ax.boxplot(data, showfliers=True)
        ax.set_xticks(range(1, len(methods) + 1), methods, rotation=60, ha="right", fontsize=7)
        grid = grids[dataset]
        best_key = max((k for k, c in grid.curves.items() if not c.diverged), key=lambda k: grid.curves[k].final)
        ax.axhline(grid.curves[best_key].test[-1], color="k", lw=0.8, ls="--")
        ax.set_title(dataset)
        ax.set_ylabel("test accuracy of the pick (20 seeds)")
    fig.suptitle("Test accuracy of each method's final pick (dashed: the grid's best-val strategy)")
    _save(fig, out / "pick_test.png")

    fig, axes = plt.subplots(1, len(datasets), figsize=(5.5 * len(datasets), 4.2), squeeze=False)
    for ax, dataset in zip(axes[0], datasets, strict=True):
        rows = summary[summary["dataset"] == dataset]
        meds, lows, highs = [], [], []
        for method in methods:
            values = rows.loc[rows["method"] == method, "to_target"].to_numpy()
            q1, med, q3 = np.percentile(values, [25, 50, 75]) if len(values) else (math.nan,) * 3
            meds.append(med)
            lows.append(med - q1 if math.isfinite(med) else 0)
            highs.append(q3 - med if math.isfinite(q3) else 0)
        height = [m if math.isfinite(m) else budgets[dataset] for m in meds]
        bars = ax.bar(range(len(methods)), height, yerr=[lows, highs], capsize=3,
                      color=[COLOURS.get(m, "#bbbbbb") for m in methods])
        for bar, med in zip(bars, meds, strict=True):
            if not math.isfinite(med):
                bar.set_hatch("//")
                bar.set_alpha(0.4)
        ax.set_xticks(range(len(methods)), methods, rotation=60, ha="right", fontsize=7)
        ax.set_title(dataset)
        ax.set_ylabel("recorded seconds (median, IQR)")
    fig.suptitle("Compute to come within one point of the grid's best val accuracy (hatched: median not "
                 "reached within the budget)")
    _save(fig, out / "compute_to_target.png")
