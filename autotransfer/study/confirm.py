"""The confirmation stage: train the finalists again on paired repeats, then decide how sure the answer is.

On small data the best val trial is often not the best strategy: one val set of a few hundred images
cannot separate strategies a point apart. After the search, the best complete trial of each of the top
``finalists`` strategy families is trained again on the full budget, without pruning, ``repeats`` times
with new seeds. Where autotransfer made the split and val is small (under 1,000 images), each repeat
also re-draws a stratified train/val split of train+val (the test split is never touched); a val folder
the user gave is kept (it may be a deliberate shift) unless ``resplit`` asks to pool it. The search trial
itself never counts as a repeat: its val images chose it. Every finalist sees the same seeds and splits,
so the comparisons are paired (:mod:`autotransfer.results.decision`).

The runs are trials of a companion study, ``<name>.confirm``, in the same storage: enqueued with fixed
parameters and (finalist, repeat) attributes, so any process can run them, heartbeats and stale-trial
retries apply, a killed run resumes without repeating a finished repeat, and the search's sampler,
pruner and ``--n-trials`` never see them. The plan (finalists, seeds, each repeat's split as key lists)
is stored with the companion study when the stage starts and reused on resume.

By default the stage spends at most ``confirm_share`` (half) of the compute the search spent: it picks
the repeats (2 to 5) and, if needed, fewer finalists to fit, from the finalists' measured trial seconds.
Repeats reuse the cached features and frozen-prefix activations, so they usually cost less than the
search trials did; once the planned repeats have run, their measured seconds decide how many more
repeats (up to 5 in all) still fit the same budget (:func:`extend_plan`).
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState

from autotransfer import interrupt
from autotransfer.data.dataset import ImageDataset, stratified_split
from autotransfer.errors import TrialFailed
from autotransfer.models.network import BackboneWithHead
from autotransfer.results.decision import Decision, FinalistRuns, decide
from autotransfer.space.strategy import Strategy
from autotransfer.storage.records import (
    CONFIRM_SUFFIX,
    StudyAttr,
    TrialAttr,
    best_trial,
    companion_study,
    counts_towards_n_trials,
    open_companion,
    trial_family,
)
from autotransfer.study.objective import Objective
from autotransfer.study.recovery import reclaim_stale_trials
from autotransfer.training.trainer import evaluate_split

__all__ = ["ConfirmObjective", "ConfirmPlan", "extend_plan", "make_plan", "run_confirmation"]

logger = logging.getLogger(__name__)

_SMALL_VAL = 1000  # below this many val images a split autotransfer made is re-drawn for each repeat
_REPEATS = (2, 5)  # repeats chosen to fit the budget: at least 2, at most 5
_DEFAULT_REPEATS = 3  # when the stage is asked for explicitly (autotransfer confirm) without --repeats


@dataclass(frozen=True)
class ConfirmPlan:
    """What the stage trains, fixed when it starts and stored with the companion study.

    Attributes:
        finalists: ``{"trial", "family", "params", "seconds"}`` per finalist, best search value first.
        seeds: The seed of each repeat.
        splits: Each repeat's ``{"train": [[key, label], ...], "val": [...]}``, or None (seed-only repeats).
        rho: ``n_val / (n_train + n_val)`` of a re-drawn split (the correlated t-test's correlation), or None.
        margin: The tie margin (metric units).
        note: How the plan was chosen, in words (printed, and shown in the report).
        seed: The study seed the repeats derive from; None in plans stored by earlier releases (which are
            never extended).
    """

    finalists: list[dict[str, Any]]
    seeds: list[int]
    splits: list[dict[str, list[list[Any]]]] | None
    rho: float | None
    margin: float
    note: str
    seed: int | None = None

    @property
    def repeats(self) -> int:
        """Repeats per finalist."""
        return len(self.seeds)

    def dataset(self, base: ImageDataset, repeat: int) -> ImageDataset:
        """The dataset of one repeat: its re-drawn train/val split (test as searched), or ``base``."""
        if self.splits is None:
            return base
        split = self.splits[repeat]
        return replace(base, splits={"train": [(str(k), int(y)) for k, y in split["train"]],
                                     "val": [(str(k), int(y)) for k, y in split["val"]],
                                     "test": base.splits.get("test", [])})

    def cost(self) -> float:
        """Estimated seconds of the whole stage (the finalists' trial seconds times the repeats)."""
        return self.repeats * sum(float(f["seconds"]) for f in self.finalists)


def _family_leaders(study: optuna.Study) -> list[FrozenTrial]:
    """The best complete trial of each strategy family, best first."""
    leaders: dict[str, FrozenTrial] = {}
    for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        family = trial_family(trial)
        if trial.value is not None and (family not in leaders or trial.value > (leaders[family].value or -1)):
            leaders[family] = trial
    return sorted(leaders.values(), key=lambda t: (-(t.value or 0.0), t.number))


def _trial_seconds(trial: FrozenTrial) -> float:
    """What the plan expects one repeat of a finalist to cost: its search trial's measured seconds."""
    return float(trial.user_attrs.get(TrialAttr.SECONDS, 0.0))


def make_plan(study: optuna.Study, dataset: ImageDataset, *, finalists: int, repeats: int | None, margin: float,
              resplit: bool, seed: int, budget_seconds: float | None) -> tuple[ConfirmPlan | None, str]:
    """Choose the finalists, the repeats and each repeat's seed and split.

    Args:
        study: The search study.
        dataset: The searched dataset.
        finalists: The most strategy families to confirm (the best trial of each).
        repeats: Repeats per finalist; None: as many as fit ``budget_seconds`` (2 to 5), dropping
            finalists (down to 2) when even 2 repeats do not fit.
        margin: The tie margin.
        resplit: Re-draw train/val even for val folders the user gave.
        seed: The study seed; each repeat's seed and split derive from (seed, repeat).
        budget_seconds: The most the stage may spend when ``repeats`` is None (None: no bound, 3 repeats).

    Returns:
        ``(plan, note)``: the plan, or None with the reason it was skipped.
    """
    leaders = _family_leaders(study)[:finalists]
    if len(leaders) < 2:
        return None, f"{len(leaders)} strategy family has a complete trial: nothing to compare"
    cost = [_trial_seconds(t) for t in leaders]
    bounded = repeats is None and budget_seconds is not None
    if repeats is None and budget_seconds is not None:
        while len(leaders) > 2 and _REPEATS[0] * sum(cost) > budget_seconds:
            leaders, cost = leaders[:-1], cost[:-1]
        fit = math.floor(budget_seconds / max(sum(cost), 1e-9))
        if fit < _REPEATS[0]:
            return None, (f"2 repeats of the 2 best families would take about {2 * sum(cost):.0f} s, more than "
                          f"the {budget_seconds:.0f} s the stage may spend; run `autotransfer confirm` to confirm "
                          "anyway")
        repeats = min(_REPEATS[1], fit)
    repeats = repeats or _DEFAULT_REPEATS
    redraw = resplit or (dataset.split_method == "stratified" and len(dataset.splits["val"]) < _SMALL_VAL)
    seeds, splits = _draws(dataset, seed, range(repeats), redraw)
    rho = _val_share(dataset) if redraw else None
    how = ("each on a re-drawn stratified train/val split of train+val" if redraw
           else "on new seeds, val as given (pass --resplit to re-draw it)")
    plan = ConfirmPlan([{"trial": t.number, "family": trial_family(t), "params": dict(t.params), "seconds": c}
                        for t, c in zip(leaders, cost, strict=True)], seeds, splits, rho, margin, "", seed)
    note = (f"{len(leaders)} finalists x {repeats} repeats, {how}; about {plan.cost():.0f} s"
            + (f" of the {budget_seconds:.0f} s allowed" if bounded else ""))
    return replace(plan, note=note), note


def _draws(dataset: ImageDataset, seed: int, repeats: range, redraw: bool) -> tuple[
        list[int], list[dict[str, list[list[Any]]]] | None]:
    """The seed of each repeat in ``repeats`` and, when ``redraw``, its stratified train/val split of train+val.

    Both derive from (study seed, repeat) alone, so a repeat added later gets what a longer plan would have had.
    """
    seeds = [int(np.random.SeedSequence([seed, 1, r]).generate_state(1)[0]) for r in repeats]
    if not redraw:
        return seeds, None
    pool = sorted(dataset.splits["train"] + dataset.splits["val"])
    return seeds, [{name: [[k, y] for k, y in items]
                    for name, items in stratified_split(pool, dataset.n_classes, s % 2**32, _val_share(dataset),
                                                        0.0).items()
                    if name in ("train", "val")} for s in seeds]


def _val_share(dataset: ImageDataset) -> float:
    """``n_val / (n_train + n_val)``: a re-drawn split's val share, and the correlated t-test's correlation."""
    return len(dataset.splits["val"]) / (len(dataset.splits["train"]) + len(dataset.splits["val"]))


def extend_plan(plan: ConfirmPlan, dataset: ImageDataset, seconds: dict[int, list[float]],
                budget_seconds: float) -> ConfirmPlan | None:
    """The plan with as many more repeats as the measured runs say fit the budget (at most 5 in all), or None.

    The plan's repeats were chosen from the finalists' *search* trial seconds, which include what a
    repeat does not pay again: feature extraction and frozen-prefix activations are cached on the images,
    so a linear probe's second repeat costs its head alone. Once every planned repeat has run, the
    measured seconds give the real price of one more repeat of every finalist: the mean of each
    finalist's runs after its first (its first run filled the caches), or its only run.

    Args:
        plan: The plan every run of ``seconds`` belongs to.
        dataset: The searched dataset (the pool re-drawn splits come from).
        seconds: Measured seconds of each finalist's finished runs, by finalist index, in repeat order.
        budget_seconds: The most the whole stage may spend (s).

    Returns:
        The longer plan (its first repeats unchanged), or None when it has 5 repeats, was stored by an
        earlier release, or no further repeat of every finalist fits.
    """
    if plan.seed is None or plan.repeats >= _REPEATS[1] or any(not seconds.get(k) for k in range(
            len(plan.finalists))):
        return None
    spent = sum(sum(runs) for runs in seconds.values())
    one_more = sum(float(np.mean(runs[1:] or runs)) for runs in seconds.values())
    more = min(_REPEATS[1] - plan.repeats, math.floor((budget_seconds - spent) / max(one_more, 1e-9)))
    if more < 1:
        return None
    seeds, splits = _draws(dataset, plan.seed, range(plan.repeats, plan.repeats + more), plan.splits is not None)
    repeats = plan.repeats + more
    note = (f"{plan.note}; the runs took {spent:.0f} s, so {more} more repeat{'s' if more > 1 else ''} "
            f"(about {more * one_more:.0f} s) fit: {repeats} repeats")
    return replace(plan, seeds=plan.seeds + seeds,
                   splits=None if plan.splits is None or splits is None else plan.splits + splits, note=note)


@dataclass
class ConfirmObjective(Objective):
    """The objective of a confirmation run: a finalist's fixed strategy on one repeat's seed and split.

    The strategy is sampled through the search space as in the search; the run was enqueued with the
    finalist's parameters, so every suggestion returns them (with the search's distributions).

    Attributes:
        plan: The stored plan (the repeat's seed and split come from it).
    """

    plan: ConfirmPlan | None = None

    def __call__(self, trial: optuna.Trial) -> float:
        assert self.plan is not None  # set by run_confirmation
        if TrialAttr.REPEAT not in trial.user_attrs:  # another process took the last repeat first
            trial.set_user_attr(TrialAttr.STOP_REASON, "no repeat left")
            raise TrialFailed("no repeat left")
        dataset = self.plan.dataset(self.dataset, int(trial.user_attrs[TrialAttr.REPEAT]))
        return Objective.__call__(replace(self, dataset=dataset), trial)

    def seed_of(self, trial: optuna.Trial) -> int:
        assert self.plan is not None
        return self.plan.seeds[int(trial.user_attrs[TrialAttr.REPEAT])]

    def after_training(self, trial: optuna.Trial, net: BackboneWithHead, data_config: dict[str, Any],
                       score: float) -> None:
        return None  # the test split is scored once, for the recommended pick, after the decision


def _enqueue_missing(companion: optuna.Study, plan: ConfirmPlan) -> int:
    """Enqueue every (finalist, repeat) without a finished, running or waiting run; the number enqueued."""
    trials = companion.get_trials(deepcopy=False)
    taken = {(t.user_attrs.get(TrialAttr.FINALIST), t.user_attrs.get(TrialAttr.REPEAT)) for t in trials
             if counts_towards_n_trials(t) or t.state in (TrialState.RUNNING, TrialState.WAITING)}
    missing = [(k, r) for r in range(plan.repeats) for k in range(len(plan.finalists)) if (k, r) not in taken]
    for k, r in missing:
        finalist = plan.finalists[k]
        companion.enqueue_trial(finalist["params"], user_attrs={  # the space's suggest returns these values
            TrialAttr.FINALIST: k, TrialAttr.REPEAT: r, TrialAttr.SOURCE_TRIAL: finalist["trial"]})
    return len(missing)


def run_confirmation(study: optuna.Study, objective: Objective, *, budget_seconds: float | None,
                     callbacks: list[Any] | None = None) -> Decision | None:
    """Run (or resume) the confirmation stage of ``study`` and store its decision.

    Args:
        study: The search study.
        objective: The search's objective (dataset, budget, zoo, settings, runtime, device); its
            settings give ``finalists``, ``repeats``, ``tie_margin``, ``resplit`` and ``seed``.
        budget_seconds: The most the stage may spend when ``settings.repeats`` is None (None: no bound).
        callbacks: Optuna callbacks after every run (progress lines).

    Returns:
        The decision, or None when the stage was skipped (the reason is logged and stored under
        ``StudyAttr.CONFIRM_SKIPPED``).

    Raises:
        Interrupted: SIGINT or SIGTERM (the running repeat is recorded as interrupted and runs again
            on resume).
    """
    settings = objective.settings
    existing = companion_study(study)
    stored = None if existing is None else existing.user_attrs.get(StudyAttr.CONFIRM_PLAN)
    if isinstance(stored, dict):
        plan = ConfirmPlan(**stored)
    else:
        made, note = make_plan(study, objective.dataset, finalists=settings.finalists, repeats=settings.repeats,
                               margin=settings.tie_margin, resplit=settings.resplit, seed=settings.seed,
                               budget_seconds=budget_seconds)
        if made is None:
            logger.info("Confirmation skipped: %s.", note)
            study.set_user_attr(StudyAttr.CONFIRM_SKIPPED, note)
            return None
        plan = made
        open_companion(study, CONFIRM_SUFFIX).set_user_attr(StudyAttr.CONFIRM_PLAN, asdict(plan))
    companion = open_companion(study, CONFIRM_SUFFIX)
    logger.info("Confirmation: %s.", plan.note)
    reclaim_stale_trials(companion)
    _enqueue_missing(companion, plan)
    runner = ConfirmObjective(**{f.name: getattr(objective, f.name) for f in fields(Objective)}, plan=plan)
    _run_waiting(companion, runner, callbacks)
    if settings.repeats is None and budget_seconds is not None:
        seconds = {k: [float(runs[r].user_attrs.get(TrialAttr.SECONDS, 0.0)) for r in sorted(runs)]
                   for k, runs in _runs(companion, plan).items()}
        longer = extend_plan(plan, objective.dataset, seconds, budget_seconds)
        if longer is not None:
            plan = longer
            companion.set_user_attr(StudyAttr.CONFIRM_PLAN, asdict(plan))
            logger.info("Confirmation: %s.", plan.note)
            _enqueue_missing(companion, plan)
            _run_waiting(companion, replace(runner, plan=plan), callbacks)
    return _decide(study, companion, plan, objective)


def _run_waiting(companion: optuna.Study, runner: ConfirmObjective, callbacks: list[Any] | None) -> None:
    """Run the companion study's waiting runs one at a time, checking for SIGINT/SIGTERM between them."""
    while any(t.state == TrialState.WAITING for t in companion.get_trials(deepcopy=False)):
        interrupt.check()
        companion.optimize(runner, n_trials=1, catch=(TrialFailed,), callbacks=[_log_run, *(callbacks or [])])
    interrupt.check()


def _log_run(study: optuna.Study, trial: FrozenTrial) -> None:
    """One line per confirmation run."""
    value = "" if trial.value is None else f" val {trial.value:.4f}"
    logger.info("confirm: finalist %s (trial %s) repeat %s %s%s in %.1f s", trial.user_attrs.get(TrialAttr.FINALIST),
                trial.user_attrs.get(TrialAttr.SOURCE_TRIAL), trial.user_attrs.get(TrialAttr.REPEAT),
                trial.state.name.lower(), value, float(trial.user_attrs.get(TrialAttr.SECONDS, 0.0)))


def _runs(companion: optuna.Study, plan: ConfirmPlan) -> dict[int, dict[int, FrozenTrial]]:
    """Complete runs by finalist and repeat."""
    out: dict[int, dict[int, FrozenTrial]] = {k: {} for k in range(len(plan.finalists))}
    for t in companion.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        out[int(t.user_attrs[TrialAttr.FINALIST])][int(t.user_attrs[TrialAttr.REPEAT])] = t
    return out


def _decide(study: optuna.Study, companion: optuna.Study, plan: ConfirmPlan, objective: Objective) -> Decision | None:
    runs = _runs(companion, plan)
    repeats = sorted(set.intersection(*(set(r) for r in runs.values()))) if runs else []
    usable = [k for k in runs if runs[k]]
    if len(usable) < 2 or len(repeats) < 2:
        note = "fewer than two finalists completed two common repeats"
        study.set_user_attr(StudyAttr.CONFIRM_SKIPPED, note)
        logger.warning("Confirmation undecidable: %s.", note)
        return None
    val_labels = None if plan.splits is not None else [y for _, y in objective.dataset.splits["val"]]
    finalists = [_finalist_runs(plan, k, [runs[k][r] for r in repeats], val_labels) for k in usable]
    decision = decide(finalists, margin=plan.margin, rho=plan.rho, seed=objective.settings.seed)
    record = {**decision.as_dict(), "recommended_trial": int(decision.recommended), "note": plan.note,
              "repeats": len(repeats), "resplit": plan.splits is not None, "metric": objective.budget.metric,
              "finalists": [_summary(f, plan.finalists[k]) for f, k in zip(finalists, usable, strict=True)]}
    best = best_trial(study)
    record["optuna_best_trial"] = None if best is None else best.number
    record["test"] = _test_of(study, objective, plan.finalists[usable[[f.name for f in finalists].index(
        decision.recommended)]])
    study.set_user_attr(StudyAttr.DECISION, record)
    if study.user_attrs.get(StudyAttr.CONFIRM_SKIPPED):
        study.set_user_attr(StudyAttr.CONFIRM_SKIPPED, "")  # an earlier run skipped it; this one decided
    logger.info("Confirmation: %s; recommended trial %s. %s", decision.outcome, decision.recommended, decision.reason)
    return decision


def _finalist_runs(plan: ConfirmPlan, k: int, trials: list[FrozenTrial], val_labels: list[int] | None) -> FinalistRuns:
    correct = None
    if val_labels is not None:
        correct = [[p == y for p, y in zip(t.user_attrs[TrialAttr.VAL_PREDICTIONS], val_labels, strict=True)]
                   for t in trials]
    return FinalistRuns(str(plan.finalists[k]["trial"]), [float(t.value or 0.0) for t in trials], correct,
                        float(np.median([t.user_attrs.get(TrialAttr.IMAGES_PER_SECOND, 0.0) for t in trials])),
                        float(np.mean([t.user_attrs.get(TrialAttr.SECONDS, 0.0) for t in trials])),
                        int(trials[0].user_attrs.get(TrialAttr.TRAINABLE_PARAMS, 0)))


def _summary(runs: FinalistRuns, finalist: dict[str, Any]) -> dict[str, Any]:
    """One finalist for the report: mean, spread and 95% t-interval over repeats, speed and cost."""
    low, high = runs.interval()
    return {"trial": finalist["trial"], "family": finalist["family"], "params": finalist["params"],
            "scores": list(runs.scores), "mean": runs.mean, "std": float(np.std(runs.scores, ddof=1)),
            "low": low, "high": high, "images_per_second": runs.images_per_second,
            "train_seconds": runs.train_seconds, "trainable_params": runs.trainable_params}


def _test_of(study: optuna.Study, objective: Objective, finalist: dict[str, Any]) -> dict[str, Any] | None:
    """The recommended trial's test figures: stored already (by the search, or an earlier decision), else scored."""
    number = int(finalist["trial"])
    for record in ((study.user_attrs.get(StudyAttr.DECISION) or {}).get("test"), study.user_attrs.get(StudyAttr.TEST)):
        if isinstance(record, dict) and record.get("trial") == number:
            return {k: record[k] for k in ("trial", "metrics", "predictions") if k in record}
    return _score_test(study, objective, finalist)


def _score_test(study: optuna.Study, objective: Objective, finalist: dict[str, Any]) -> dict[str, Any] | None:
    """Train the recommended strategy as its search trial did (same seed and split) and score it once on test."""
    if not objective.dataset.splits.get("test"):
        return None
    trial = optuna.trial.FixedTrial(finalist["params"], number=int(finalist["trial"]))
    quiet = replace(objective, on_epoch=None)  # progress hooks expect a search trial
    seed = quiet.seed_of(trial)  # type: ignore[arg-type]
    strategy = Strategy.from_params(finalist["params"])
    try:
        net, data_config, _ = quiet._train(trial, strategy, seed, 0.0)  # type: ignore[arg-type]
        metrics, predictions = evaluate_split(net, objective.dataset, data_config, "test",
                                              batch_size=objective.budget.batch_size, device=objective.device,
                                              runtime=objective.runtime)
    except (RuntimeError, OSError, ValueError, TrialFailed) as err:  # the decision stands; only test is lost
        logger.warning("Could not score the recommended strategy on the test split: %s", err)
        return None
    return {"trial": int(finalist["trial"]), "metrics": metrics, "predictions": predictions}
