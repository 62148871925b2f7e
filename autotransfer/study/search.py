"""The study: storage, resume checks, the baseline trial, and the ``search`` entry point.

The sampler and pruner come from :mod:`autotransfer.study.sampling`. The study stores its configuration
(format version, dataset fingerprint, split, search space, budget, baseline) as user attributes
(:mod:`autotransfer.storage.records`) and refuses to resume with a different one.
"""

from __future__ import annotations

import json
import logging
import pickle
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
import pandas as pd
from optuna.trial import FrozenTrial

from autotransfer import interrupt
from autotransfer.data.dataset import ImageDataset, load_dataset
from autotransfer.data.hygiene import describe_hygiene
from autotransfer.errors import ConfigError, StudyMismatchError, describe
from autotransfer.models.zoo import Zoo, check_backbones, load_zoo, resolve_weights, smallest_input_side
from autotransfer.results.leaderboard import leaderboard
from autotransfer.results.report import OutputWriter
from autotransfer.screen.screen import check_screen
from autotransfer.settings import METRICS, Budget, SearchSettings, split_options
from autotransfer.space.search_space import SearchSpace, load_search_space
from autotransfer.space.strategy import Strategy
from autotransfer.storage.backends import check_workers, load_existing_study, make_storage
from autotransfer.storage.output_folder import OutputFolder
from autotransfer.storage.records import (
    FORMAT_VERSION,
    STRONG_BASELINE_KEY,
    ScreenKey,
    StudyAttr,
    TrialAttr,
    best_trial,
    budget_record,
    read_config,
    recommended_trial,
    stored_decision,
    study_metric,
    trial_family,
)
from autotransfer.study.confirm import run_confirmation
from autotransfer.study.objective import EpochProgress, Objective
from autotransfer.study.recovery import finished_trials, reclaim_stale_trials, record_run, set_patience
from autotransfer.study.sampling import make_pruner
from autotransfer.study.screening import screen_space, stored_screen
from autotransfer.study.strong_baseline import run_strong_baseline
from autotransfer.study.workers import WorkerJob, run_worker, run_workers
from autotransfer.training.runtime import Runtime
from autotransfer.training.trainer import resolve_device

if TYPE_CHECKING:
    from autotransfer.deploy.model import TransferModel

__all__ = ["SearchResult", "open_study", "search", "study_config"]

logger = logging.getLogger(__name__)

StudyCallback = Callable[[optuna.Study, FrozenTrial], None]
_NOT_COMPARED = ("baseline", "format_version")  # fixed when the study is created, or how it is written


def study_config(dataset: ImageDataset, space: SearchSpace, budget: Budget,
                 baseline: dict[str, Any] | None = None, screen: dict[str, Any] | None = None) -> dict[str, Any]:
    """The configuration a study is tied to; resuming with a different one is refused.

    Args:
        dataset: The split dataset.
        space: The search space as given (before any widening for the baseline), narrowed to the
            kept backbones when screened.
        budget: The per-trial budget.
        baseline: ``{"params": strategy, "changes": [...]}`` of the baseline trial, or None. It
            is fixed when the study is created and not compared on resume.
        screen: ``{"score", "k", "backbones"}`` of a screen (``backbones``: the space's before it),
            or None; stored only when given, so a study without a screen stores what it always did.
    """
    config = {
        "format_version": FORMAT_VERSION,
        "dataset": {"name": dataset.name, "classes": list(dataset.classes), "counts": dataset.counts(),
                    "fingerprint": dataset.fingerprint()},
        "split": {"method": dataset.split_method, "seed": dataset.split_seed},
        "space": space.as_dict(),
        "budget": budget_record(budget),
        "baseline": baseline,
    }
    if screen is not None:
        config[ScreenKey.CONFIG] = screen
    return config


