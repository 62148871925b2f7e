"""The evidence a report shows, computed from the study's storage only (no model, no images).

Tables are pandas DataFrames; metrics come from scikit-learn, the paired test from SciPy. The
test split appears only for the final pick: the objective evaluates a trial on test when it
becomes the best so far and stores that under the study attribute ``StudyAttr.TEST``; the
report shows it only when that trial is still the best.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
import optuna
import pandas as pd
from optuna.trial import FrozenTrial, TrialState
from scipy.stats import binomtest
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

from autotransfer.results.leaderboard import leaderboard
from autotransfer.settings import METRICS
from autotransfer.storage.records import (
    StudyAttr,
    TrialAttr,
    best_trial,
    read_config,
    recommended_trial,
    stop_reason,
    stored_decision,
    trial_family,
)

__all__ = ["Evidence", "collect", "family_ranking", "learning_curves", "mcnemar", "pareto_front", "per_class_metrics",
           "snapshot"]


@dataclass
class Evidence:
    """Everything the report needs, read from one study.

    Attributes:
        study: An in-memory snapshot of the study (:func:`snapshot`), without val predictions.
        config: The stored configuration in the current layout (:func:`~autotransfer.storage.records.read_config`).
        metric: The objective's val metric name (``accuracy``, ...).
        trials: All trials, in number order.
        board: The leaderboard (:func:`autotransfer.leaderboard`).
        classes: Class names; labels index this list.
        val_labels: True class index of every val image, in split order (empty if not stored).
        best: The recommended trial (the confirmation's pick, else the best complete trial), or None.
        predictions: Val predictions (class indices in split order) of the trials that stored them.
        now: When the evidence was read (running trials' elapsed time is measured to it).
    """

    study: optuna.Study
    config: dict[str, Any]
    metric: str
    trials: list[FrozenTrial]
    board: pd.DataFrame
    classes: list[str]
    val_labels: list[int]
    best: FrozenTrial | None
    predictions: dict[int, list[int]] = field(default_factory=dict)
    now: datetime = field(default_factory=datetime.now)

    @property
    def decision(self) -> dict[str, Any] | None:
        """The confirmation's stored decision (:mod:`autotransfer.study.confirm`), or None."""
        return stored_decision(self.study)

    @property
    def optuna_best(self) -> FrozenTrial | None:
        """Optuna's single best val trial (shown beside the recommendation)."""
        return best_trial(self.study)

    @property
    def test(self) -> dict[str, Any] | None:
        """The stored test-split figures, if they belong to the recommended trial (scored once, after the decision)."""
        decided = (self.decision or {}).get("test")
        if isinstance(decided, dict) and self.best is not None and decided.get("trial") == self.best.number:
            return dict(decided)
        record = self.study.user_attrs.get(StudyAttr.TEST)
        if record is None or self.best is None or record.get("trial") != self.best.number:
            return None
        return dict(record)

    @property
    def refit(self) -> dict[str, Any] | None:
        """The latest refit (``autotransfer refit``): trial, training, held-out split, metrics, predictions."""
        record = self.study.user_attrs.get(StudyAttr.REFIT)
        return dict(record) if isinstance(record, dict) else None

    @property
    def screen(self) -> dict[str, Any] | None:
        """The backbone screen run before the first trial (``search(..., screen=K)``), or None."""
        record = self.study.user_attrs.get(StudyAttr.SCREEN)
        return dict(record) if isinstance(record, dict) else None

    @property
    def excluded(self) -> list[list[str]]:
        """``[path, reason]`` of every file excluded from the dataset."""
        return list(self.study.user_attrs.get(StudyAttr.EXCLUDED, []))


def snapshot(study: optuna.Study) -> tuple[optuna.Study, dict[int, list[int]]]:
    """Copy a study into memory once, setting the val predictions aside.

    Written here because the report needs one consistent view: a running search keeps writing
    to the storage while the report is drawn, and Optuna's plots each re-read (and deep-copy)
    every trial, which costs seconds at 1,000 trials carrying their val predictions.

    Args:
        study: The study, in any storage.

    Returns:
        ``(copy, predictions)``: an in-memory study with the same name, direction, user attributes
        and trials (same numbers, states, times and values), and ``{trial number: val predictions}``.
    """
    trials = study.get_trials(deepcopy=False)
    predictions = {t.number: list(t.user_attrs[TrialAttr.VAL_PREDICTIONS]) for t in trials
                   if TrialAttr.VAL_PREDICTIONS in t.user_attrs}
    storage = optuna.storages.InMemoryStorage()
    quiet = logging.getLogger("optuna.storages._in_memory")  # it logs every new in-memory study at INFO
    was_disabled, quiet.disabled = quiet.disabled, True
    try:
        storage.create_new_study(study.directions, study.study_name)
    finally:
        quiet.disabled = was_disabled
    copy = optuna.Study(study_name=study.study_name, storage=storage)
    for key, value in study.user_attrs.items():
        copy.set_user_attr(key, value)
    copy.add_trials([FrozenTrial(
        number=t.number, state=t.state, value=None, values=t.values, datetime_start=t.datetime_start,
        datetime_complete=t.datetime_complete, params=t.params, distributions=t.distributions,
        user_attrs={k: v for k, v in t.user_attrs.items() if k != TrialAttr.VAL_PREDICTIONS},
        system_attrs=t.system_attrs,
        intermediate_values=t.intermediate_values, trial_id=t._trial_id) for t in trials])
    return copy, predictions


def collect(study: optuna.Study) -> Evidence:
    """Read a study's trials, leaderboard and stored configuration, once.

    Args:
        study: Any Optuna study; one made by :func:`autotransfer.search` fills every section.

    Returns:
        The :class:`Evidence`, over an in-memory :func:`snapshot` of the study.
    """
    study, predictions = snapshot(study)
    config = read_config(study)
    metric = str(config.get("budget", {}).get("metric", "accuracy"))
    trials = study.get_trials(deepcopy=False)
    best = recommended_trial(study)
    split = study.user_attrs.get(StudyAttr.SPLIT, {})
    return Evidence(study=study, config=config, metric=metric, trials=trials,
                    board=leaderboard(study, metric), classes=list(config.get("dataset", {}).get("classes", [])),
                    val_labels=[int(label) for _, label in split.get("val", [])], best=best, predictions=predictions)


def trial_seconds(trial: FrozenTrial, now: datetime) -> float:
    """Wall-clock seconds of a trial: its recorded ``seconds``, else start to end (or to ``now``)."""
    if TrialAttr.SECONDS in trial.user_attrs:
        return float(trial.user_attrs[TrialAttr.SECONDS])
    if trial.datetime_start is None:
        return 0.0
    return ((trial.datetime_complete or now) - trial.datetime_start).total_seconds()


def summary(ev: Evidence) -> dict[str, Any]:
    """Section 1: trial counts, compute time, the recommended strategy and its lead.

    The lead is measured against the runner-up: the best complete trial of another strategy
    family (the second-best trial when every trial is of one family). For accuracy the gap is
    also given in val images, with the exact McNemar test on the two trials' paired val
    predictions (McNemar, 1947; the binomial form, ``scipy.stats.binomtest``).
    """
    counts = {state.name: 0 for state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL,
                                          TrialState.RUNNING, TrialState.WAITING)}
    for trial in ev.trials:
        counts[trial.state.name] = counts.get(trial.state.name, 0) + 1
    out: dict[str, Any] = {"counts": counts, "n_trials": len(ev.trials),
                           "compute_seconds": sum(trial_seconds(t, ev.now) for t in ev.trials),
                           "best": None, "runner_up": None}
    if ev.best is None:
        return out
    best = ev.best
    out["best"] = _trial_row(best)
    complete = [t for t in ev.trials if t.state == TrialState.COMPLETE and t.value is not None and t is not best]
    others = [t for t in complete if trial_family(t) != trial_family(best)] or complete
    if not others:
        return out
    runner = max(others, key=lambda t: (t.value, -t.number))
    assert best.value is not None and runner.value is not None
    lead: dict[str, Any] = {**_trial_row(runner), "gap": best.value - runner.value,
                            "same_family": trial_family(runner) == trial_family(best)}
    lead.update(_paired_test(ev, best, runner) if ev.metric == "accuracy" else {})
    out["runner_up"] = lead
    return out


def _trial_row(trial: FrozenTrial) -> dict[str, Any]:
    attrs = trial.user_attrs
    return {"number": trial.number, "value": trial.value, "params": dict(trial.params),
            "family": trial_family(trial), "baseline": bool(attrs.get(TrialAttr.BASELINE, False)),
            **{k: attrs.get(k) for k in (*(TrialAttr.val(m) for m in METRICS), TrialAttr.SECONDS,
                                         TrialAttr.TRAINABLE_PARAMS, TrialAttr.EPOCHS_RUN)}}


def _paired_test(ev: Evidence, best: FrozenTrial, other: FrozenTrial) -> dict[str, Any]:
    """Exact McNemar test of two trials' val predictions; empty when they were not stored."""
    return mcnemar(ev.val_labels, ev.predictions.get(best.number), ev.predictions.get(other.number))


def mcnemar(labels: list[int], a: list[int] | None, b: list[int] | None) -> dict[str, Any]:
    """Exact McNemar test (McNemar, 1947; the binomial form, ``scipy.stats.binomtest``) of two runs' paired
    val predictions ``(N,)``: ``{"n_val", "gap_images", "only_best", "only_other", "p_value"}``, or ``{}``
    when either is missing or of another length."""
    if not labels or a is None or b is None or not len(a) == len(b) == len(labels):
        return {}
    truth = np.asarray(labels)
    right_a, right_b = np.asarray(a) == truth, np.asarray(b) == truth
    only_best, only_other = int(np.sum(right_a & ~right_b)), int(np.sum(~right_a & right_b))
    n = only_best + only_other
    p_value = float(binomtest(only_best, n, 0.5).pvalue) if n else 1.0
    return {"n_val": len(labels), "gap_images": only_best - only_other, "only_best": only_best,
            "only_other": only_other, "p_value": p_value}


def family_ranking(board: pd.DataFrame, confirmed: dict[str, float] | None = None) -> pd.DataFrame:
    """Section 2: one row per strategy family, ranked by its confirmed score, else its best complete trial.

    Args:
        board: The leaderboard.
        confirmed: The confirmation's mean score of each finalist family (None: no confirmation).

    Returns:
        Columns ``family, backbone, transfer, head, trials, complete, pruned, failed, best, median,
        mean_seconds, trainable_params, confirmed, basis`` (best and median over complete trials'
        objective values; ``mean_seconds`` over finished trials; ``trainable_params`` the median;
        ``confirmed`` the mean over the confirmation's repeats; ``basis`` ``"confirmed"`` or
        ``"search estimate"``). Confirmed families come first, by their confirmed mean.
    """
    columns = ["family", "backbone", "transfer", "head", "trials", "complete", "pruned", "failed", "best",
               "median", "mean_seconds", "trainable_params", "confirmed", "basis"]
    frame = board[board["family"].notna()]
    if frame.empty:
        return pd.DataFrame(columns=columns)
    value = pd.to_numeric(frame["value"], errors="coerce").where(frame["state"] == TrialState.COMPLETE.name)
    seconds = pd.to_numeric(frame["seconds"], errors="coerce")
    grouped = frame.assign(_value=value, _seconds=seconds,
                           _params=pd.to_numeric(frame["trainable_params"], errors="coerce")).groupby("family")
    table = pd.DataFrame({
        "trials": grouped.size(),
        "complete": grouped["state"].agg(lambda s: int((s == "COMPLETE").sum())),
        "pruned": grouped["state"].agg(lambda s: int((s == "PRUNED").sum())),
        "failed": grouped["state"].agg(lambda s: int((s == "FAIL").sum())),
        "best": grouped["_value"].max(),
        "median": grouped["_value"].median(),
        "mean_seconds": grouped["_seconds"].mean(),
        "trainable_params": grouped["_params"].median(),
    }).reset_index()
    parts = table["family"].str.split(" / ", n=2, expand=True).reindex(columns=range(3))
    table["backbone"], table["transfer"], table["head"] = parts[0], parts[1], parts[2]
    table["confirmed"] = table["family"].map(confirmed or {}).astype(float)
    table["basis"] = table["confirmed"].notna().map({True: "confirmed", False: "search estimate"})
    table = table.assign(_confirmed=table["confirmed"].notna()).sort_values(
        ["_confirmed", "confirmed", "best", "median", "family"], ascending=[False, False, False, False, True],
        na_position="last")
    return table[columns].reset_index(drop=True)


def learning_curves(trials: list[FrozenTrial]) -> pd.DataFrame:
    """Section 4: every reported intermediate value.

    Returns:
        Columns ``number, state, epoch, value, family, baseline``, one row per trial and epoch.
    """
    rows = [(t.number, t.state.name, int(epoch), float(value), trial_family(t),
             bool(t.user_attrs.get(TrialAttr.BASELINE, False)))
            for t in trials for epoch, value in sorted(t.intermediate_values.items())
            if value is not None and math.isfinite(value)]
    return pd.DataFrame(rows, columns=["number", "state", "epoch", "value", "family", "baseline"])


def pareto_front(value: pd.Series, cost: pd.Series) -> pd.Series:
    """Mark the trials no other trial beats on both value (higher) and cost (lower).

    Written here because Optuna's Pareto utilities (``plot_pareto_front``,
    ``Study.best_trials``) apply to multi-objective studies only, and this one is single-objective
    with cost as a recorded attribute.

    Args:
        value: Objective values (higher is better).
        cost: Costs (lower is better), same index.

    Returns:
        A boolean Series on the same index; rows with a missing value or cost are False.
    """
    known = pd.DataFrame({"value": value, "cost": cost}).dropna().sort_values(["cost", "value"],
                                                                             ascending=[True, False])
    on_front: list[Any] = []
    best = -math.inf
    for index, score in zip(known.index, known["value"], strict=True):
        if score > best:
            on_front.append(index)
            best = score
    return pd.Series(value.index.isin(on_front), index=value.index)


def per_class_metrics(classes: list[str], labels: list[int], predictions: list[int]
                      ) -> tuple[pd.DataFrame, np.ndarray]:
    """Section 7: precision, recall, F1 and support per class, and the confusion matrix.

    Args:
        classes: Class names (``K``).
        labels: True class indices, length ``N``.
        predictions: Predicted class indices, length ``N``.

    Returns:
        ``(table, matrix)``: a DataFrame with columns ``class, precision, recall, f1, support`` and
        the ``(K, K)`` confusion matrix (rows true, columns predicted; scikit-learn).

    Raises:
        ValueError: ``labels`` and ``predictions`` differ in length.
    """
    if len(labels) != len(predictions):
        raise ValueError(f"{len(labels)} labels but {len(predictions)} predictions")
    ks = list(range(len(classes)))
    precision, recall, f1, support = precision_recall_fscore_support(labels, predictions, labels=ks,
                                                                     zero_division=0)
    table = pd.DataFrame({"class": classes, "precision": precision, "recall": recall, "f1": f1,
                          "support": support})
    return table, confusion_matrix(labels, predictions, labels=ks)


def baseline_comparison(ev: Evidence) -> dict[str, Any] | None:
    """Section 8: the textbook baseline trial against the recommended strategy (None if not run)."""
    trial = next((t for t in ev.trials if t.user_attrs.get(TrialAttr.BASELINE)), None)
    if trial is None:
        return None
    row = _trial_row(trial)
    row["state"] = trial.state.name
    row["stop_reason"] = stop_reason(trial)
    row["gain"] = None
    if ev.best is not None and trial.state == TrialState.COMPLETE and trial.value is not None:
        assert ev.best.value is not None
        row["gain"] = ev.best.value - trial.value
        row.update({f"best_{k}": v for k, v in _paired_test(ev, ev.best, trial).items()})
    return row
