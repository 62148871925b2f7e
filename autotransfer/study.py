"""The study: storage, resume checks, the baseline trial, and the ``search`` entry point.

The sampler and pruner come from :mod:`autotransfer.samplers`. The study stores its configuration
(dataset fingerprint, split, search space, budget, baseline) as user attributes and refuses to resume
with a different one.
"""

from __future__ import annotations

import json
import logging
import pickle
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
import pandas as pd
from optuna.trial import FrozenTrial

from . import interrupt
from .data import ImageDataset, load_dataset
from .errors import ConfigError, StudyMismatchError, describe
from .inputs import Runtime
from .leaderboard import leaderboard
from .objective import EpochProgress
from .recovery import finished_trials, reclaim_stale_trials, record_run
from .report import OutputWriter
from .samplers import PRUNERS, make_pruner, make_sampler
from .search_space import SearchSpace, Strategy, load_search_space
from .storage import (
    CONFIG_ATTR,
    DATA_ATTR,
    EXCLUDED_ATTR,
    SPLIT_ATTR,
    check_workers,
    default_storage,
    load_existing_study,
    make_storage,
)
from .trainer import Budget, resolve_device
from .workers import WorkerJob, run_worker, run_workers
from .zoo import Zoo, check_backbones, load_zoo

if TYPE_CHECKING:
    from .model import TransferModel

__all__ = [
    "PRUNERS",
    "SearchResult",
    "finished_trials",
    "make_pruner",
    "make_sampler",
    "open_study",
    "search",
    "study_config",
]

logger = logging.getLogger(__name__)

StudyCallback = Callable[[optuna.Study, FrozenTrial], None]


def study_config(dataset: ImageDataset, space: SearchSpace, budget: Budget,
                 baseline: dict[str, Any] | None = None) -> dict[str, Any]:
    """The configuration a study is tied to; resuming with a different one is refused.

    Args:
        dataset: The split dataset.
        space: The search space as given (before any widening for the baseline).
        budget: The per-trial budget.
        baseline: ``{"params": strategy, "changes": [...]}`` of the baseline trial, or None. It
            is fixed when the study is created and not compared on resume.
    """
    return {
        "dataset": {"name": dataset.name, "classes": list(dataset.classes), "counts": dataset.counts(),
                    "fingerprint": dataset.fingerprint()},
        "split": {"method": dataset.split_method, "seed": dataset.split_seed},
        "space": space.as_dict(),
        "budget": {"epochs": budget.epochs, "batch_size": budget.batch_size, "metric": budget.metric,
                   "weight_decay": budget.weight_decay},
        "baseline": baseline,
    }


def open_study(storage: str | optuna.storages.BaseStorage | None, study_name: str, config: dict[str, Any],
               *, sampler: optuna.samplers.BaseSampler, pruner: optuna.pruners.BasePruner,
               split: dict[str, Any] | None = None) -> optuna.Study:
    """Create the study, or load it and check it was made with the same configuration.

    Args:
        storage: Optuna storage URL or object (None: in memory).
        study_name: Study name.
        config: From :func:`study_config`.
        sampler: The sampler.
        pruner: The pruner.
        split: The split to store with a new study (``ImageDataset.split_record()``).

    Raises:
        StudyMismatchError: The stored study was made with a different dataset, split, space or budget.
    """
    study = optuna.create_study(storage=storage, study_name=study_name, direction="maximize",
                                sampler=sampler, pruner=pruner, load_if_exists=True)
    stored = study.user_attrs.get(CONFIG_ATTR)
    if stored is None:
        study.set_user_attr(CONFIG_ATTR, config)
        if split is not None:
            study.set_user_attr(SPLIT_ATTR, split)
        return study
    differences = [f"{key}: stored {json.dumps(stored.get(key), sort_keys=True)[:300]}, "
                   f"requested {json.dumps(config[key], sort_keys=True)[:300]}"
                   for key in config if key != "baseline" and stored.get(key) != config[key]]
    if differences:
        raise StudyMismatchError(
            f"Study {study_name!r} was created with a different configuration, so its "
            "trials cannot be compared with new ones:\n  " + "\n  ".join(differences)
            + "\nUse another --study-name (or --out), or run with the stored settings to resume.")
    return study