def open_study(storage: str | optuna.storages.BaseStorage | None, study_name: str, config: dict[str, Any],
               *, pruner: optuna.pruners.BasePruner, split: dict[str, Any] | None = None) -> optuna.Study:
    """Create the study, or load it and check it was made with the same configuration.

    The sampler is not set here: every worker sets its own (:func:`~autotransfer.study.workers.run_worker`).

    Args:
        storage: Optuna storage URL or object (None: in memory).
        study_name: Study name.
        config: From :func:`study_config`.
        pruner: The pruner.
        split: The split to store with a new study (``ImageDataset.split_record()``).

    Raises:
        StudyMismatchError: The stored study was made with a different dataset, split, space or budget.
    """
    study = optuna.create_study(storage=storage, study_name=study_name, direction="maximize",
                                sampler=optuna.samplers.RandomSampler(),  # replaced by each worker's
                                pruner=pruner, load_if_exists=True)
    stored = read_config(study)
    if not stored:
        study.set_user_attr(StudyAttr.CONFIG, config)
        if split is not None:
            study.set_user_attr(StudyAttr.SPLIT, split)
        return study
    differences = [f"{key}: stored {json.dumps(stored.get(key), sort_keys=True)[:300]}, "
                   f"requested {json.dumps(config.get(key), sort_keys=True)[:300]}"
                   for key in dict.fromkeys([*config, *stored])
                   if key not in _NOT_COMPARED and stored.get(key) != config.get(key)]
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
        return cls(load_existing_study(storage, study_name))

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
            The trained :class:`~autotransfer.deploy.model.TransferModel` (``.predict``, ``.save``).
        """
        from autotransfer.study.refit import refit  # PyTorch-heavy: loaded when used

        return refit(self.study, trial=trial, epochs=epochs, train_on=train_on, dataset=self.dataset, zoo=self.zoo,
                     device=device or self.device, runtime=self.runtime)

    @property
    def leaderboard(self) -> pd.DataFrame:
        """One row per trial, ranked (see :func:`autotransfer.leaderboard`)."""
        return leaderboard(self.study, study_metric(self.study))

    @property
    def best(self) -> dict[str, Any] | None:
        """The recommended strategy's trial and metrics as a dict, or None if none completed.

        The recommendation is the confirmation stage's pick where it decided one
        (:mod:`autotransfer.study.confirm`), else Optuna's best trial (:attr:`optuna_best`).
        """
        return self._row(recommended_trial(self.study))

    @property
    def optuna_best(self) -> dict[str, Any] | None:
        """Optuna's single best val trial (``study.best_trial``) as a dict, or None; shown beside :attr:`best`."""
        return self._row(best_trial(self.study))

    @property
    def decision(self) -> dict[str, Any] | None:
        """The confirmation's stored decision (outcome, finalists, comparisons), or None if it did not run."""
        return stored_decision(self.study)

    @staticmethod
    def _row(trial: FrozenTrial | None) -> dict[str, Any] | None:
        if trial is None:
            return None
        attrs = trial.user_attrs
        return {**trial.params, "trial": trial.number, "family": trial_family(trial),
                **{TrialAttr.val(m): attrs.get(TrialAttr.val(m)) for m in METRICS},
                **{k: attrs.get(k) for k in (TrialAttr.EPOCHS_RUN, TrialAttr.SECONDS, TrialAttr.TRAINABLE_PARAMS)}}

    @property
    def best_value(self) -> float | None:
        """The recommended trial's objective value in the search (validation metric), or None."""
        trial = recommended_trial(self.study)
        return None if trial is None else trial.value


