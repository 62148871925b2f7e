"""The strong fixed baseline: AutoGluon's image recipe, run beside the search, outside its space.

A search that cannot beat a good fixed recipe has not earned its compute. Every new study (unless
``--no-baseline``) runs :data:`~autotransfer.space.strategy.STRONG_BASELINE_RECIPE` on the space's first
backbone once on the search's own split, and again on every confirmation repeat (same seeds and splits
as the finalists, so the comparison is paired). The runs are trials of a companion study,
``<name>.baseline``, in the same storage, like the confirmation runs: enqueued with their repeat, so a
killed run resumes and the search's sampler, pruner and ``--n-trials`` never see them.

Whether a study has a strong baseline is fixed when it is created (its stored configuration's
``baseline`` record carries ``strong``); a study stored by an earlier release has none and resumes as it was.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, fields, replace
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from autotransfer import interrupt
from autotransfer.errors import TrialFailed
from autotransfer.models.network import BackboneWithHead
from autotransfer.space.strategy import Strategy
from autotransfer.storage.records import (
    BASELINE_SUFFIX,
    STRONG_BASELINE_KEY,
    StudyAttr,
    TrialAttr,
    companion_study,
    counts_towards_n_trials,
    open_companion,
    read_config,
)
from autotransfer.study.confirm import ConfirmPlan
from autotransfer.study.objective import Objective, trial_seed
from autotransfer.study.recovery import reclaim_stale_trials

__all__ = ["SEARCH_SPLIT", "StrongBaselineObjective", "run_strong_baseline"]

logger = logging.getLogger(__name__)

SEARCH_SPLIT = -1
"""The ``repeat`` attribute of the run on the search's own split and seed (confirmation repeats are 0, 1, ...)."""


@dataclass
class StrongBaselineObjective(Objective):
    """Train the strong baseline's fixed strategy on the search split or on one confirmation repeat.

    Attributes:
        strategy: The fixed strategy.
        plan: The confirmation plan, whose repeats give the seeds and splits (None: search split only).
    """

    strategy: Strategy | None = None
    plan: ConfirmPlan | None = None

    def __call__(self, trial: optuna.Trial) -> float:
        repeat = int(trial.user_attrs.get(TrialAttr.REPEAT, SEARCH_SPLIT))
        if repeat == SEARCH_SPLIT or self.plan is None:
            return Objective.__call__(self, trial)
        return Objective.__call__(replace(self, dataset=self.plan.dataset(self.dataset, repeat)), trial)

    def seed_of(self, trial: optuna.Trial) -> int:
        repeat = int(trial.user_attrs.get(TrialAttr.REPEAT, SEARCH_SPLIT))
        if repeat == SEARCH_SPLIT or self.plan is None:
            return trial_seed(self.settings.seed, 0)  # the seed of the search's first trial
        return self.plan.seeds[repeat]

    def strategy_of(self, trial: optuna.Trial) -> Strategy:
        assert self.strategy is not None  # set by run_strong_baseline
        return self.strategy

    def after_training(self, trial: optuna.Trial, net: BackboneWithHead, data_config: dict[str, Any],
                       score: float) -> None:
        return None  # never a search trial: it is not scored on test


def strong_baseline_params(study: optuna.Study) -> dict[str, Any] | None:
    """The strong baseline's parameters stored when ``study`` was created, or None (none planned)."""
    record = read_config(study).get("baseline")
    strong = record.get(STRONG_BASELINE_KEY) if isinstance(record, dict) else None
    return dict(strong) if isinstance(strong, dict) else None


def _plan(study: optuna.Study) -> ConfirmPlan | None:
    confirm = companion_study(study)
    stored = None if confirm is None else confirm.user_attrs.get(StudyAttr.CONFIRM_PLAN)
    return ConfirmPlan(**stored) if isinstance(stored, dict) else None