@dataclass
class SearchResult:
    """The outcome of a search, read from the study's storage.

    Attributes:
        study: The Optuna study.
        dataset: The dataset searched on (None when loaded from storage alone).
        out: Folder holding ``leaderboard.csv`` and ``report.html``, if any.
        zoo: The local zoo the search used (None: ``$AUTOTRANSFER_ZOO``, then the zoo the study recorded).
        device: The device the search ran on, used by :meth:`refit` by default.
        runtime: The search's caches and accelerator settings, reused by :meth:`refit`.
    """

    study: optuna.Study
    dataset: ImageDataset | None = None
    out: Path | None = None
    _metric: str = field(default="accuracy", repr=False)
    zoo: Zoo | None = None
    device: str = "auto"
    runtime: Runtime | None = None

    @classmethod
    def from_storage(cls, storage: str, study_name: str | None = None) -> SearchResult:
        """The result of a search stored earlier (by the command line, another process or host).

        Args:
            storage: ``sqlite:///OUT/study.db``, a journal file path, or a database server URL.
            study_name: May be omitted when the storage holds one study.

        Raises:
            ConfigError: The storage or study does not exist (the message lists the names it holds).
        """
        study = load_existing_study(storage, study_name)
        metric = str(study.user_attrs.get(CONFIG_ATTR, {}).get("budget", {}).get("metric", "accuracy"))
        return cls(study, _metric=metric)

    def refit(self, *, trial: int | None = None, epochs: int | None = None, train_on: str = "auto",
              device: str | None = None) -> TransferModel:
        """Retrain the best strategy (or trial ``trial``'s) on train+val with the full budget and test it once.

        See :func:`autotransfer.refit` for the details; the held-out figures are stored in the
        study for the report.

        Args:
            trial: Trial number; None: the best trial.
            epochs: Epochs; None: the search's budget.
            train_on: ``"auto"`` (train+val when there is a test split, else train, judged on val),
                ``"train"`` or ``"train+val"``.
            device: Default: the search's device.

        Returns:
            The trained :class:`~autotransfer.model.TransferModel` (``.predict``, ``.save``).
        """
        from .refit import refit  # PyTorch-heavy: loaded when used

        return refit(self.study, trial=trial, epochs=epochs, train_on=train_on, dataset=self.dataset, zoo=self.zoo,
                     device=device or self.device, runtime=self.runtime)

    @property
    def leaderboard(self) -> pd.DataFrame:
        """One row per trial, ranked (see :func:`autotransfer.leaderboard`)."""
        return leaderboard(self.study, self._metric)

    @property
    def best(self) -> dict[str, Any] | None:
        """The best complete trial's strategy and metrics as a dict, or None if none completed."""
        trial = self._best_trial()
        if trial is None:
            return None
        return {**trial.params, "trial": trial.number, **{k: trial.user_attrs.get(k) for k in (
            "family", "val_accuracy", "val_balanced_accuracy", "val_macro_f1", "epochs", "seconds",
            "trainable_params")}}

    @property
    def best_value(self) -> float | None:
        """The best complete trial's objective value (validation metric), or None."""
        trial = self._best_trial()
        return None if trial is None else trial.value

    def _best_trial(self) -> FrozenTrial | None:
        try:
            return self.study.best_trial
        except ValueError:  # Optuna's answer when no trial has completed
            return None