def search(
    data: str | Path | ImageDataset,
    *,
    space: str | Path | SearchSpace | dict[str, Any] = "default",
    settings: SearchSettings | None = None,
    budget: Budget | None = None,
    runtime: Runtime | None = None,
    zoo: str | Path | Zoo | None = None,
    on_epoch: EpochProgress | None = None,
    callbacks: Sequence[StudyCallback] = (),
    **options: Any,
) -> SearchResult:
    """Search transfer strategies for a dataset and return the ranked result.

    Everything is validated (options, dataset scanned, space parsed, backbones resolved, storage
    opened, stored study configuration compared) before the first trial trains. Re-running with
    the same storage and study name resumes: finished trials are kept, ``n_trials`` counts the
    total, and trials a killed process left RUNNING are marked failed (``stale``) and their
    strategies retried. SIGINT and SIGTERM end the running trial (``interrupted``), write the
    outputs, then raise :class:`~autotransfer.interrupt.Interrupted`.

    Settings come in three objects, each validated on construction: ``settings``
    (:class:`~autotransfer.settings.SearchSettings`, the study level), ``budget``
    (:class:`~autotransfer.settings.Budget`, per trial) and ``runtime``
    (:class:`~autotransfer.training.pipeline.Runtime`, caches and accelerator). Any of their fields may also
    be given as a keyword, which overrides the object's field, e.g.
    ``search("digits", n_trials=10, epochs=2, cache_mb=256)``:

    * study: ``n_trials`` (20; total finished trials, None: until ``timeout``), ``timeout``
      (seconds of this run after which no trial starts), ``trial_timeout`` (seconds one trial may
      run), ``pruner`` (``"hyperband"``, ``"median"``, ``"sha"``, ``"none"``), ``seed`` (the split,
      the sampler and every trial), ``device`` (``"auto"``, ``"cpu"``, ``"cuda"``; with several
      workers ``auto``/``cuda`` give worker k GPU ``k % n_gpus``), ``storage`` (``sqlite:///PATH``,
      a journal file path or a database server URL; default ``OUT/study.db`` for one worker,
      ``OUT/study.journal`` for several, or whichever ``OUT`` already holds; in memory without
      ``out``), ``study_name`` (default: the dataset's name), ``out`` (folder of the storage,
      cache, ``leaderboard.csv`` and ``report.html``; None writes nothing), ``workers`` (processes
      sharing the storage, not SQLite), ``heartbeat_interval`` (seconds, database servers),
      ``baseline`` (run the textbook recipe first in a new study, widening the space to hold it),
      ``report_every`` (minimum seconds between report refreshes), ``screen`` (keep the K backbones of
      the space with the best ``screen_score`` on their pooled features, :func:`autotransfer.screen.screen.screen`,
      before the first trial; None: no screen), ``screen_score`` (``"knn"``, ``"logme"``, ``"h_score"``,
      ``"linear_probe"``);
    * trial: ``epochs`` (3, maximum per trial), ``batch_size`` (32), ``metric`` (``"accuracy"``,
      ``"balanced_accuracy"``, ``"macro_f1"`` on val);
    * machine: ``cache`` (False recomputes everything; results do not change), ``cache_mb``
      (memory bound per process, MiB), ``compile`` (``torch.compile``), ``amp`` (bf16 autocast;
      None: on for CUDA with bf16), and the other :class:`~autotransfer.training.pipeline.Runtime` fields.

    Args:
        data: Image folder, folder with ``train/`` and ``val/``, ``"digits"``, or an
            :class:`~autotransfer.data.dataset.ImageDataset`.
        space: Search space: bundled name (``"default"``, ``"small"``, ``"demo"``), YAML path,
            mapping or :class:`~autotransfer.space.search_space.SearchSpace`.
        settings: Study settings (default :class:`~autotransfer.settings.SearchSettings()`).
        budget: Per-trial budget (default :class:`~autotransfer.settings.Budget()`).
        runtime: Caches and accelerator (default :class:`~autotransfer.training.pipeline.Runtime()`, with the
            feature cache in ``OUT/cache``).
        zoo: Local zoo file (default ``$AUTOTRANSFER_ZOO``) or :class:`~autotransfer.models.zoo.Zoo`.
        on_epoch: Called as ``on_epoch(trial, epoch, val_metrics)`` after every epoch.
        callbacks: Optuna callbacks ``(study, frozen_trial)`` run after every trial. With several
            workers, ``on_epoch`` and ``callbacks`` must be picklable; they run in the workers.
        **options: Fields of the three settings objects, as above.

    Returns:
        A :class:`SearchResult` with ``.leaderboard``, ``.best``, ``.best_value`` and ``.study``.

    Raises:
        ConfigError: A bad option, space, zoo or storage (SQLite with several workers), or an
            output folder that cannot be written.
        DataError: A bad dataset, or a val/test image became unreadable mid-run.
        WeightsNotFoundError: A backbone has no weights. StudyMismatchError: resuming a study made
            with another configuration. Interrupted (a ``KeyboardInterrupt``): SIGINT or SIGTERM,
            raised after the outputs are written.
    """
    settings, budget, runtime = _settings(settings, budget, runtime, options)
    device = resolve_device(settings.device)
    search_space = load_search_space(space)
    recipe = _baseline_record(search_space) if settings.baseline else None
    if settings.screen is not None:
        check_screen(search_space.backbones, score=settings.screen_score, k=settings.screen)
    local_zoo = zoo if isinstance(zoo, Zoo) else load_zoo(zoo)
    check_backbones(search_space.backbones, local_zoo)
    folder = OutputFolder(settings.out) if settings.out is not None else None
    storage = settings.storage or (folder.storage_url(settings.workers) if folder is not None else None)
    check_workers(storage, settings.workers)
    if settings.workers > 1:
        _check_picklable(on_epoch=on_epoch, callbacks=callbacks)
    if folder is not None:  # created and probed for writing before any work
        folder.create()
        if runtime.cache and runtime.cache_dir is None:
            runtime = replace(runtime, cache_dir=folder.cache)
    resolve_weights(search_space.backbones, local_zoo)  # hub weights downloaded once, here, before any worker
    dataset = data if isinstance(data, ImageDataset) else load_dataset(data, seed=settings.seed,
                                                                        dedupe=settings.dedupe)
    for path, reason in dataset.excluded:
        logger.warning("Excluded (cannot be decoded): %s: %s", path, reason)
    for line in describe_hygiene(dataset.hygiene, _input_side(search_space, local_zoo)):
        logger.warning("%s", line)
    storage_obj = make_storage(storage, heartbeat_interval=settings.heartbeat_interval)
    study_name = settings.study_name or dataset.name
    screened, screen_config = None, None
    if settings.screen is not None:
        screened, screen_config, search_space = screen_space(dataset, search_space, settings, local_zoo, runtime,
                                                             stored_screen(storage_obj, study_name))
        recipe = _baseline_record(search_space) if settings.baseline else None
    study = open_study(storage_obj, study_name,
                       study_config(dataset, search_space, budget, recipe, screen_config),
                       pruner=make_pruner(settings.pruner, budget.epochs), split=dataset.split_record())
    if screened is not None:
        study.set_user_attr(StudyAttr.SCREEN, screened.record())
    study.set_user_attr(StudyAttr.EXCLUDED, [list(item) for item in dataset.excluded])
    if dataset.hygiene:
        study.set_user_attr(StudyAttr.HYGIENE, dataset.hygiene)
    study.set_user_attr(StudyAttr.DATA, {"root": dataset.root, "seed": settings.seed,
                                         "zoo": str(local_zoo.path) if local_zoo.path else None})
    reclaim_stale_trials(study)
    objective = Objective(dataset, _with_baseline(study, search_space), budget, local_zoo, settings, runtime, device,
                          on_epoch=on_epoch)
    job = WorkerJob(objective, storage, study.study_name, len(study.get_trials(deepcopy=False)), callbacks)
    _run(job, study)
    return SearchResult(study, dataset, settings.out, local_zoo, settings.device, runtime)


