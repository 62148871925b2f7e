"""The objective: one Optuna trial = sample a strategy, build it, train it on the budget.

Every trial records user attributes the leaderboard and report read back from storage:
``family``, ``val_accuracy``, ``val_balanced_accuracy``, ``val_macro_f1``, ``val_loss``
(after the last epoch run), ``epochs``, ``seconds``, ``trainable_params``, ``total_params``,
``n_frozen_groups``, ``n_groups``, ``stop_reason`` (``completed``, ``pruned at epoch N``,
``diverged: ...``, ``error: ...``, ``interrupted``) and, for complete trials, ``val_predictions``
(the predicted class of every val image, in split order, for the report's per-class figures).

When a trial completes as the best so far, it is evaluated once on the test split (if any) and
the figures are stored in the study attribute ``autotransfer.test``; the report shows them only
for the final pick. The test split never feeds the objective.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import optuna
import torch

from .data import DIGITS, ImageDataset
from .errors import TrialFailed
from .search_space import SearchSpace
from .storage import TEST_ATTR
from .trainer import Budget, evaluate_split, fit, seed_everything
from .transfer import TransferNet, count_parameters
from .zoo import Zoo, create_backbone

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
        dataset: The split dataset.
        space: The search space sampled through the trial.
        budget: Epochs, batch size and metric.
        zoo: Local weights, tried before timm's download.
        device: Where trials train.
        seed: Study seed; each trial is seeded with :func:`trial_seed`.
        on_epoch: Optional progress hook called after every epoch.

    Raises (from ``__call__``):
        optuna.TrialPruned: The pruner stopped the trial.
        TrialFailed: Training diverged or hit an error; pass it to ``optimize(catch=...)``.
    """

    dataset: ImageDataset
    space: SearchSpace
    budget: Budget
    zoo: Zoo
    device: torch.device
    seed: int = 0
    on_epoch: EpochProgress | None = None

    def __call__(self, trial: optuna.Trial) -> float:
        start = time.perf_counter()
        seed = trial_seed(self.seed, trial.number)
        seed_everything(seed)  # before building: the head's initial weights come from this seed
        strategy = self.space.suggest(trial)
        trial.set_user_attr("family", strategy.family)
        try:
            backbone, data_config = create_backbone(strategy.backbone, self.zoo)
            net = TransferNet.build(backbone, strategy.freeze_depth, strategy.head_width, self.dataset.n_classes)
            freeze = net.freeze_report
            assert freeze is not None  # always set by TransferNet.build
            trainable, total = count_parameters(net)
            for key, value in (("trainable_params", trainable), ("total_params", total),
                               ("n_groups", freeze.n_groups), ("n_frozen_groups", freeze.n_frozen)):
                trial.set_user_attr(key, value)
            result = fit(net, self.dataset, data_config, self.budget, strategy.learning_rate,
                         seed=seed, device=self.device,
                         on_epoch=lambda epoch, metrics: self._report(trial, epoch, metrics),
                         hflip=self.dataset.root != DIGITS)
        except KeyboardInterrupt:
            self._finish(trial, "interrupted", start)
            raise
        except TrialFailed as err:
            self._finish(trial, err.reason, start)
            raise
        except (RuntimeError, OSError, ValueError) as err:
            reason = f"error: {type(err).__name__}: {err}"
            self._finish(trial, reason, start)
            raise TrialFailed(reason) from err
        if result.stop_reason != "completed":
            self._finish(trial, result.stop_reason, start)
            raise optuna.TrialPruned(result.stop_reason)
        score = result.metrics[self.budget.metric]
        trial.set_user_attr("val_predictions", result.predictions)
        if self.dataset.splits.get("test") and _is_new_best(trial, score):
            try:
                self._record_test(trial, net, data_config)
            except KeyboardInterrupt:
                self._finish(trial, "interrupted", start)
                raise
        self._finish(trial, result.stop_reason, start)
        return score

    def _record_test(self, trial: optuna.Trial, net: TransferNet, data_config: dict[str, Any]) -> None:
        """Evaluate a new best trial once on test and store it for the report (never for selection)."""
        try:
            metrics, predictions = evaluate_split(net, self.dataset, data_config, "test",
                                                  batch_size=self.budget.batch_size, device=self.device)
        except (RuntimeError, OSError, ValueError) as err:  # the val result stands; only the test figures are lost
            logger.warning("Trial %d: could not evaluate on the test split: %s", trial.number, err)
            return
        trial.study.set_user_attr(TEST_ATTR, {"trial": trial.number, "metrics": metrics,
                                              "predictions": predictions})

    def _report(self, trial: optuna.Trial, epoch: int, metrics: dict[str, float]) -> bool:
        trial.report(metrics[self.budget.metric], epoch)
        for name, value in metrics.items():
            trial.set_user_attr(f"val_{name}", value)
        trial.set_user_attr("epochs", epoch)
        if self.on_epoch is not None:
            self.on_epoch(trial, epoch, metrics)
        return trial.should_prune()

    @staticmethod
    def _finish(trial: optuna.Trial, reason: str, start: float) -> None:
        trial.set_user_attr("stop_reason", reason)
        trial.set_user_attr("seconds", round(time.perf_counter() - start, 3))


def _is_new_best(trial: optuna.Trial, value: float) -> bool:
    """Whether ``value`` beats every complete trial so far (ties keep the earlier one, as Optuna does)."""
    try:
        return value > trial.study.best_value
    except ValueError:  # Optuna's answer when no trial has completed
        return True
