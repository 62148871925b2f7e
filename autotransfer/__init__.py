"""autotransfer: find the best transfer-learning strategy for an image-classification dataset.

An Optuna study samples strategies (timm backbone, freeze depth, head width, learning rate),
trains each on a small budget with pruning, and ranks them in a leaderboard and an HTML report.
The winner is refit on the full budget (``refit``), exported and loaded (``TransferModel``,
``load_model``), or all of it runs as a scikit-learn estimator (``TransferClassifier``).

The public names below load on first use (lazy loading as in the Scientific Python SPEC 1), so
``autotransfer report`` and other commands that only read a study's storage start without
importing PyTorch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._version import __version__

_EXPORTS: dict[str, str] = {
    "BASELINE_RECIPE": "search_space",
    "LEADERBOARD_COLUMNS": "leaderboard",
    "PRUNERS": "samplers",
    "AutotransferError": "errors",
    "BackboneSpec": "model",
    "ModelError": "errors",
    "TransferClassifier": "estimator",
    "TransferModel": "model",
    "images_dataset": "images",
    "load_model": "model",
    "refit": "refit",
    "FeatureStore": "cache",
    "MemoryCache": "cache",
    "Runtime": "inputs",
    "TrialInputs": "plan",
    "prepare_inputs": "plan",
    "BadImageError": "errors",
    "Budget": "trainer",
    "ConfigError": "errors",
    "DataError": "errors",
    "ImageDataset": "data",
    "Interrupted": "interrupt",
    "LabelledImages": "data",
    "Objective": "objective",
    "SearchResult": "study",
    "SearchSpace": "search_space",
    "Strategy": "search_space",
    "StudyMismatchError": "errors",
    "StudyStatus": "status",
    "TrainResult": "trainer",
    "TransferNet": "transfer",
    "TrialFailed": "errors",
    "TrialTimeout": "errors",
    "WeightsNotFoundError": "errors",
    "Zoo": "zoo",
    "ZooEntry": "zoo",
    "block_groups": "transfer",
    "bundled_spaces": "search_space",
    "check_backbones": "zoo",
    "count_parameters": "transfer",
    "create_backbone": "zoo",
    "evaluate": "trainer",
    "evaluate_split": "trainer",
    "feature_dim": "zoo",
    "finished_trials": "recovery",
    "fit": "trainer",
    "format_status": "status",
    "freeze_backbone": "transfer",
    "leaderboard": "leaderboard",
    "load_dataset": "data",
    "load_existing_study": "storage",
    "load_search_space": "search_space",
    "load_zoo": "zoo",
    "make_head": "transfer",
    "make_pruner": "samplers",
    "make_sampler": "samplers",
    "make_storage": "storage",
    "make_transforms": "trainer",
    "open_study": "study",
    "predict_labels": "trainer",
    "render_report": "report",
    "resolve_device": "trainer",
    "search": "study",
    "stop_reason": "storage",
    "strategy_family": "search_space",
    "study_status": "status",
    "trial_seed": "objective",
    "write_outputs": "report",
    "write_report": "report",
}

__all__ = [
    "BASELINE_RECIPE",
    "LEADERBOARD_COLUMNS",
    "PRUNERS",
    "AutotransferError",
    "BackboneSpec",
    "BadImageError",
    "Budget",
    "ConfigError",
    "DataError",
    "FeatureStore",
    "ImageDataset",
    "Interrupted",
    "LabelledImages",
    "MemoryCache",
    "ModelError",
    "Objective",
    "Runtime",
    "SearchResult",
    "SearchSpace",
    "Strategy",
    "StudyMismatchError",
    "StudyStatus",
    "TrainResult",
    "TransferClassifier",
    "TransferModel",
    "TransferNet",
    "TrialFailed",
    "TrialInputs",
    "TrialTimeout",
    "WeightsNotFoundError",
    "Zoo",
    "ZooEntry",
    "__version__",
    "block_groups",
    "bundled_spaces",
    "check_backbones",
    "count_parameters",
    "create_backbone",
    "evaluate",
    "evaluate_split",
    "feature_dim",
    "finished_trials",
    "fit",
    "format_status",
    "freeze_backbone",
    "images_dataset",
    "leaderboard",
    "load_dataset",
    "load_existing_study",
    "load_model",
    "load_search_space",
    "load_zoo",
    "make_head",
    "make_pruner",
    "make_sampler",
    "make_storage",
    "make_transforms",
    "open_study",
    "predict_labels",
    "prepare_inputs",
    "refit",
    "render_report",
    "resolve_device",
    "search",
    "stop_reason",
    "strategy_family",
    "study_status",
    "trial_seed",
    "write_outputs",
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
    from .cache import FeatureStore, MemoryCache
    from .data import ImageDataset, LabelledImages, load_dataset
    from .errors import (
        AutotransferError,
        BadImageError,
        ConfigError,
        DataError,
        ModelError,
        StudyMismatchError,
        TrialFailed,
        TrialTimeout,
        WeightsNotFoundError,
    )
    from .estimator import TransferClassifier
    from .images import images_dataset
    from .inputs import Runtime
    from .interrupt import Interrupted
    from .leaderboard import LEADERBOARD_COLUMNS, leaderboard
    from .model import BackboneSpec, TransferModel, load_model
    from .objective import Objective, trial_seed
    from .plan import TrialInputs, prepare_inputs
    from .recovery import finished_trials
    from .refit import refit
    from .report import render_report, write_outputs, write_report
    from .samplers import PRUNERS, make_pruner, make_sampler
    from .search_space import BASELINE_RECIPE, SearchSpace, Strategy, bundled_spaces, load_search_space, strategy_family
    from .status import StudyStatus, format_status, study_status
    from .storage import load_existing_study, make_storage, stop_reason
    from .study import SearchResult, open_study, search
    from .trainer import (
        Budget,
        TrainResult,
        evaluate,
        evaluate_split,
        fit,
        make_transforms,
        predict_labels,
        resolve_device,
    )
    from .transfer import TransferNet, block_groups, count_parameters, freeze_backbone, make_head
    from .zoo import Zoo, ZooEntry, check_backbones, create_backbone, feature_dim, load_zoo