def _input_side(space: SearchSpace, zoo: Zoo) -> int | None:
    """The smallest input side (px) the space's backbones see: its ``input_size`` choices, else theirs."""
    choices = space.dimensions["input_size"].choices if "input_size" in space.dimensions else None
    return int(min(choices)) if choices else smallest_input_side(space.backbones, zoo)


def _settings(settings: SearchSettings | None, budget: Budget | None, runtime: Runtime | None,
              options: dict[str, Any]) -> tuple[SearchSettings, Budget, Runtime]:
    """The three settings objects, with ``options`` overriding their fields (validated on construction)."""
    study, trial, machine = split_options(options, SearchSettings, Budget, Runtime)
    return (replace(settings or SearchSettings(), **study), replace(budget or Budget(), **trial),
            replace(runtime or Runtime(), **machine))


def _run(job: WorkerJob, study: optuna.Study) -> None:
    """Run the remaining trials, then the confirmation stage; write the outputs (also on errors); raise if a
    signal stopped it.

    With a ``timeout`` and a stage sized to the search (``repeats`` None), the search starts no trial
    after ``timeout / (1 + confirm_share)`` seconds, so the stage fits inside the timeout.
    """
    settings = job.settings
    started = time.monotonic()
    remaining = None if settings.n_trials is None else settings.n_trials - finished_trials(study)
    search_timeout = settings.timeout
    if settings.timeout is not None and settings.finalists and settings.repeats is None:
        search_timeout = settings.timeout / (1 + settings.confirm_share)
        job = replace(job, objective=replace(job.objective, settings=replace(settings, timeout=search_timeout)))
    record_run(study, n_trials=settings.n_trials, timeout=settings.timeout, workers=settings.workers)
    n_val = len(job.objective.dataset.splits.get("val", ())) or 1
    set_patience(study, settings.patience, max(1.0 / n_val, settings.tie_margin))
    out = settings.out
    writer = OutputWriter(out, every=settings.report_every) if out is not None else None
    with interrupt.graceful_stop(hard_exit=False):
        try:
            if remaining is not None and remaining <= 0:
                logger.info("Study %r already has %d finished trials; nothing to run.", study.study_name,
                            settings.n_trials)
            elif settings.workers == 1:
                run_worker(job, 0, remaining, study=study, callbacks=[writer] if writer is not None else [])
            else:
                run_workers(job, settings.workers, study, remaining)
            interrupt.check()
            _record_sampling_stop(study, settings.n_trials, search_timeout)
            if settings.finalists:
                left = None if settings.timeout is None else settings.timeout - (time.monotonic() - started)
                run_confirmation(study, replace(job.objective, settings=settings),
                                 budget_seconds=_stage_budget(study, settings.confirm_share, left))
            run_strong_baseline(study, replace(job.objective, settings=settings),
                                deadline=None if settings.timeout is None else started + settings.timeout)
        finally:
            if writer is not None:
                writer.final(study)
        interrupt.check()


