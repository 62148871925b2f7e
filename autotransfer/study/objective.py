"""The objective: one Optuna trial = sample a strategy, build it, train it on the budget.

Every trial records the user attributes named in :class:`autotransfer.storage.records.TrialAttr`, which
the leaderboard and report read back from storage: ``family`` (from the network as built),
``val_accuracy``, ``val_balanced_accuracy``, ``val_macro_f1``, ``val_loss`` (after the last epoch
run), ``epochs`` (run), ``seconds``, ``trainable_params``, ``total_params``, ``n_frozen_groups``,
``n_groups``, ``worker`` (host, PID and worker index of the process running it), ``batch_size``
(only when an out-of-memory retry halved it), ``stop_reason`` (``running`` while it runs, then
``completed``, ``pruned at epoch N``, ``timeout: ...``, ``diverged: ...``, ``oom: ...``,
``bad image: PATH: ...``, ``error: ...`` or ``interrupted``; a trial failed because its process
died reads ``stale``) and, for complete trials, ``val_predictions`` (the predicted class of every
val image, in split order, for the report's per-class figures).

When a trial completes as the best so far, it is evaluated once on the test split (if any) and
the figures are stored in the study attribute ``StudyAttr.TEST``; the report shows them only
for the final pick. The test split never feeds the objective.
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NoReturn

import numpy as np
import optuna
import torch

from autotransfer import interrupt
from autotransfer.data.dataset import DIGITS, ImageDataset
from autotransfer.errors import BadImageError, DataError, TrialFailed, TrialTimeout
from autotransfer.models.network import BackboneWithHead, count_parameters
from autotransfer.models.zoo import Zoo, create_backbone
from autotransfer.settings import Budget, SearchSettings
from autotransfer.space.search_space import SearchSpace
from autotransfer.space.strategy import Strategy, family_label, transfer_mode
from autotransfer.storage.records import StudyAttr, TrialAttr, best_trial
from autotransfer.study.recovery import worker_identity
from autotransfer.training.runtime import Runtime
from autotransfer.training.trainer import TrainResult, evaluate_split, fit, images_per_second, seed_everything

__all__ = ["EpochProgress", "Objective", "trial_seed"]

logger = logging.getLogger(__name__)

EpochProgress = Callable[[optuna.Trial, int, dict[str, float]], None]


def trial_seed(study_seed: int, trial_number: int) -> int:
    """Seed of one trial, derived from the study seed and trial number (``numpy.random.SeedSequence``)."""
    return int(np.random.SeedSequence([study_seed, trial_number]).generate_state(1)[0])


@dataclass
class Objective:
    """Callable objective for ``study.optimize``: returns the val metric after the last epoch.

    Attributes:
        dataset: The split dataset (a file that becomes unreadable is dropped from it).
        space: The search space sampled through the trial.
        budget: Epochs, batch size and metric.
        zoo: Local weights, tried before timm's download.
        settings: The study settings: its ``seed`` seeds each trial through :func:`trial_seed`; a
            trial running past ``trial_timeout`` seconds is pruned at its last reported epoch, or
            failed if it had not finished one.
        runtime: Caches and accelerator settings; the trial attribute ``inputs`` records what the
            trial trained on (``features``, ``prefix`` or ``images``, see :mod:`autotransfer.training.input_plan`).
        device: Where trials train.
        worker: Index of this worker process, recorded on each trial with its host and PID.
        on_epoch: Optional progress hook called after every epoch.

    Raises (from ``__call__``):
        optuna.TrialPruned: The pruner or the trial time limit stopped the trial.
        TrialFailed: Training diverged, ran out of memory twice, or hit an error or a bad train
            image; pass it to ``optimize(catch=...)``.
        DataError: A val or test image became unreadable: later scores could not be compared.
        Interrupted: SIGINT or SIGTERM asked for a stop (the trial is recorded as ``interrupted``).
    """

    dataset: ImageDataset
    space: SearchSpace
    budget: Budget
    zoo: Zoo
    settings: SearchSettings = field(default_factory=SearchSettings)
    runtime: Runtime = field(default_factory=Runtime)
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    worker: int = 0
    on_epoch: EpochProgress | None = None

    def __call__(self, trial: optuna.Trial) -> float:
        start = time.perf_counter()
        trial.set_user_attr(TrialAttr.WORKER, worker_identity(self.worker))
        trial.set_user_attr(TrialAttr.STOP_REASON, "running")  # a retried trial inherits its original's attributes
        try:
            interrupt.check()
            seed = self.seed_of(trial)
            seed_everything(seed)  # before building: the head's initial weights come from this seed
            strategy = self.strategy_of(trial)
            net, data_config, result = self._train(trial, strategy, seed, start)
            if result.stop_reason != "completed":
                self._finish(trial, result.stop_reason, start)
                raise optuna.TrialPruned(result.stop_reason)
            score = result.metrics[self.budget.metric]
            trial.set_user_attr(TrialAttr.VAL_PREDICTIONS, result.predictions)
            trial.set_user_attr(TrialAttr.IMAGES_PER_SECOND, round(images_per_second(
                net, self.dataset, data_config, device=self.device, runtime=self.runtime), 1))
            self.after_training(trial, net, data_config, score)
        except KeyboardInterrupt:
            self._finish(trial, "interrupted", start)
            raise
        except TrialTimeout as err:
            self._finish(trial, err.reason, start)
            if err.epochs_done:
                raise optuna.TrialPruned(err.reason) from err
            raise
        except TrialFailed as err:
            self._finish(trial, err.reason, start)
            raise
        except BadImageError as err:
            self._bad_image(trial, err, start)
        except (RuntimeError, OSError, ValueError) as err:
            reason = f"error: {type(err).__name__}: {err}"
            self._finish(trial, reason, start)
            raise TrialFailed(reason) from err
        self._finish(trial, result.stop_reason, start)
        return score

    def seed_of(self, trial: optuna.Trial) -> int:
        """The trial's seed: :func:`trial_seed` of the study seed and the trial number."""
        return trial_seed(self.settings.seed, trial.number)

    def strategy_of(self, trial: optuna.Trial) -> Strategy:
        """The trial's strategy, sampled from the search space."""
        return self.space.suggest(trial)

    def after_training(self, trial: optuna.Trial, net: BackboneWithHead, data_config: dict[str, Any],
                       score: float) -> None:
        """After a complete trial: a new best is evaluated once on the test split (for the report only)."""
        if self.dataset.splits.get("test") and _is_new_best(trial, score):
            self._record_test(trial, net, data_config)

    def _train(self, trial: optuna.Trial, strategy: Strategy, seed: int, start: float
               ) -> tuple[BackboneWithHead, dict[str, Any], TrainResult]:
        """Build and fit the strategy; on out-of-memory, retry once with half the batch size."""
        limit = self.settings.trial_timeout
        deadline = None if limit is None else time.monotonic() + limit
        batch_size = self.budget.batch_size
        while True:
            try:
                return self._build_and_fit(trial, strategy, seed, batch_size, deadline)
            except torch.OutOfMemoryError as err:
                message = str(err).splitlines()[0] if str(err) else "out of memory"
            except TrialTimeout as err:
                raise TrialTimeout(f"timeout: over the {limit:g} s trial limit ({err.reason}, "
                                   f"{time.perf_counter() - start:.0f} s)", err.epochs_done) from err
            _free_accelerator_memory(self.device)
            if batch_size != self.budget.batch_size or batch_size == 1:
                raise TrialFailed(f"oom: {message} (batch size {batch_size}, retried from "
                                  f"{self.budget.batch_size})")
            batch_size = max(1, batch_size // 2)
            logger.warning("Trial %d ran out of memory (%s); retrying once with batch size %d.",
                           trial.number, message, batch_size)
            trial.set_user_attr(TrialAttr.BATCH_SIZE, batch_size)

    def _build_and_fit(self, trial: optuna.Trial, strategy: Strategy, seed: int, batch_size: int,
                       deadline: float | None) -> tuple[BackboneWithHead, dict[str, Any], TrainResult]:
        seed_everything(seed)
        recipe = strategy.recipe()
        backbone, data_config = create_backbone(strategy.backbone, self.zoo, model_kwargs=recipe.model_kwargs)
        data_config = recipe.data_config(data_config)  # the strategy's input size, if it has one
        net = BackboneWithHead.build(backbone, strategy.freeze_depth, strategy.head_width, self.dataset.n_classes)
        freeze = net.freeze_report
        assert freeze is not None  # always set by BackboneWithHead.build
        trainable, total = count_parameters(net)
        for key, value in ((TrialAttr.TRAINABLE_PARAMS, trainable), (TrialAttr.TOTAL_PARAMS, total),
                           (TrialAttr.N_GROUPS, freeze.n_groups), (TrialAttr.N_FROZEN_GROUPS, freeze.n_frozen),
                           (TrialAttr.FAMILY, family_label(strategy.backbone, transfer_mode(freeze.n_frozen,
                                                                                            freeze.n_groups),
                                                           strategy.head_width))):
            trial.set_user_attr(key, value)
        budget = dataclasses.replace(self.budget, batch_size=batch_size)
        result = fit(net, self.dataset, data_config, budget, strategy.learning_rate, seed=seed, device=self.device,
                     on_epoch=lambda epoch, metrics: self._report(trial, epoch, metrics),
                     hflip=self.dataset.root != DIGITS, deadline=deadline, runtime=self.runtime, recipe=recipe)
        trial.set_user_attr(TrialAttr.INPUTS, result.inputs)
        return net, data_config, result

    def _bad_image(self, trial: optuna.Trial, err: BadImageError, start: float) -> NoReturn:
        """Fail the trial naming the file; drop it for later trials, or stop if val/test changed."""
        reason = f"bad image: {err.path}: {err.cause}"
        self._finish(trial, reason, start)
        split = self.dataset.split_of(err.key)
        self.dataset = self.dataset.without(err.key, f"unreadable since trial {trial.number}: {err.cause}")
        trial.study.set_user_attr(StudyAttr.EXCLUDED, [list(item) for item in self.dataset.excluded])
        if split == "train":
            logger.warning("Trial %d failed: %s. Later trials train without this file.", trial.number, reason)
            raise TrialFailed(reason) from err
        raise DataError(f"The {split} image {err.path} became unreadable during the search ({err.cause}); "
                        f"{split} scores from now on could not be compared with earlier ones, so the search "
                        "stops here. Restore the file and run the same command to resume.") from err

    def _record_test(self, trial: optuna.Trial, net: BackboneWithHead, data_config: dict[str, Any]) -> None:
        """Evaluate a new best trial once on test and store it for the report (never for selection)."""
        try:
            metrics, predictions = evaluate_split(net, self.dataset, data_config, "test",
                                                  batch_size=self.budget.batch_size, device=self.device,
                                                  runtime=self.runtime)
        except (RuntimeError, OSError, ValueError) as err:  # the val result stands; only the test figures are lost
            logger.warning("Trial %d: could not evaluate on the test split: %s", trial.number, err)
            return
        trial.study.set_user_attr(StudyAttr.TEST, {"trial": trial.number, "metrics": metrics,
                                              "predictions": predictions})

    def _report(self, trial: optuna.Trial, epoch: int, metrics: dict[str, float]) -> bool:
        trial.report(metrics[self.budget.metric], epoch)
        for name, value in metrics.items():
            trial.set_user_attr(TrialAttr.val(name), value)
        trial.set_user_attr(TrialAttr.EPOCHS_RUN, epoch)
        if self.on_epoch is not None:
            self.on_epoch(trial, epoch, metrics)
        return trial.should_prune()

    @staticmethod
    def _finish(trial: optuna.Trial, reason: str, start: float) -> None:
        trial.set_user_attr(TrialAttr.STOP_REASON, reason)
        trial.set_user_attr(TrialAttr.SECONDS, round(time.perf_counter() - start, 3))


def _free_accelerator_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _is_new_best(trial: optuna.Trial, value: float) -> bool:
    """Whether ``value`` beats every complete trial so far (ties keep the earlier one, as Optuna does)."""
    best = best_trial(trial.study)
    return best is None or best.value is None or value > best.value
