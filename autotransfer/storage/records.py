"""What autotransfer stores in an Optuna study, and the one place that reads it back (no PyTorch import).

Every trial and study user attribute the library writes is named here (:class:`TrialAttr`,
:class:`StudyAttr`), and so is every reader that more than one module needs: the stored
configuration (upgraded from older releases' layouts), the metric, the best trial, why a trial
stopped, whether it counts towards ``--n-trials`` and its strategy family.

Format versions of the stored configuration (``StudyAttr.CONFIG``, key ``format_version``):

* 0 (autotransfer 0.1.0, no key): the budget held ``weight_decay``, always 0.01;
* 1: ``weight_decay`` is a strategy dimension; its default (0.01) is stored nowhere.

A study stored by any earlier release loads, resumes and renders: :func:`read_config` upgrades
its configuration in memory (the stored record is left as it was).
"""

from __future__ import annotations

import copy
from typing import Any, Final

import optuna
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial, TrialState

from autotransfer.settings import Budget
from autotransfer.space.dimensions import DIMENSIONS
from autotransfer.space.strategy import family_label, transfer_mode

__all__ = [
    "BASELINE_SUFFIX",
    "COMPANION_SUFFIXES",
    "CONFIRM_SUFFIX",
    "FORMAT_VERSION",
    "STRONG_BASELINE_KEY",
    "UNCOUNTED_REASONS",
    "ScreenKey",
    "StudyAttr",
    "TrialAttr",
    "best_trial",
    "budget_record",
    "companion_study",
    "counts_towards_n_trials",
    "open_companion",
    "read_budget",
    "read_config",
    "recommended_trial",
    "stop_reason",
    "stored_decision",
    "study_metric",
    "trial_family",
]

FORMAT_VERSION: Final = 1


class TrialAttr:
    """Names of the user attributes every trial records.

    ``EPOCHS_RUN`` (stored as ``epochs``) is the number of epochs the trial ran, not the
    budget's maximum (``Budget.epochs``).
    """

    FAMILY: Final = "family"  # strategy family, from the network as built (see trial_family)
    EPOCHS_RUN: Final = "epochs"  # epochs the trial ran (reported), not the budget's maximum
    SECONDS: Final = "seconds"  # wall-clock seconds of the trial
    TRAINABLE_PARAMS: Final = "trainable_params"
    TOTAL_PARAMS: Final = "total_params"
    N_GROUPS: Final = "n_groups"  # block groups of the backbone
    N_FROZEN_GROUPS: Final = "n_frozen_groups"  # groups frozen, from the stem
    WORKER: Final = "worker"  # {"host", "pid", "index"} of the process running it
    BATCH_SIZE: Final = "batch_size"  # only when an out-of-memory retry halved it
    STOP_REASON: Final = "stop_reason"
    VAL_PREDICTIONS: Final = "val_predictions"  # predicted class of every val image, in split order
    INPUTS: Final = "inputs"  # "features", "prefix" or "images"
    BASELINE: Final = "baseline"  # True on the textbook baseline trial
    VAL_PREFIX: Final = "val_"  # + metric name: val_accuracy, val_balanced_accuracy, val_macro_f1, val_loss
    IMAGES_PER_SECOND: Final = "images_per_second"  # inference throughput of the trained network, this machine
    FINALIST: Final = "finalist"  # confirmation runs: index of the finalist
    REPEAT: Final = "repeat"  # confirmation runs: index of the repeat
    SOURCE_TRIAL: Final = "source_trial"  # confirmation runs: the search trial the finalist came from

    @staticmethod
    def val(metric: str) -> str:
        """The attribute of a val metric, e.g. ``val_accuracy``."""
        return f"{TrialAttr.VAL_PREFIX}{metric}"


