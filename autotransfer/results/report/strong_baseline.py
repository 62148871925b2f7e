"""The report's comparison with the strong fixed baseline (AutoGluon's recipe), from the stored summary.

Two paired comparisons, each where it applies:

* On the search's own split: the recommended trial's val score against the baseline's run with the
  search's seed, and, for accuracy, the exact McNemar test on their paired val predictions
  (McNemar, 1947; ``scipy.stats.binomtest``).
* On the confirmation repeats (same seeds and splits as the finalists): the recommended finalist's
  mean over repeats against the baseline's, with the Bayesian correlated t-test of the decision
  (Corani and Benavoli, Machine Learning 2015) when the repeats re-drew the split, else the plain
  mean difference.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from autotransfer.results.decision import correlated_t_posterior
from autotransfer.results.report.evidence import Evidence, mcnemar
from autotransfer.storage.records import StudyAttr, stored_decision

__all__ = ["strong_baseline_comparison"]


def strong_baseline_comparison(ev: Evidence) -> dict[str, Any] | None:
    """The strong-baseline section of the report, or None when the study ran none.

    Args:
        ev: The report's :class:`~autotransfer.results.report.evidence.Evidence`.

    Returns:
        ``{"params", "value", "state", "stop_reason", "seconds", "gain", "mcnemar": {...} | None,
        "confirmed": {...} | None}``; ``gain`` is the recommended trial's val score minus the
        baseline's on the search split (None when either is missing).
    """
    record = ev.study.user_attrs.get(StudyAttr.STRONG_BASELINE)
    if not isinstance(record, dict):
        return None
    search = record.get("search") or {}
    value = search.get("value")
    out: dict[str, Any] = {"params": record.get("params", {}), "value": value, "state": search.get("state"),
                           "stop_reason": search.get("stop_reason", ""), "seconds": search.get("seconds"),
                           "gain": None, "mcnemar": None, "confirmed": _confirmed(ev, record),
                           "skipped": record.get("skipped", "")}
    if ev.best is not None and ev.best.value is not None and value is not None:
        out["gain"] = float(ev.best.value) - float(value)
        out["mcnemar"] = mcnemar(ev.val_labels, ev.predictions.get(ev.best.number), search.get("predictions")) or None
    return out


def _confirmed(ev: Evidence, record: dict[str, Any]) -> dict[str, Any] | None:
    """The recommended finalist against the baseline over the confirmation repeats both completed."""
    decision = stored_decision(ev.study)
    if not isinstance(decision, dict):
        return None
    pick = next((f for f in decision.get("finalists", []) if f.get("trial") == decision.get("recommended_trial")),
                None)
    repeats = record.get("repeats") or {}
    if pick is None:
        return None
    pairs = [(float(score), float(repeats[str(r)])) for r, score in enumerate(pick.get("scores", []))
             if str(r) in repeats]
    if len(pairs) < 2:
        return None
    differences = [a - b for a, b in pairs]
    out: dict[str, Any] = {"repeats": len(pairs), "pick_mean": float(np.mean([a for a, _ in pairs])),
                           "baseline_mean": float(np.mean([b for _, b in pairs])),
                           "difference": float(np.mean(differences)), "test": None}
    rho, margin = record.get("rho"), record.get("margin")
    if rho is not None and margin is not None:
        lead, tie, trail, low, high = correlated_t_posterior(differences, float(rho), float(margin))
        out["test"] = {"p_lead": lead, "p_tie": tie, "p_trail": trail, "low": low, "high": high,
                       "margin": float(margin)}
    return out
