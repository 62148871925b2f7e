"""The leaderboard: one row per trial, ranked, read from the study's storage only.

Columns follow Optuna's ``trials_dataframe`` vocabulary (``number``, ``value``, ``state``,
``params_*``) and name the metrics plainly::

    rank, number, state, value, params_backbone, params_freeze_depth, params_head_width,
    params_learning_rate, family, val_accuracy, val_balanced_accuracy, val_macro_f1, epochs,
    seconds, trainable_params, total_params, stop_reason, baseline

Ranking: complete trials first by objective value, then pruned, running and failed trials,
each by the last validation value they reported.
"""

from __future__ import annotations

import optuna
import pandas as pd

from .storage import CONFIG_ATTR, stop_reason

__all__ = ["LEADERBOARD_COLUMNS", "leaderboard"]

_PARAMS = ["params_backbone", "params_freeze_depth", "params_head_width", "params_learning_rate"]
_ATTRS = ["family", "val_accuracy", "val_balanced_accuracy", "val_macro_f1", "epochs", "seconds",
          "trainable_params", "total_params", "stop_reason", "baseline"]
LEADERBOARD_COLUMNS = ["rank", "number", "state", "value", *_PARAMS, *_ATTRS]
_STATE_ORDER = {"COMPLETE": 0, "PRUNED": 1, "RUNNING": 2, "WAITING": 3, "FAIL": 4}


def leaderboard(study: optuna.Study, metric: str | None = None) -> pd.DataFrame:
    """Build the ranked leaderboard of a study.

    Args:
        study: The study (any storage).
        metric: The validation metric the study maximises (``accuracy``, ...); read from the
            study's stored configuration when None, else ``accuracy``.

    Returns:
        A DataFrame with :data:`LEADERBOARD_COLUMNS`, one row per trial, best first.
        Empty (with those columns) for a study without trials.
    """
    if metric is None:
        metric = study.user_attrs.get(CONFIG_ATTR, {}).get("budget", {}).get("metric", "accuracy")
    frame = study.trials_dataframe(attrs=("number", "value", "state", "params", "user_attrs"))
    if frame.empty:
        return pd.DataFrame(columns=LEADERBOARD_COLUMNS)
    frame = frame.rename(columns=lambda c: c.removeprefix("user_attrs_"))
    for column in LEADERBOARD_COLUMNS:
        if column not in frame:
            frame[column] = pd.NA
    frame["baseline"] = frame["baseline"].astype("boolean").fillna(False).astype(bool)
    reasons = {t.number: stop_reason(t) for t in study.get_trials(deepcopy=False)}
    frame["stop_reason"] = frame["number"].map(reasons)
    score = pd.to_numeric(frame["value"], errors="coerce").fillna(
        pd.to_numeric(frame[f"val_{metric}"], errors="coerce"))
    frame = frame.assign(_state=frame["state"].map(_STATE_ORDER).fillna(9), _score=score)
    frame = frame.sort_values(["_state", "_score", "number"], ascending=[True, False, True],
                              na_position="last", kind="stable")
    frame["rank"] = range(1, len(frame) + 1)
    return frame[LEADERBOARD_COLUMNS].reset_index(drop=True)
