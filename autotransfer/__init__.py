"""autotransfer: find the best transfer-learning strategy for an image-classification dataset.

An Optuna study samples strategies (timm backbone, freeze depth, head width, learning rate and the
recipe dimensions of :mod:`autotransfer.space.dimensions`), trains each on a small budget with
pruning, and ranks them in a leaderboard and an HTML report. The winner is refit on the full budget
(``refit``), exported and loaded (``TransferModel``, ``load_model``), or all of it runs as a
scikit-learn estimator (``TransferClassifier``).

The top level holds what a user calls; everything else is importable from its module (see
``ARCHITECTURE.md``). The names load on first use (lazy loading as in the Scientific Python SPEC 1),
so ``autotransfer report`` and other commands that only read a study's storage start without
importing PyTorch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._version import __version__

_EXPORTS: dict[str, str] = {
    "AutotransferError": "errors",
    "Budget": "settings",
    "ConfigError": "errors",
    "DataError": "errors",
    "Interrupted": "interrupt",
    "ModelError": "errors",
    "Runtime": "inputs",
    "SearchResult": "study",
    "SearchSettings": "settings",
    "SearchSpace": "space.search_space",
    "Strategy": "space.strategy",
    "StudyMismatchError": "errors",
    "TransferClassifier": "estimator",
    "TransferModel": "model",
    "TransferNet": "transfer",
    "WeightsNotFoundError": "errors",
    "create_backbone": "zoo",
    "fit": "trainer",
    "format_status": "status",
    "leaderboard": "leaderboard",
    "load_dataset": "data",
    "load_existing_study": "storage",
    "load_model": "model",
    "load_search_space": "space.search_space",
    "load_zoo": "zoo",
    "refit": "refit",
    "search": "study",
    "study_status": "status",
    "write_report": "report",
}

__all__ = [
    "AutotransferError",
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
    "TransferNet",
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
    from .data import load_dataset
    from .errors import AutotransferError, ConfigError, DataError, ModelError, StudyMismatchError, WeightsNotFoundError
    from .estimator import TransferClassifier
    from .interrupt import Interrupted
    from .leaderboard import leaderboard
    from .model import TransferModel, load_model
    from .refit import refit
    from .report import write_report
    from .runtime import Runtime
    from .settings import Budget, SearchSettings
    from .space.search_space import SearchSpace, load_search_space
    from .space.strategy import Strategy
    from .status import format_status, study_status
    from .storage import load_existing_study
    from .study import SearchResult, search
    from .trainer import fit
    from .transfer import TransferNet
    from .zoo import create_backbone, load_zoo
