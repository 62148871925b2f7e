"""``TransferClassifier``: the whole search as a scikit-learn estimator.

``fit(X, y)`` splits the images into train and val (stratified, seeded), runs
:func:`autotransfer.search` on them, then refits the best strategy on all of ``X`` with the full
budget (as ``GridSearchCV(refit=True)`` does); ``predict``, ``predict_proba`` and ``score`` use the
refit model. It follows scikit-learn's estimator contract (``__init__`` only stores its arguments,
fitted attributes end in ``_``), so ``sklearn.base.clone``, ``cross_val_score``, ``Pipeline`` and
``GridSearchCV`` work with it.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pandas as pd
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.validation import check_is_fitted, column_or_1d

from autotransfer.data.images import as_image_list, images_dataset
from autotransfer.deploy.model import TransferModel
from autotransfer.models.zoo import Zoo
from autotransfer.settings import Budget, SearchSettings
from autotransfer.space.search_space import SearchSpace
from autotransfer.space.strategy import Strategy
from autotransfer.storage.records import recommended_trial

__all__ = ["TransferClassifier"]


@contextmanager
def _verbosity(verbose: int) -> Iterator[None]:
    """Logging levels of autotransfer and Optuna for the ``with`` block (restored after)."""
    library = logging.getLogger("autotransfer")
    old_level, old_optuna = library.level, optuna.logging.get_verbosity()
    library.setLevel(logging.WARNING if verbose <= 0 else logging.INFO)
    optuna.logging.set_verbosity(optuna.logging.INFO if verbose >= 2 else optuna.logging.WARNING)
    try:
        yield
    finally:
        library.setLevel(old_level)
        optuna.logging.set_verbosity(old_optuna)


class TransferClassifier(ClassifierMixin, BaseEstimator):
    """Search transfer strategies for the images ``X`` and labels ``y``, then refit the best on all of them.

    Args:
        space: Search space: bundled name (``"default"``, ``"small"``, ``"demo"``), YAML path, mapping
            or :class:`~autotransfer.space.search_space.SearchSpace`.
        n_trials: Trials of the search.
        epochs: Budget: maximum epochs per trial, and the epochs of the refit.
        timeout: Seconds after which the search starts no new trial (None: no limit).
        batch_size: Images per optimisation step.
        metric: Val metric the search maximises: ``"accuracy"``, ``"balanced_accuracy"``, ``"macro_f1"``.
        pruner: ``"hyperband"``, ``"median"``, ``"sha"`` or ``"none"``.
        val_fraction: Fraction of ``X`` held out (stratified) to score trials; the refit trains on all of ``X``.
        baseline: Run the textbook recipe as the first trial (see :func:`autotransfer.search`).
        zoo: Local zoo file or :class:`~autotransfer.models.zoo.Zoo` (default ``$AUTOTRANSFER_ZOO``).
        seed: Seeds the split, the sampler, every trial and the refit.
        device: ``"auto"``, ``"cpu"`` or ``"cuda"``.
        storage: Optuna storage URL to keep the study in (None: in memory). Each fit names its study
            after its data, so the folds of a cross-validation get one study each, and fitting the same
            data again resumes its study.
        cache_mb: Memory bound of the cache (decoded images, features), in MiB.
        finalists: Strategy families the confirmation stage trains again after the search (0: none); the
            recommendation it decides is what ``best_params_`` and the refit model follow.
        repeats: Confirmation runs per finalist; None: as many as fit half the search's compute.
        class_weight: ``"balanced"`` weights the training loss by inverse class frequency (scikit-learn's
            ``compute_class_weight``, per training split, refit included); None: unweighted.
        verbose: scikit-learn's convention: 0 prints nothing but warnings, 1 autotransfer's progress
            messages, 2 also Optuna's line per trial.

    Attributes:
        classes_: Sorted unique labels of ``y``; column ``k`` of :meth:`predict_proba` is ``classes_[k]``.
        best_params_: The recommended strategy (``backbone``, ``freeze_depth``, ``head_width``, ``learning_rate``, and
            each recipe dimension the search sampled).
        best_score_: Its val metric in the search.
        best_trial_: Its trial number.
        search_results_: One row per trial (the leaderboard: ``rank``, ``number``, ``state``, ``value``,
            ``params_*``, val metrics, seconds ...) and a ``params`` column of dicts, like ``cv_results_``.
        study_: The Optuna study.
        model_: The refit :class:`~autotransfer.deploy.model.TransferModel` (``model_.save(dir)`` exports it).

    Inputs:
        ``X`` is a sequence of images: file paths, PIL images, or arrays of shape ``(H, W)`` /
        ``(H, W, 3)`` with uint8 values or floats in [0, 1] (a NumPy batch ``(N, H, W[, 3])`` works);
        ``y`` holds one label per image (any sortable values: strings, integers).
    """

    def __init__(self, *, space: str | Path | SearchSpace | dict[str, Any] = "default", n_trials: int = 20,
                 epochs: int = 3, timeout: float | None = None, batch_size: int = 32, metric: str = "accuracy",
                 pruner: str = "hyperband", val_fraction: float = 0.2, baseline: bool = True,
                 zoo: str | Path | Zoo | None = None, seed: int = 0, device: str = "auto",
                 storage: str | None = None, cache_mb: float = 1024.0, finalists: int = 3,
                 repeats: int | None = None, class_weight: str | None = None, verbose: int = 0) -> None:
        self.space = space
        self.n_trials = n_trials
        self.epochs = epochs
        self.timeout = timeout
        self.batch_size = batch_size
        self.metric = metric
        self.pruner = pruner
        self.val_fraction = val_fraction
        self.baseline = baseline
        self.zoo = zoo
        self.seed = seed
        self.device = device
        self.storage = storage
        self.cache_mb = cache_mb
        self.finalists = finalists
        self.repeats = repeats
        self.class_weight = class_weight
        self.verbose = verbose

    def fit(self, X: Any, y: Any) -> TransferClassifier:
        """Search on a stratified train/val split of ``X``, then refit the best strategy on all of ``X``.

        Args:
            X: Images, ``n_samples`` of them (see the class docstring).
            y: Labels, shape ``(n_samples,)``.

        Returns:
            ``self``, fitted.

        Raises:
            DataError: Bad images, lengths that differ, or a class with fewer than two images.
            ConfigError: A bad parameter (space, budget, metric, pruner, device, ...).
        """
        from autotransfer.study.search import search
        from autotransfer.training.runtime import Runtime  # PyTorch-heavy: loaded when used

        settings = SearchSettings(n_trials=self.n_trials, timeout=self.timeout, pruner=self.pruner, seed=self.seed,
                                  device=self.device, storage=self.storage, baseline=self.baseline,
                                  finalists=self.finalists, repeats=self.repeats)
        budget = Budget(epochs=self.epochs, batch_size=self.batch_size, metric=self.metric,
                        class_weight=self.class_weight)
        runtime = Runtime(cache_mb=self.cache_mb)
        images = as_image_list(X)
        classes, encoded = np.unique(column_or_1d(y, warn=True), return_inverse=True)
        with tempfile.TemporaryDirectory(prefix="autotransfer-images-") as folder, _verbosity(self.verbose):
            dataset = images_dataset(images, [int(k) for k in encoded], [str(c) for c in classes], folder=folder,
                                     seed=self.seed, val_fraction=self.val_fraction)
            settings = replace(settings, study_name=f"TransferClassifier-{dataset.fingerprint()[:16]}")
            result = search(dataset, space=self.space, settings=settings, budget=budget, runtime=runtime, zoo=self.zoo)
            model = result.refit(train_on="train+val")
        self.classes_ = classes
        self.study_: optuna.Study = result.study
        self.model_: TransferModel = model
        best = recommended_trial(result.study)
        assert best is not None  # the refit above needs one
        self.best_trial_ = best.number
        self.best_params_ = Strategy.from_params(best.params).as_dict()
        self.best_score_ = float(best.value) if best.value is not None else float("nan")
        board = result.leaderboard
        param_columns = [c for c in board.columns if c.startswith("params_")]
        params = board[param_columns].rename(columns=lambda c: c.removeprefix("params_")).to_dict(orient="records")
        board["params"] = pd.Series(params, index=board.index, dtype=object)
        self.search_results_: pd.DataFrame = board
        return self

    def predict_proba(self, X: Any) -> np.ndarray:
        """Class probabilities, float32 array of shape ``(n_samples, n_classes)`` (columns follow ``classes_``)."""
        check_is_fitted(self, "model_")
        return self.model_.predict_proba(X)

    def predict(self, X: Any) -> np.ndarray:
        """Predicted labels, shape ``(n_samples,)``, with the dtype of ``y``."""
        proba = self.predict_proba(X)  # checks that the estimator is fitted
        return np.asarray(self.classes_)[proba.argmax(axis=1)]

    def __sklearn_tags__(self) -> Any:
        """scikit-learn >= 1.6 tags: inputs are images (paths or arrays), validated here, not 2-D feature arrays."""
        tags = super().__sklearn_tags__()
        tags.input_tags.two_d_array = False
        tags.input_tags.three_d_array = True
        tags.input_tags.string = True
        tags.no_validation = True
        return tags
