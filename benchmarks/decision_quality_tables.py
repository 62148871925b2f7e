"""The tables and figure of the decision-quality benchmark (``python -m benchmarks.decision_quality``).

Definitions (all figures in accuracy points, 1 point = 0.01):

- **Truth** of a strategy: its mean accuracy over the truth draws. Its 95% interval, and that of a paired
  difference between two strategies over the same draws, is the *corrected resampled t* interval of
  Nadeau and Bengio (Machine Learning 52, 2003): variance times ``1/J + n_scored/n_train`` over ``J``
  draws, Student t with ``J - 1`` degrees of freedom. The plain ``1/J`` would be too narrow because the
  draws' training sets overlap.
- **Regret** of a pick: truth of the truth's best strategy (the best of the benchmarked union) minus the
  truth of the pick.
- **Tie accuracy**: the share of seeds whose pick is practically equivalent to the truth's best (its truth
  within the tie margin, 1 point, of the best's).
- **Outcome right**: the decision compares the best-mean finalist with each other finalist and calls each
  pair a lead, a tie or undecided. The truth classifies the same pair by its 95% interval ``[lo, hi]`` of
  the paired difference: a lead if ``lo > 0``, a tie if ``-margin <= lo`` and ``hi <= margin``, otherwise
  undecided. The outcome is right when the truth's class equals the decision's verdict on every pair.
- **Kendall tau** (tau-b, ``scipy.stats.kendalltau``) of the finalists' ranking against their truth: by
  their search val accuracy ("search") and by their confirmed mean ("confirmed").
- **Contrasts** (:func:`contrasts`): whether the truth can tell two picking rules apart at all, from the
  mean over seeds of the paired truth difference of their picks, per truth draw, with the corrected
  interval above.
"""

from __future__ import annotations

import io
import math
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from scipy import stats

from autotransfer.files import atomic_write_text
from autotransfer.results.decision import Decision, FinalistRuns, decide

if TYPE_CHECKING:
    from autotransfer.study.confirm import ConfirmPlan

    from .decision_quality import SeedPlan
    from .replay import Key

MARGIN = 0.01
SHARE = 0.5  # the stage's default share of the search's compute (its budget)
PICKS = ("today", "confirmed", "control", "hybrid")
LABELS = {"today": "today's pick", "confirmed": "confirmed", "control": "compute control",
          "hybrid": "explore, then confirm"}


class Truth:
    """The truth draws of one dataset: per strategy, its accuracy on every draw."""

    def __init__(self, runs: pd.DataFrame, draws: int) -> None:
        rows = runs[(runs["kind"] == "truth") & (runs["status"] == "completed")]
        self.table = rows.pivot_table(index=["backbone", "freeze_depth", "head_width", "learning_rate"],
                                      columns="draw", values="accuracy")
        self.ratio = float((rows["n_scored"] / rows["n_train"]).median()) if len(rows) else math.nan
        self.draws = self.table.shape[1]  # fewer than ``draws`` while the recording is in progress
        self.table = self.table.dropna()  # strategies with every recorded draw
        self.means = self.table.mean(axis=1)
        self.best: Key | None = tuple(self.means.idxmax()) if len(self.means) else None  # type: ignore[assignment, arg-type]

    def has(self, key: Key) -> bool:
        return key in self.means.index

    def mean(self, key: Key) -> float:
        return float(self.means.loc[key])

    def interval(self, a: Key, b: Key) -> tuple[float, float, float]:
        """Mean paired difference ``a - b`` over the draws and its corrected 95% interval (Nadeau and Bengio 2003)."""
        table: Any = self.table
        diff = (table.loc[a] - table.loc[b]).to_numpy(dtype=float)
        j = diff.size
        se = math.sqrt((1 / j + self.ratio) * float(np.var(diff, ddof=1))) if j > 1 else math.nan
        half = float(stats.t.ppf(0.975, j - 1)) * se if j > 1 else math.nan
        return float(diff.mean()), float(diff.mean() - half), float(diff.mean() + half)

    def se(self, key: Key) -> float:
        """Corrected standard error of a strategy's truth."""
        table: Any = self.table
        values = table.loc[key].to_numpy(dtype=float)
        return math.sqrt((1 / values.size + self.ratio) * float(np.var(values, ddof=1)))

    def verdict(self, a: Key, b: Key, margin: float = MARGIN) -> str:
        """The truth's class of the pair (module docstring)."""
        _, lo, hi = self.interval(a, b)
        if lo > 0:
            return "lead"
        return "tie" if -margin <= lo and hi <= margin else "undecided"