def search(
    data: str | Path | ImageDataset,
    *,
    space: str | Path | SearchSpace | dict[str, Any] = "default",
    n_trials: int | None = 20,
    timeout: float | None = None,
    epochs: int = 3,
    batch_size: int = 32,
    metric: str = "accuracy",
    pruner: str = "hyperband",
    storage: str | None = None,
    study_name: str | None = None,
    out: str | Path | None = None,
    zoo: str | Path | Zoo | None = None,
    seed: int = 0,
    device: str = "auto",
    on_epoch: EpochProgress | None = None,
    callbacks: Sequence[StudyCallback] = (),
    baseline: bool = True,
    report_every: float = 30.0,
    workers: int = 1,
    trial_timeout: float | None = None,
    heartbeat_interval: int = 60,
    cache: bool = True,
    cache_mb: float = 1024.0,
    compile: bool = False,
    amp: bool | None = None,
) -> SearchResult:
    """Search transfer strategies for a dataset and return the ranked result.

    Everything is validated (dataset scanned, space parsed, backbones resolved, storage opened,
    stored study configuration compared) before the first trial trains. Re-running with the same
    storage and study name resumes: finished trials are kept, ``n_trials`` counts the total, and
    trials a killed process left RUNNING are marked failed (``stale``) and their strategies retried.
    SIGINT and SIGTERM end the running trial (``interrupted``), write the outputs, then raise
    :class:`~autotransfer.interrupt.Interrupted`.

    Args:
        data: Image folder, folder with ``train/`` and ``val/``, ``"digits"``, or an
            :class:`~autotransfer.data.ImageDataset`.
        space: Search space: bundled name (``"default"``, ``"small"``, ``"demo"``), YAML path,
            mapping or :class:`SearchSpace`.
        n_trials: Total finished trials wanted in the study (None: until ``timeout``); interrupted
            and stale trials do not count.
        timeout: Stop starting trials after this many seconds of this run (None: no limit).
        epochs: Maximum epochs per trial.
        batch_size: Images per step.
        metric: Objective: ``"accuracy"``, ``"balanced_accuracy"`` or ``"macro_f1"`` on val.
        pruner: ``"hyperband"``, ``"median"``, ``"sha"`` or ``"none"``.
        storage: ``sqlite:///PATH``, a journal file path, or a database server URL
            (``postgresql://...``). Default: ``OUT/study.db`` (SQLite) for one worker,
            ``OUT/study.journal`` for several, or whichever of them ``OUT`` already holds; in
            memory when ``out`` is None.
        study_name: Default: the dataset's name.
        out: Folder for the storage, ``leaderboard.csv`` and ``report.html`` (None: write nothing).
        zoo: Local zoo file (default ``$AUTOTRANSFER_ZOO``) or :class:`Zoo`.
        seed: Seeds the split, the sampler and every trial.
        device: ``"auto"``, ``"cpu"`` or ``"cuda"``; with several workers ``auto``/``cuda`` give
            worker k GPU ``k % n_gpus``.
        on_epoch: Called as ``on_epoch(trial, epoch, val_metrics)`` after every epoch.
        callbacks: Optuna callbacks ``(study, frozen_trial)`` run after every trial.
        baseline: Run the textbook recipe (:data:`~autotransfer.search_space.BASELINE_RECIPE` on the
            space's first backbone) as the first trial of a new study, widening the space to
            contain it if needed. Fixed when the study is created.
        report_every: Minimum seconds between two refreshes of ``report.html`` during the search
            (``leaderboard.csv`` is rewritten after every trial; both are written at the end).
        workers: Worker processes sharing the storage (not SQLite). ``on_epoch`` and
            ``callbacks`` must then be picklable; they run in the workers.
        trial_timeout: Seconds one trial may run; a longer one is pruned at its last epoch (or
            failed before its first) with reason ``timeout: ...``. None: no limit.
        heartbeat_interval: Seconds between heartbeats of running trials on a database server; a
            trial silent for twice as long is failed as stale and retried.
        cache: Cache what trials repeat (decoded images, pooled features of frozen backbones in
            ``OUT/cache/features``, frozen-prefix activations); it never changes a result.
            False recomputes everything (for comparison).
        cache_mb: Memory bound of each worker process's cache, in MiB.
        compile: Wrap each trained module in ``torch.compile``.
        amp: bf16 autocast; None: on for CUDA devices that support it, off on CPU.

    Returns:
        A :class:`SearchResult` with ``.leaderboard``, ``.best``, ``.best_value`` and ``.study``.

    Raises:
        ConfigError: A bad option, space, zoo or storage (SQLite with several workers).
        DataError: A bad dataset, or a val/test image became unreadable mid-run.
        WeightsNotFoundError: A backbone has no weights. StudyMismatchError: resuming a study made
            with another configuration. Interrupted (a ``KeyboardInterrupt``): SIGINT or SIGTERM,
            raised after the outputs are written.
    """
    _check_limits(n_trials, timeout, trial_timeout)
    runtime = Runtime(cache=cache, cache_mb=cache_mb, compile=compile, amp=amp,
                      cache_dir=Path(out) / "cache" if out is not None and cache else None)
    budget = Budget(epochs=epochs, batch_size=batch_size, metric=metric)
    sampler, pruner_obj = make_sampler(seed), make_pruner(pruner, epochs)
    resolve_device(device)
    search_space = load_search_space(space)
    recipe = _baseline_record(search_space) if baseline else None
    local_zoo = zoo if isinstance(zoo, Zoo) else load_zoo(zoo)
    check_backbones(search_space.backbones, local_zoo)
    out_dir = Path(out) if out is not None else None
    storage = storage or (default_storage(out_dir, workers) if out_dir is not None else None)
    check_workers(storage, workers)
    if workers > 1:
        _check_picklable(on_epoch=on_epoch, callbacks=callbacks)
    dataset = data if isinstance(data, ImageDataset) else load_dataset(data, seed=seed)
    for path, reason in dataset.excluded:
        logger.warning("Excluded (cannot be decoded): %s: %s", path, reason)
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
    study = open_study(make_storage(storage, heartbeat_interval=heartbeat_interval), study_name or dataset.name,
                       study_config(dataset, search_space, budget, recipe), sampler=sampler, pruner=pruner_obj,
                       split=dataset.split_record())
    study.set_user_attr(EXCLUDED_ATTR, [list(item) for item in dataset.excluded])
    study.set_user_attr(DATA_ATTR, {"root": dataset.root, "seed": seed,
                                    "zoo": str(local_zoo.path) if local_zoo.path else None})
    reclaim_stale_trials(study)
    job = WorkerJob(dataset, _with_baseline(study, search_space), budget, local_zoo, device, seed, pruner, storage,
                    study.study_name, n_trials, timeout, trial_timeout, heartbeat_interval,
                    len(study.get_trials(deepcopy=False)), out_dir, report_every, on_epoch, callbacks, runtime)
    _run(job, study, workers)
    return SearchResult(study, dataset, out_dir, metric, local_zoo, device, runtime)


