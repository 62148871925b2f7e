"""autotransfer: find the best transfer-learning strategy for an image-classification dataset.

An Optuna study samples strategies (timm backbone, freeze depth, head width, learning rate and the
recipe dimensions of :mod:`autotransfer.space.dimensions`), trains each on a small budget with
pruning, and ranks them in a leaderboard and an HTML report. The winner is refit on the full budget
(``refit``), exported and loaded (``TransferModel``, ``load_model``), or all of it runs as a
scikit-learn estimator (``TransferClassifier``).

The top level holds what a user calls; everything else is importable from its module (see
``docs/architecture.md``). The names load on first use (lazy loading as in the Scientific Python SPEC 1),
so ``autotransfer report`` and other commands that only read a study's storage start without
importing PyTorch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from autotransfer._version import __version__

_EXPORTS: dict[str, str] = {
    "AutotransferError": "errors",
    "Budget": "settings",
    "ConfigError": "errors",
    "DataError": "errors",
    "Interrupted": "interrupt",
    "ModelError": "errors",
    "Runtime": "training.pipeline",
    "SearchResult": "study.search",
    "SearchSettings": "settings",
    "SearchSpace": "space.search_space",
    "Strategy": "space.strategy",
    "StudyMismatchError": "errors",
    "TransferClassifier": "estimator",
    "TransferModel": "deploy.model",
    "BackboneWithHead": "models.network",
    "WeightsNotFoundError": "errors",
    "create_backbone": "models.zoo",
    "fit": "training.trainer",
    "format_status": "results.status",
    "leaderboard": "results.leaderboard",
    "load_dataset": "data.dataset",
    "load_existing_study": "storage.backends",
    "load_model": "deploy.model",
    "load_search_space": "space.search_space",
    "load_zoo": "models.zoo",
    "refit": "study.refit",
    "search": "study.search",
    "study_status": "results.status",
    "write_report": "results.report",
}

__all__ = [
    "AutotransferError",
    "BackboneWithHead",
    "Budget",
    "ConfigError",
    "DataError",
    "Interrupted",
    "ModelError",
    "Runtime",
    "SearchResult",
    "SearchSettings",
    "SearchSpace",
    "Strategy",
    "StudyMismatchError",
    "TransferClassifier",
    "TransferModel",
    "WeightsNotFoundError",
    "__version__",
    "create_backbone",
    "fit",
    "format_status",
    "leaderboard",
    "load_dataset",
    "load_existing_study",
    "load_model",
    "load_search_space",
    "load_zoo",
    "refit",
    "search",
    "study_status",
    "write_report",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'autotransfer' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


if TYPE_CHECKING:
    from autotransfer.data.dataset import load_dataset
    from autotransfer.deploy.model import TransferModel, load_model
    from autotransfer.errors import (
        AutotransferError,
        ConfigError,
        DataError,
        ModelError,
        StudyMismatchError,
        WeightsNotFoundError,
    )
    from autotransfer.estimator import TransferClassifier
    from autotransfer.interrupt import Interrupted
    from autotransfer.models.network import BackboneWithHead
    from autotransfer.models.zoo import create_backbone, load_zoo
    from autotransfer.results.leaderboard import leaderboard
    from autotransfer.results.report import write_report
    from autotransfer.results.status import format_status, study_status
    from autotransfer.settings import Budget, SearchSettings
    from autotransfer.space.search_space import SearchSpace, load_search_space
    from autotransfer.space.strategy import Strategy
    from autotransfer.storage.backends import load_existing_study
    from autotransfer.study.refit import refit
    from autotransfer.study.search import SearchResult, search
    from autotransfer.training.runtime import Runtime
    from autotransfer.training.trainer import fit
