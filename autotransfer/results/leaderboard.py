"""The leaderboard: one row per trial, ranked, read from the study's storage only.

Columns follow Optuna's ``trials_dataframe`` vocabulary (``number``, ``value``, ``state``,
``params_*``) and name the metrics plainly::

    rank, number, state, value, params_backbone, params_freeze_depth, params_head_width,
    params_learning_rate, [params_<recipe dimension> ...], family, val_accuracy,
    val_balanced_accuracy, val_macro_f1, epochs, seconds, trainable_params, total_params,
    images_per_second, stop_reason, baseline

A recipe dimension (:mod:`autotransfer.space.dimensions`) gets a ``params_`` column when any trial
sampled it. ``family`` comes from the network each trial built (:func:`~autotransfer.storage.records.trial_family`);
``epochs`` is the number each trial ran; ``images_per_second`` the trained network's inference throughput
on images on the machine that ran it (complete trials).

Ranking: complete trials first by objective value, then pruned, running and failed trials,
each by the last validation value they reported.
"""

from __future__ import annotations

import optuna
import pandas as pd

from autotransfer.settings import METRICS
from autotransfer.space.dimensions import DIMENSIONS
from autotransfer.space.strategy import CORE
from autotransfer.storage.records import TrialAttr, stop_reason, study_metric, trial_family

__all__ = ["LEADERBOARD_COLUMNS", "leaderboard"]

_HEAD = ["rank", "number", "state", "value"]
_ATTRS = [TrialAttr.FAMILY, *(TrialAttr.val(m) for m in METRICS), TrialAttr.EPOCHS_RUN, TrialAttr.SECONDS,
          TrialAttr.TRAINABLE_PARAMS, TrialAttr.TOTAL_PARAMS, TrialAttr.IMAGES_PER_SECOND, TrialAttr.STOP_REASON,
          TrialAttr.BASELINE]
LEADERBOARD_COLUMNS = [*_HEAD, *(f"params_{name}" for name in CORE), *_ATTRS]
"""The columns of every leaderboard; recipe dimensions a study sampled add ``params_`` columns after the core ones."""
_STATE_ORDER = {"COMPLETE": 0, "PRUNED": 1, "RUNNING": 2, "WAITING": 3, "FAIL": 4}


def leaderboard(study: optuna.Study, metric: str | None = None) -> pd.DataFrame:
    """Build the ranked leaderboard of a study.

    Args:
        study: The study (any storage).
        metric: The validation metric the study maximises (``accuracy``, ...); read from the
            study's stored configuration when None, else ``accuracy``.

    Returns:
        A DataFrame with :data:`LEADERBOARD_COLUMNS` (and a ``params_`` column per recipe dimension
        the study sampled), one row per trial, best first. Empty (with those columns) for a study
        without trials.
    """
    metric = metric or study_metric(study)
    frame = study.trials_dataframe(attrs=("number", "value", "state", "params", "user_attrs"))
    if frame.empty:
        return pd.DataFrame(columns=LEADERBOARD_COLUMNS)
    frame = frame.rename(columns=lambda c: c.removeprefix("user_attrs_"))
    recipe = [f"params_{name}" for name in DIMENSIONS if name not in CORE and f"params_{name}" in frame]
    columns = [*LEADERBOARD_COLUMNS[:len(_HEAD) + len(CORE)], *recipe, *_ATTRS]
    for column in columns:
        if column not in frame:
            frame[column] = pd.NA
    frame[TrialAttr.BASELINE] = frame[TrialAttr.BASELINE].astype("boolean").fillna(False).astype(bool)
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    frame[TrialAttr.STOP_REASON] = frame["number"].map({n: stop_reason(t) for n, t in trials.items()})
    frame[TrialAttr.FAMILY] = frame["number"].map({n: trial_family(t) or pd.NA for n, t in trials.items()})
    score = pd.to_numeric(frame["value"], errors="coerce").fillna(
        pd.to_numeric(frame[TrialAttr.val(metric)], errors="coerce"))
    frame = frame.assign(_state=frame["state"].map(_STATE_ORDER).fillna(9), _score=score)
    frame = frame.sort_values(["_state", "_score", "number"], ascending=[True, False, True],
                              na_position="last", kind="stable")
    frame["rank"] = range(1, len(frame) + 1)
    return frame[columns].reset_index(drop=True)