class StudyAttr:
    """Names of the study user attributes autotransfer writes."""

    CONFIG: Final = "autotransfer.config"  # format_version, dataset, split, space, budget, baseline
    SPLIT: Final = "autotransfer.split"  # {"train"|"val"|"test": [[key, label], ...]}
    TEST: Final = "autotransfer.test"  # {"trial", "metrics", "predictions"} of the best trial on test
    DATA: Final = "autotransfer.data"  # {"root", "seed", "zoo"}: where a refit finds the images and weights
    REFIT: Final = "autotransfer.refit"  # the latest refit: {"trial", "eval_split", "metrics", ...}
    EXCLUDED: Final = "autotransfer.excluded"  # [[path, reason], ...] of undecodable files
    SCREEN: Final = "autotransfer.screen"  # {"score", "k", "kept", "candidates": [{backbone, scores, ...}]}
    RUN_PREFIX: Final = "autotransfer.run."  # + "HOST.PID": {"started", "timeout", "n_trials", "workers"}
    DECISION: Final = "autotransfer.decision"  # the confirmation's outcome, recommendation and summaries
    CONFIRM_PLAN: Final = "autotransfer.confirm.plan"  # on the companion study: finalists, seeds, splits
    CONFIRM_SKIPPED: Final = "autotransfer.confirm.skipped"  # why the stage did not run (text)
    PATIENCE: Final = "autotransfer.patience"  # {"trials": N, "min_improvement": m}: read by every worker
    SAMPLING_STOPPED: Final = "autotransfer.sampling_stopped"  # why sampling stopped: {"reason", "detail"}
    STRONG_BASELINE: Final = "autotransfer.strong_baseline"  # {"params", "search": {...}, "repeats": {...}}
    HYGIENE: Final = "autotransfer.hygiene"  # the scan's duplicates, label conflicts and image sizes


class ScreenKey:
    """Keys of a screen record: ``StudyAttr.SCREEN`` (the result) and the configuration's ``screen`` entry."""

    CONFIG: Final = "screen"  # the configuration's entry: {SCORE, K, BACKBONES}, compared on resume
    SCORE: Final = "score"  # the score the candidates are ranked by
    K: Final = "k"  # how many backbones are kept (None: all)
    BACKBONES: Final = "backbones"  # the space's backbones before the screen
    KEPT: Final = "kept"  # the kept backbones, best first
    CANDIDATES: Final = "candidates"  # one record per candidate: backbone, resolution, scores, kept, ...
    METHODS: Final = "methods"  # {score: how it was computed}; absent from screens stored before it existed
    RESOLUTIONS: Final = "resolutions"  # input sizes screened (px); None: each backbone's own


STRONG_BASELINE_KEY: Final = "strong"  # the configuration's baseline entry: the strong baseline's parameters


CONFIRM_SUFFIX: Final = ".confirm"  # the companion study holding the confirmation runs: "<name>.confirm"
BASELINE_SUFFIX: Final = ".baseline"  # the companion study holding the strong baseline's runs
COMPANION_SUFFIXES: Final = (CONFIRM_SUFFIX, BASELINE_SUFFIX)  # a search's companions: never chosen as its study


# Failed trials that do not use up --n-trials: the strategy was not judged, only cut short.
UNCOUNTED_REASONS = frozenset({"interrupted", "stale"})
_LEGACY_WEIGHT_DECAY = 0.01  # format 0 stored it in the budget, always this value


def budget_record(budget: Budget) -> dict[str, Any]:
    """The budget as the stored configuration holds it (``class_weight`` only when set, so studies made
    before it existed compare equal)."""
    record: dict[str, Any] = {"epochs": budget.epochs, "batch_size": budget.batch_size, "metric": budget.metric}
    if budget.class_weight is not None:
        record["class_weight"] = budget.class_weight
    return record


def read_budget(config: dict[str, Any], *, epochs: int | None = None, batch_size: int | None = None) -> Budget:
    """The :class:`~autotransfer.settings.Budget` of a stored configuration, optionally overridden."""
    stored = config["budget"]
    return Budget(epochs=int(stored["epochs"]) if epochs is None else epochs,
                  batch_size=int(stored["batch_size"]) if batch_size is None else batch_size,
                  metric=str(stored["metric"]), class_weight=stored.get("class_weight"))


def upgrade_config(config: dict[str, Any]) -> dict[str, Any]:
    """A stored configuration in the current layout (:data:`FORMAT_VERSION`); ``config`` is not changed."""
    out = copy.deepcopy(config)
    if int(out.get("format_version", 0)) < 1:
        budget = dict(out.get("budget", {}))
        decay = budget.pop("weight_decay", _LEGACY_WEIGHT_DECAY)
        if decay != _LEGACY_WEIGHT_DECAY and isinstance(out.get("space"), dict):
            out["space"] = {**out["space"], "weight_decay": {"choices": [decay]}}
        out["budget"] = budget
        out["format_version"] = 1
    return out


def read_config(study: optuna.Study) -> dict[str, Any]:
    """The study's stored configuration in the current layout, or ``{}`` if it has none."""
    stored = study.user_attrs.get(StudyAttr.CONFIG)
    return upgrade_config(stored) if isinstance(stored, dict) else {}


def study_metric(study: optuna.Study) -> str:
    """The val metric the study maximises (``accuracy`` when it stores none)."""
    return str(read_config(study).get("budget", {}).get("metric", "accuracy"))


