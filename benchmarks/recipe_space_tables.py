"""Tables of the recipe-space benchmark (``python -m benchmarks.recipe_space``) from its ``runs.csv``.

Per dataset and seed, the two arms' picks are scored on the same outside images, so their difference is
paired: the exact McNemar test (McNemar, 1947; ``scipy.stats.binomtest`` on the discordant images) per
seed, and over seeds the mean difference with a Student t 95% interval (seeds are independent searches
on the same split, so the interval is about search randomness, not about other splits).
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from autotransfer.files import atomic_write_text


def mcnemar(a: str, b: str) -> tuple[int, int, float]:
    """``(only_a, only_b, p)``: images only ``a`` (a 0/1 string) got right, only ``b``, and the exact p-value."""
    x, y = np.array([c == "1" for c in a]), np.array([c == "1" for c in b])
    only_a, only_b = int(np.sum(x & ~y)), int(np.sum(~x & y))
    n = only_a + only_b
    return only_a, only_b, float(stats.binomtest(only_a, n, 0.5).pvalue) if n else 1.0


def t_interval(values: list[float]) -> tuple[float, float, float]:
    """Mean and Student t 95% interval of ``values`` (NaN bounds with fewer than two)."""
    x = np.asarray(values, dtype=float)
    if x.size < 2:
        return float(x.mean()) if x.size else float("nan"), float("nan"), float("nan")
    half = float(stats.t.ppf(0.975, x.size - 1) * x.std(ddof=1) / np.sqrt(x.size))
    return float(x.mean()), float(x.mean() - half), float(x.mean() + half)


def seed_rows(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per (dataset, seed) with both arms: outside accuracies, the paired difference, McNemar, compute."""
    rows: list[dict[str, Any]] = []
    for (name, seed), group in runs.groupby(["dataset", "seed"]):
        arms = {row["arm"]: row for _, row in group.iterrows()}
        if not {"small", "recipe"} <= set(arms):
            continue
        small, recipe = arms["small"], arms["recipe"]
        only_recipe, only_small, p = mcnemar(str(recipe["correct"]), str(small["correct"]))
        strong = small  # scored once per seed, in the small arm's run
        rows.append({"dataset": name, "seed": int(seed), "n_outside": int(small["outside_n"]),
                     "small": float(small["outside_accuracy"]), "recipe": float(recipe["outside_accuracy"]),
                     "difference": float(recipe["outside_accuracy"]) - float(small["outside_accuracy"]),
                     "only_recipe": only_recipe, "only_small": only_small, "p_mcnemar": p,
                     "strong": float(strong.get("strong_outside_accuracy", float("nan"))),
                     "small_trials": int(small["trials"]), "recipe_trials": int(recipe["trials"]),
                     "small_seconds": float(small["wall_seconds"]), "recipe_seconds": float(recipe["wall_seconds"]),
                     "small_pick": small["pick_params"], "recipe_pick": recipe["pick_params"]})
    return pd.DataFrame(rows)


def summary(seeds: pd.DataFrame) -> pd.DataFrame:
    """Per dataset: mean outside accuracy per arm and of the strong baseline, the paired difference with its
    interval, and the compute."""
    rows = []
    for name, group in seeds.groupby("dataset"):
        mean, low, high = t_interval(group["difference"].tolist())
        rows.append({"dataset": name, "seeds": len(group), "n_outside": int(group["n_outside"].iloc[0]),
                     "small": group["small"].mean(), "recipe": group["recipe"].mean(),
                     "strong": group["strong"].mean(), "difference": mean, "low": low, "high": high,
                     "small_trials": group["small_trials"].mean(), "recipe_trials": group["recipe_trials"].mean(),
                     "small_seconds": group["small_seconds"].mean(), "recipe_seconds": group["recipe_seconds"].mean()})
    return pd.DataFrame(rows)


def markdown(seeds: pd.DataFrame, table: pd.DataFrame) -> str:
    """The results as Markdown tables (accuracies in points)."""
    lines = ["| dataset | seeds | outside images | small | recipe | strong baseline | recipe - small (95% t) "
             "| trials small / recipe | wall s small / recipe |", "|---|---:|---:|---:|---:|---:|---|---:|---:|"]
    for _, r in table.iterrows():
        lines.append(f"| {r['dataset']} | {r['seeds']} | {r['n_outside']} | {100 * r['small']:.2f} | "
                     f"{100 * r['recipe']:.2f} | {100 * r['strong']:.2f} | {100 * r['difference']:+.2f} "
                     f"[{100 * r['low']:+.2f}, {100 * r['high']:+.2f}] | {r['small_trials']:.0f} / "
                     f"{r['recipe_trials']:.0f} | {r['small_seconds']:.0f} / {r['recipe_seconds']:.0f} |")
    lines += ["", "| dataset | seed | small | recipe | strong | only recipe right | only small right | McNemar p |",
              "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for _, r in seeds.iterrows():
        lines.append(f"| {r['dataset']} | {r['seed']} | {100 * r['small']:.2f} | {100 * r['recipe']:.2f} | "
                     f"{100 * r['strong']:.2f} | {r['only_recipe']} | {r['only_small']} | {r['p_mcnemar']:.3g} |")
    lines += ["", "Picks (recommended strategy of each arm):", ""]
    for _, r in seeds.iterrows():
        lines.append(f"- {r['dataset']} seed {r['seed']}: small `{r['small_pick']}`; recipe `{r['recipe_pick']}`")
    return "\n".join(lines) + "\n"


def write_tables(runs: pd.DataFrame, out: Path) -> None:
    """Write ``seeds.csv``, ``summary.csv`` and ``results.md`` under ``out`` and print the summary."""
    if runs.empty:
        print("No runs recorded yet.")
        return
    seeds = seed_rows(runs)
    table = summary(seeds) if not seeds.empty else pd.DataFrame()
    for name, frame in (("seeds.csv", seeds), ("summary.csv", table)):
        buffer = io.StringIO()
        frame.to_csv(buffer, index=False, float_format="%.6g")
        atomic_write_text(out / name, buffer.getvalue())
    text = markdown(seeds, table) if not table.empty else "No seed has both arms yet.\n"
    atomic_write_text(out / "results.md", text)
    print(text)
