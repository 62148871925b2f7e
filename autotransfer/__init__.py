"""autotransfer: find the best transfer-learning strategy for an image-classification dataset.

An Optuna study samples strategies (timm backbone, freeze depth, head width, learning rate),
trains each on a small budget with pruning, and ranks them in a leaderboard and an HTML report.
"""

from ._version import __version__
from .data import ImageDataset, LabelledImages, load_dataset
from .errors import (
    AutotransferError,
    ConfigError,
    DataError,
    StudyMismatchError,
    TrialFailed,
    WeightsNotFoundError,
)
from .leaderboard import LEADERBOARD_COLUMNS, leaderboard
from .objective import Objective, trial_seed
from .report import render_report, write_outputs, write_report
from .search_space import BASELINE_RECIPE, SearchSpace, Strategy, bundled_spaces, load_search_space, strategy_family
from .storage import load_existing_study
from .study import SearchResult, make_pruner, make_sampler, open_study, search
from .trainer import Budget, TrainResult, evaluate, evaluate_split, fit, make_transforms, predict_labels, resolve_device
from .transfer import TransferNet, block_groups, count_parameters, freeze_backbone, make_head
from .zoo import Zoo, ZooEntry, check_backbones, create_backbone, feature_dim, load_zoo

__all__ = [
    "BASELINE_RECIPE",
    "LEADERBOARD_COLUMNS",
    "AutotransferError",
    "Budget",
    "ConfigError",
    "DataError",
    "ImageDataset",
    "LabelledImages",
    "Objective",
    "SearchResult",
    "SearchSpace",
    "Strategy",
    "StudyMismatchError",
    "TrainResult",
    "TransferNet",
    "TrialFailed",
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
    "fit",
    "freeze_backbone",
    "leaderboard",
    "load_dataset",
    "load_existing_study",
    "load_search_space",
    "load_zoo",
    "make_head",
    "make_pruner",
    "make_sampler",
    "make_transforms",
    "open_study",
    "predict_labels",
    "render_report",
    "resolve_device",
    "search",
    "strategy_family",
    "trial_seed",
    "write_outputs",
    "write_report",
]