def best_trial(study: optuna.Study) -> FrozenTrial | None:
    """Optuna's best complete trial, or None when no trial has completed."""
    try:
        return study.best_trial
    except ValueError:  # Optuna's answer when no trial has completed
        return None


def stored_decision(study: optuna.Study) -> dict[str, Any] | None:
    """The confirmation's decision stored with the study (outcome, recommendation, finalists), or None."""
    record = study.user_attrs.get(StudyAttr.DECISION)
    return dict(record) if isinstance(record, dict) else None


def recommended_trial(study: optuna.Study) -> FrozenTrial | None:
    """The recommended strategy's search trial: the confirmation's pick where one was decided, else Optuna's best."""
    decision = stored_decision(study)
    if decision is not None and isinstance(decision.get("recommended_trial"), int):
        number = decision["recommended_trial"]
        found = [t for t in study.get_trials(deepcopy=False) if t.number == number]
        if found:
            return found[0]
    return best_trial(study)


def companion_study(study: optuna.Study, suffix: str = CONFIRM_SUFFIX) -> optuna.Study | None:
    """A companion study in the same storage, or None if there is none.

    Args:
        study: The search study.
        suffix: :data:`CONFIRM_SUFFIX` (the confirmation runs) or :data:`BASELINE_SUFFIX` (the strong baseline's).
    """
    storage = study._storage  # Optuna has no public accessor; its own fail_stale_trials reads it too
    name = study.study_name + suffix
    if name not in {s.study_name for s in storage.get_all_studies()}:
        return None
    return optuna.load_study(study_name=name, storage=storage)


def open_companion(study: optuna.Study, suffix: str) -> optuna.Study:
    """Create or load a companion study, in the same storage, whose trials are all enqueued.

    Its sampler (random) and pruner (none) never act: every run is enqueued with fixed parameters.

    Args:
        study: The search study.
        suffix: :data:`CONFIRM_SUFFIX` or :data:`BASELINE_SUFFIX`.
    """
    return optuna.create_study(storage=study._storage, study_name=study.study_name + suffix, direction="maximize",
                               sampler=optuna.samplers.RandomSampler(), pruner=optuna.pruners.NopPruner(),
                               load_if_exists=True)


def stop_reason(trial: FrozenTrial) -> str:
    """Why a trial ended (or what it is doing), as the leaderboard and report show it.

    Trials record ``stop_reason`` themselves; a failed trial without one (or still saying
    ``running``) was failed by someone else because its process died: ``stale``.
    """
    reason = trial.user_attrs.get(TrialAttr.STOP_REASON)
    if trial.state == TrialState.RUNNING:
        return "running"
    if trial.state == TrialState.WAITING:
        retried = RetryHeartbeatStaleTrialCallback.retried_trial_number(trial)
        return "waiting" if retried is None else f"waiting (retry of stale trial {retried})"
    if trial.state == TrialState.FAIL and reason in (None, "", "running"):
        return "stale"
    return str(reason or "")


def counts_towards_n_trials(trial: FrozenTrial) -> bool:
    """Whether a trial counts towards ``n_trials``: complete, pruned, or failed on its own merits."""
    if trial.state in (TrialState.COMPLETE, TrialState.PRUNED):
        return True
    return trial.state == TrialState.FAIL and stop_reason(trial) not in UNCOUNTED_REASONS


def trial_family(trial: FrozenTrial) -> str:
    """The strategy family of a trial, from the network it built.

    The transfer mode comes from the stored block-group counts (no group frozen: full fine-tuning;
    every group: linear probe), so a resumed study labels every trial the same way whichever
    release recorded it. A trial that failed before building its network falls back to its
    stored ``family`` attribute, then to the label its sampled freeze depth implies.
    """
    attrs, params = trial.user_attrs, trial.params
    backbone, width = params.get("backbone"), params.get("head_width", DIMENSIONS["head_width"].default)
    n_groups, n_frozen = attrs.get(TrialAttr.N_GROUPS), attrs.get(TrialAttr.N_FROZEN_GROUPS)
    if backbone is not None and width is not None and isinstance(n_groups, int) and isinstance(n_frozen, int):
        return family_label(str(backbone), transfer_mode(n_frozen, n_groups), int(width))
    stored = attrs.get(TrialAttr.FAMILY)
    if stored:
        return str(stored)
    depth = params.get("freeze_depth")
    if backbone is None or width is None or depth is None:
        return ""
    return family_label(str(backbone), transfer_mode(float(depth), 1.0), int(width))