def run_strong_baseline(study: optuna.Study, objective: Objective, *, deadline: float | None = None,
                        callbacks: list[Any] | None = None) -> dict[str, Any] | None:
    """Run (or resume) the strong baseline's runs of ``study`` and store their summary.

    Args:
        study: The search study.
        objective: The search's objective (dataset, budget, zoo, settings, runtime, device).
        deadline: ``time.monotonic()`` after which no repeat starts (the end of ``--timeout``); the run on
            the search split always runs (one trial, like the textbook baseline's), repeats left are
            recorded as skipped and run on resume.
        callbacks: Optuna callbacks after every run.

    Returns:
        The summary stored as ``StudyAttr.STRONG_BASELINE`` (see :func:`summarise`), or None when the
        study has no strong baseline.

    Raises:
        Interrupted: SIGINT or SIGTERM (the running run is recorded as interrupted and runs again on resume).
    """
    params = strong_baseline_params(study)
    if params is None:
        return None
    plan = _plan(study)
    companion = open_companion(study, BASELINE_SUFFIX)
    reclaim_stale_trials(companion)
    wanted = [SEARCH_SPLIT, *(range(plan.repeats) if plan is not None else ())]
    taken = {t.user_attrs.get(TrialAttr.REPEAT) for t in companion.get_trials(deepcopy=False)
             if counts_towards_n_trials(t) or t.state in (TrialState.RUNNING, TrialState.WAITING)}
    for repeat in (r for r in wanted if r not in taken):
        companion.enqueue_trial({}, user_attrs={TrialAttr.REPEAT: repeat})
    runner = StrongBaselineObjective(**{f.name: getattr(objective, f.name) for f in fields(Objective)},
                                     strategy=Strategy.from_params(params), plan=plan)
    runner = replace(runner, on_epoch=None)  # progress hooks expect a search trial
    skipped = ""
    while any(t.state == TrialState.WAITING for t in companion.get_trials(deepcopy=False)):
        interrupt.check()
        if deadline is not None and time.monotonic() > deadline and _search_run_done(companion):
            skipped = "--timeout ran out before its repeats; they run when the study resumes"
            logger.info("Strong baseline: %s.", skipped)
            break
        companion.optimize(runner, n_trials=1, catch=(TrialFailed,), callbacks=[_log_run, *(callbacks or [])])
    interrupt.check()
    summary = summarise(params, companion.get_trials(deepcopy=False))
    summary.update(rho=plan.rho if plan is not None else None, margin=plan.margin if plan is not None else None,
                   skipped=skipped)
    study.set_user_attr(StudyAttr.STRONG_BASELINE, summary)
    return summary


def _search_run_done(companion: optuna.Study) -> bool:
    return any(t.user_attrs.get(TrialAttr.REPEAT) == SEARCH_SPLIT and t.state.is_finished()
               for t in companion.get_trials(deepcopy=False))


def summarise(params: dict[str, Any], trials: list[FrozenTrial]) -> dict[str, Any]:
    """The stored summary of the strong baseline's runs.

    Returns:
        ``{"params", "search": {"state", "value", "seconds", "stop_reason", "predictions",
        "trainable_params"} or None, "repeats": {repeat index (str): val value}}`` (complete repeats
        only); :func:`run_strong_baseline` adds the plan's ``rho`` and ``margin`` (None without one)
        and ``skipped`` (why runs are missing, or "").
    """
    search = next((t for t in trials if t.user_attrs.get(TrialAttr.REPEAT) == SEARCH_SPLIT
                   and t.state in (TrialState.COMPLETE, TrialState.FAIL, TrialState.PRUNED)), None)
    repeats = {str(t.user_attrs[TrialAttr.REPEAT]): float(t.value) for t in trials
               if t.state == TrialState.COMPLETE and t.value is not None
               and int(t.user_attrs.get(TrialAttr.REPEAT, SEARCH_SPLIT)) >= 0}
    record = None
    if search is not None:
        record = {"state": search.state.name, "value": search.value,
                  "seconds": search.user_attrs.get(TrialAttr.SECONDS),
                  "stop_reason": search.user_attrs.get(TrialAttr.STOP_REASON, ""),
                  "predictions": search.user_attrs.get(TrialAttr.VAL_PREDICTIONS),
                  "trainable_params": search.user_attrs.get(TrialAttr.TRAINABLE_PARAMS)}
    return {"params": params, "search": record, "repeats": repeats}


def _log_run(study: optuna.Study, trial: FrozenTrial) -> None:
    """One line per strong-baseline run."""
    repeat = int(trial.user_attrs.get(TrialAttr.REPEAT, SEARCH_SPLIT))
    where = "search split" if repeat == SEARCH_SPLIT else f"repeat {repeat}"
    value = "" if trial.value is None else f" val {trial.value:.4f}"
    logger.info("strong baseline (AutoGluon recipe) on the %s: %s%s in %.1f s", where, trial.state.name.lower(),
                value, float(trial.user_attrs.get(TrialAttr.SECONDS, 0.0)))