def _key(row: pd.Series) -> Key:
    return (str(row["backbone"]), float(row["freeze_depth"]), int(row["head_width"]), float(row["learning_rate"]))


def planned_runs(seed: int, plan: ConfirmPlan, finalists: tuple[Key, ...], runs: pd.DataFrame) -> dict[
        Key, list[pd.Series]] | None:
    """Each finalist's recorded runs of the plan's repeats, in repeat order (None while one is missing or failed).

    ``runs`` are one dataset's rows of ``runs.csv``; a stage run's ``draw`` is ``"<seed>/<repeat>"``.
    """
    rows = runs[(runs["kind"] == "stage") & runs["draw"].str.startswith(f"{seed}/")]
    by_key: dict[Key, dict[int, pd.Series]] = {}
    for _, row in rows.iterrows():
        by_key.setdefault(_key(row), {})[int(str(row["draw"]).split("/")[1])] = row
    repeats = range(plan.repeats)
    if any(k not in by_key or any(r not in by_key[k] or by_key[k][r]["status"] != "completed" for r in repeats)
           for k in finalists):
        return None
    return {k: [by_key[k][r] for r in repeats] for k in finalists}


def stage_decision(seed: int, plan: ConfirmPlan, finalists: tuple[Key, ...], runs: pd.DataFrame) -> tuple[
        Decision | None, dict[Key, list[float]], float]:
    """The product's decision from one seed's recorded stage runs (None if a run is missing or diverged)."""
    recorded = planned_runs(seed, plan, finalists, runs)
    if recorded is None:
        return None, {}, math.nan
    confirmed = []
    for key in finalists:
        reps = recorded[key]
        correct = None if plan.rho is not None else [[c == "1" for c in str(r["correct"])] for r in reps]
        confirmed.append(FinalistRuns(str(finalists.index(key)), [float(r["accuracy"]) for r in reps], correct,
                                      float(np.median([r["images_per_second"] for r in reps])),
                                      float(np.mean([r["train_seconds"] for r in reps])),
                                      int(reps[0]["trainable_params"])))
    decision = decide(confirmed, margin=plan.margin, rho=plan.rho, seed=seed)
    scores = {k: list(f.scores) for k, f in zip(finalists, confirmed, strict=True)}
    seconds = float(sum(r["train_seconds"] for reps in recorded.values() for r in reps))
    return decision, scores, seconds


def _tau(order: list[float], truth: list[float]) -> float:
    return float(stats.kendalltau(order, truth).statistic) if len(order) >= 2 else math.nan


def seed_rows(name: str, plans: list[SeedPlan], runs: pd.DataFrame, truth: Truth) -> pd.DataFrame:
    """One row per seed: each pick's regret and tie, the outcome and whether it is right, taus and compute."""
    rows: list[dict[str, Any]] = []
    best = truth.best
    for plan in plans:
        row: dict[str, Any] = {"dataset": name, "seed": plan.seed, "note": plan.note,
                               "search_seconds": plan.search_seconds,
                               "stage_budget_seconds": SHARE * plan.search_seconds if plan.plan else 0.0}
        confirmed, outcome, right, seconds = plan.today, "skipped", math.nan, 0.0
        hybrid = plan.hybrid.today if plan.hybrid else plan.today
        if plan.hybrid and plan.hybrid.plan is not None:
            made, _, row["hybrid_stage_seconds"] = stage_decision(plan.seed, plan.hybrid.plan, plan.hybrid.finalists,
                                                                  runs)
            if made is None:
                continue  # not recorded yet
            hybrid = plan.hybrid.finalists[int(made.recommended)]
            row["hybrid_outcome"] = made.outcome
        row["hybrid_explore_seconds"] = plan.hybrid.explore_seconds if plan.hybrid else 0.0
        if plan.plan is not None:
            decision, scores, seconds = stage_decision(plan.seed, plan.plan, plan.finalists, runs)
            if decision is None:
                continue  # not recorded yet
            confirmed = plan.finalists[int(decision.recommended)]
            outcome = decision.outcome
            if all(truth.has(k) for k in plan.finalists):
                leader = plan.finalists[int(decision.best_mean)]
                right = float(all(truth.verdict(leader, plan.finalists[int(c.other)]) == c.verdict
                                  for c in decision.comparisons))
                truths = [truth.mean(k) for k in plan.finalists]
                row["tau_search"] = _tau(list(plan.search_values), truths)
                row["tau_confirmed"] = _tau([float(np.mean(scores[k])) for k in plan.finalists], truths)
        row.update(outcome=outcome, outcome_right=right, stage_seconds=seconds, repeats=plan.plan.repeats
                   if plan.plan else 0, finalists=len(plan.finalists))
        for pick, key in zip(PICKS, (plan.today, confirmed, plan.control, hybrid), strict=True):
            ok = best is not None and truth.has(key)
            regret = 100 * (truth.mean(best) - truth.mean(key)) if ok and best is not None else math.nan
            row[f"{pick}_regret"] = regret
            row[f"{pick}_tie"] = float(regret <= 100 * MARGIN) if ok else math.nan
            row[f"{pick}_pick"] = "/".join(str(v) for v in key)
        rows.append(row)
    return pd.DataFrame(rows)