def _run(job: WorkerJob, study: optuna.Study, workers: int) -> None:
    """Run the remaining trials, write the outputs (also on errors), raise if a signal stopped it."""
    remaining = None if job.n_trials is None else job.n_trials - finished_trials(study)
    record_run(study, n_trials=job.n_trials, timeout=job.timeout, workers=workers)
    writer = OutputWriter(job.out, every=job.report_every) if job.out is not None else None
    with interrupt.graceful_stop(hard_exit=False):
        try:
            if remaining is not None and remaining <= 0:
                logger.info("Study %r already has %d finished trials; nothing to run.", study.study_name,
                            job.n_trials)
            elif workers == 1:
                run_worker(job, 0, remaining, study=study, callbacks=[writer] if writer is not None else [])
            else:
                run_workers(job, workers, study, remaining)
        finally:
            if writer is not None:
                writer.final(study)
        interrupt.check()


def _check_limits(n_trials: int | None, timeout: float | None, trial_timeout: float | None) -> None:
    if n_trials is not None and (isinstance(n_trials, bool) or n_trials < 1):
        raise ConfigError(describe("n_trials", "a positive integer or None", n_trials))
    if timeout is not None and not timeout > 0:
        raise ConfigError(describe("timeout", "a positive number of seconds or None", timeout))
    if trial_timeout is not None and not trial_timeout > 0:
        raise ConfigError(describe("trial_timeout", "a positive number of seconds or None", trial_timeout))


def _check_picklable(**hooks: object) -> None:
    """Hooks run inside worker processes, so they must pickle (no lambdas or local functions)."""
    for name, hook in hooks.items():
        try:
            pickle.dumps(hook)
        except (pickle.PicklingError, AttributeError, TypeError) as err:
            raise ConfigError(describe(name, "picklable (a module-level function or object) when workers > 1",
                                       hook)) from err


def _baseline_record(space: SearchSpace) -> dict[str, Any]:
    """The baseline strategy of ``space`` and how the space must widen to hold it (validated early)."""
    strategy = space.baseline()
    _, changes = space.including(strategy)
    return {"params": strategy.as_dict(), "changes": changes}


def _with_baseline(study: optuna.Study, space: SearchSpace) -> SearchSpace:
    """The space the study samples: widened by its stored baseline, which is enqueued in a new study.

    The stored configuration decides, so a resumed study keeps the space its trials were drawn from
    whatever ``baseline`` says now.
    """
    record = study.user_attrs.get(CONFIG_ATTR, {}).get("baseline")
    if record is None:
        return space
    strategy = Strategy(**record["params"])
    widened, changes = space.including(strategy)
    if not study.get_trials(deepcopy=False):
        for change in changes:
            logger.warning("Baseline: widened the search space to hold the textbook recipe: %s "
                           "(pass --no-baseline to search the space as given).", change)
        study.enqueue_trial(strategy.as_dict(), user_attrs={"baseline": True})
    return widened