def _record_sampling_stop(study: optuna.Study, n_trials: int | None, timeout: float | None) -> None:
    """Store why sampling stopped (``{"reason": "trials" | "timeout" | "patience", "detail": text}``) and log it."""
    stopped = study.user_attrs.get(StudyAttr.SAMPLING_STOPPED)
    if not stopped:
        finished = finished_trials(study)
        if n_trials is not None and finished >= n_trials:
            stopped = {"reason": "trials", "detail": f"{finished} finished trials (--n-trials {n_trials})"}
        elif timeout is not None:
            stopped = {"reason": "timeout", "detail": f"the search's {timeout:.0f} s (--timeout) ran out"}
        else:
            return
        study.set_user_attr(StudyAttr.SAMPLING_STOPPED, stopped)
    logger.info("Sampling stopped: %s.", stopped["detail"])


def _stage_budget(study: optuna.Study, share: float, left: float | None) -> float:
    """Seconds the confirmation may spend: ``share`` of the search trials' seconds, within the time left."""
    spent = sum(float(t.user_attrs.get(TrialAttr.SECONDS, 0.0)) for t in study.get_trials(deepcopy=False))
    return share * spent if left is None else max(0.0, min(share * spent, left))


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
    return {"params": strategy.as_dict(), "changes": changes, STRONG_BASELINE_KEY: space.strong_baseline().as_dict()}


def _with_baseline(study: optuna.Study, space: SearchSpace) -> SearchSpace:
    """The space the study samples: widened by its stored baseline, which is enqueued in a new study.

    The stored configuration decides, so a resumed study keeps the space its trials were drawn from
    whatever ``baseline`` says now.
    """
    record = read_config(study).get("baseline")
    if record is None:
        return space
    strategy = Strategy.from_params(record["params"])
    widened, changes = space.including(strategy)
    if not study.get_trials(deepcopy=False):
        for change in changes:
            logger.warning("Baseline: widened the search space to hold the textbook recipe: %s "
                           "(pass --no-baseline to search the space as given).", change)
        study.enqueue_trial(strategy.as_dict(), user_attrs={TrialAttr.BASELINE: True})
    return widened