def summary(seeds: pd.DataFrame, truths: dict[str, Truth]) -> pd.DataFrame:
    """One row per dataset (medians over seeds)."""
    out = []
    for name, group in seeds.groupby("dataset", sort=False):
        truth = truths[str(name)]
        best = truth.best
        best = truth.best
        row: dict[str, Any] = {"dataset": name, "seeds": len(group), "truth_strategies": len(truth.means),
                               "truth_best": "/".join(map(str, best)) if best else "",
                               "truth_best_acc": truth.mean(best) if best else math.nan,
                               "truth_best_se_pt": 100 * truth.se(best) if best else math.nan}
        for pick in PICKS:
            row[f"{pick}_regret_median"] = group[f"{pick}_regret"].median()
            row[f"{pick}_regret_mean"] = group[f"{pick}_regret"].mean()
            row[f"{pick}_tie_share"] = group[f"{pick}_tie"].mean()
        for outcome in ("clear leader", "practically equivalent", "undecided", "skipped"):
            hit = group[group["outcome"] == outcome]
            row[f"n_{outcome}"] = len(hit)
            row[f"right_{outcome}"] = hit["outcome_right"].sum() if outcome != "skipped" else math.nan
        for col in ("tau_search", "tau_confirmed"):
            row[f"{col}_median"] = group[col].median() if col in group else math.nan
            row[f"{col}_mean"] = group[col].mean() if col in group else math.nan
        row["search_seconds_median"] = group["search_seconds"].median()
        row["stage_budget_seconds_median"] = group["stage_budget_seconds"].median()
        row["stage_seconds_median"] = group["stage_seconds"].median()
        row["hybrid_explore_seconds_median"] = group["hybrid_explore_seconds"].median()
        row["hybrid_planned"] = int(group["hybrid_outcome"].notna().sum()) if "hybrid_outcome" in group else 0
        out.append(row)
    return pd.DataFrame(out)


CONTRASTS = (("confirmed", "today"), ("control", "today"), ("hybrid", "today"), ("confirmed", "control"),
             ("hybrid", "confirmed"), ("hybrid", "control"))


def contrasts(seeds: pd.DataFrame, truths: dict[str, Truth]) -> pd.DataFrame:
    """Whether the truth can tell two picking rules apart: one row per dataset and pair of rules.

    The statistic is the mean over seeds of the truth's paired difference between the two rules' picks,
    computed on each truth draw separately (a linear contrast of the strategies' truths, so the draws stay
    paired), with the same corrected resampled t interval as :meth:`Truth.interval` over the draws. A rule
    is established better (or worse) when the whole 95% interval is above (below) zero; "not resolved"
    otherwise. Where every seed picks the same strategy under both rules the difference is exactly 0.
    """
    out = []
    for name, group in seeds.groupby("dataset", sort=False):
        truth = truths[str(name)]
        table: Any = truth.table
        for a, b in CONTRASTS:
            per_draw = np.mean([table.loc[_parse(row[f"{a}_pick"])].to_numpy(dtype=float)
                                - table.loc[_parse(row[f"{b}_pick"])].to_numpy(dtype=float)
                                for _, row in group.iterrows()], axis=0)
            j = per_draw.size
            se = math.sqrt((1 / j + truth.ratio) * float(np.var(per_draw, ddof=1)))
            half = float(stats.t.ppf(0.975, j - 1)) * se
            mean = float(per_draw.mean())
            verdict = "better" if mean - half > 0 else "worse" if mean + half < 0 else "not resolved"
            out.append({"dataset": name, "rule": LABELS[a], "against": LABELS[b], "mean_pt": 100 * mean,
                        "low_pt": 100 * (mean - half), "high_pt": 100 * (mean + half), "verdict": verdict})
    return pd.DataFrame(out)


def _parse(text: str) -> Key:
    backbone, depth, width, lr = str(text).split("/")
    return (backbone, float(depth), int(width), float(lr))


def _md(frame: pd.DataFrame) -> str:
    """A Markdown table (pandas' ``to_markdown`` needs ``tabulate``, which the project does not require)."""
    def cell(value: Any) -> str:
        return f"{value:.2f}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(frame.columns) + " |", "|" + "---|" * len(frame.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines)


def markdown(frame: pd.DataFrame, contrast: pd.DataFrame) -> str:
    """The README's tables from the summary and the contrasts."""
    regret = frame[["dataset", "seeds", "truth_best", "truth_best_acc", "truth_best_se_pt"]
                   + [f"{p}_regret_median" for p in PICKS] + [f"{p}_regret_mean" for p in PICKS]
                   + [f"{p}_tie_share" for p in PICKS]]
    outcomes = frame[["dataset"] + [c for c in frame.columns if c.startswith(("n_", "right_"))]]
    rest = frame[["dataset", "tau_search_median", "tau_confirmed_median", "tau_search_mean", "tau_confirmed_mean",
                  "search_seconds_median", "stage_budget_seconds_median", "stage_seconds_median",
                  "hybrid_explore_seconds_median", "hybrid_planned"]]
    return "\n\n".join(_md(t) for t in (regret, outcomes, rest, contrast)) + "\n"


def figure(seeds: pd.DataFrame, path: Any) -> None:
    """Regret of each pick per dataset, one dot per seed (matplotlib, from the ``bench`` extra)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(dict.fromkeys(seeds["dataset"]))
    fig, axes = plt.subplots(1, len(names), figsize=(5 * len(names), 3.8), squeeze=False)
    rng = np.random.default_rng(0)
    for ax, name in zip(axes[0], names, strict=True):
        group = seeds[seeds["dataset"] == name]
        for i, pick in enumerate(PICKS):
            values = group[f"{pick}_regret"].dropna().to_numpy()
            ax.scatter(i + rng.uniform(-0.15, 0.15, values.size), values, s=14, alpha=0.6)
            if values.size:
                ax.hlines(np.median(values), i - 0.3, i + 0.3, color="black")
        ax.set_xticks(range(len(PICKS)), [LABELS[p].replace(", ", ",\n") for p in PICKS])
        ax.set_title(name)
        ax.set_ylabel("regret against the truth's best (points)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_tables(plans: dict[str, list[SeedPlan]], runs: pd.DataFrame, draws: int) -> None:
    """Write ``seeds.csv``, ``summary.csv``, ``results.md`` and ``regret.png`` (``benchmarks/decision_quality/``)."""
    from .decision_quality import OUT

    if runs.empty:
        print("no runs recorded yet")
        return
    truths = {name: Truth(runs[runs["dataset"] == name], draws) for name in plans}
    frames = [seed_rows(name, p, runs[runs["dataset"] == name], truths[name]) for name, p in plans.items()]
    seeds = pd.concat([f for f in frames if not f.empty], ignore_index=True) if any(
        not f.empty for f in frames) else pd.DataFrame()
    if seeds.empty:
        print("no seed has all its stage runs yet")
        return
    table, contrast = summary(seeds, truths), contrasts(seeds, truths)
    for file, frame in (("seeds.csv", seeds), ("summary.csv", table), ("contrasts.csv", contrast)):
        buffer = io.StringIO()
        frame.to_csv(buffer, index=False, float_format="%.6g")
        atomic_write_text(OUT / file, buffer.getvalue())
    atomic_write_text(OUT / "results.md", markdown(table, contrast))
    figure(seeds, OUT / "regret.png")
    print(markdown(table, contrast))
