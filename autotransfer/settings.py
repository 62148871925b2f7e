"""The settings of a search, each level in one frozen, validated object (no PyTorch import).

* :class:`SearchSettings`: the study level (how many trials, how long, where it is stored, how
  many workers, the seed, the device);
* :class:`Budget`: what one trial may spend (maximum epochs, batch size) and the metric it is scored by;
* :class:`~autotransfer.training.runtime.Runtime`: caches and accelerator settings, which never
  change a result.

Each is built once, from keyword arguments, the command line or the scikit-learn estimator, and
passed on by keyword; a value out of range raises :class:`~autotransfer.errors.ConfigError` on
construction, before any work starts. Adding a study option is one field here and its flag.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from autotransfer.errors import ConfigError, describe

__all__ = ["METRICS", "PRUNERS", "SCREEN_SCORES", "Budget", "SearchSettings", "split_options"]

METRICS = ("accuracy", "balanced_accuracy", "macro_f1")
PRUNERS = ("hyperband", "median", "sha", "none")
CLASS_WEIGHTS = (None, "balanced")
# Transferability scores the screen ranks backbones by (autotransfer.screen.scores), the default first
SCREEN_SCORES = ("knn", "logme", "h_score", "linear_probe")
_MAX_SEED = 2**32 - 1  # NumPy's and Optuna's seeds are 32-bit


def _positive_int(name: str, value: Any, *, optional: bool = False) -> None:
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(describe(name, "a positive integer" + (" or None" if optional else ""), value))


def _positive_seconds(name: str, value: Any) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (value > 0 and math.isfinite(value)):
        raise ConfigError(describe(name, "a positive number of seconds or None", value))


@dataclass(frozen=True)
class Budget:
    """What one trial may spend, and the objective it is scored by.

    Attributes:
        epochs: Maximum epochs per trial (the fidelity unit for pruning); a trial that is pruned
            runs fewer, recorded as its ``epochs`` attribute.
        batch_size: Images per optimisation step.
        metric: Validation metric maximised: ``"accuracy"``, ``"balanced_accuracy"`` or ``"macro_f1"``.
        class_weight: ``"balanced"``: weight the training loss by inverse class frequency of each
            training split (scikit-learn's ``compute_class_weight``); None: unweighted.

    Raises:
        ConfigError: A value is out of range (raised on construction).
    """

    epochs: int = 3
    batch_size: int = 32
    metric: str = "accuracy"
    class_weight: str | None = None

    def __post_init__(self) -> None:
        _positive_int("epochs", self.epochs)
        _positive_int("batch_size", self.batch_size)
        if self.metric not in METRICS:
            raise ConfigError(describe("metric", f"one of {list(METRICS)}", self.metric))
        if self.class_weight not in CLASS_WEIGHTS:
            raise ConfigError(describe("class_weight", "'balanced' or None (unweighted)", self.class_weight))


@dataclass(frozen=True, kw_only=True)
class SearchSettings:
    """The study-level settings of a search.

    Attributes:
        n_trials: Total finished trials wanted in the study (None: until ``timeout``); interrupted
            and stale trials do not count.
        timeout: Seconds of this run after which no trial starts (None: no limit).
        trial_timeout: Seconds one trial may run; a longer one is pruned at its last epoch (or
            failed before its first). None: no limit.
        pruner: ``"hyperband"``, ``"median"``, ``"sha"`` or ``"none"``.
        seed: Seeds the split, the sampler and every trial, in [0, 2**32 - 1].
        device: ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"`` (availability is checked when the
            search starts).
        storage: Optuna storage URL or journal file path (None: the output folder's, or in memory).
        study_name: Default: the dataset's name.
        out: Output folder (storage, cache, leaderboard, report); None writes nothing.
        workers: Worker processes sharing the storage (not SQLite).
        heartbeat_interval: Seconds between heartbeats of running trials on a database server.
        baseline: Run the textbook recipe as the first trial of a new study.
        report_every: Minimum seconds between two refreshes of ``report.html`` during the search.
        finalists: Strategy families whose best trial the confirmation stage trains again (0: no
            stage; see :mod:`autotransfer.study.confirm`).
        repeats: Confirmation runs per finalist (>= 2); None: as many as fit ``confirm_share`` (2 to 5).
        tie_margin: Half-width of the region of practical equivalence, in metric units (0.01: one point).
        resplit: Re-draw train/val for each repeat even when val is a folder the user gave.
        confirm_share: Compute the stage may spend, as a share of the search's (when ``repeats`` is None).
        patience: Stop sampling after this many finished trials without an improvement larger than
            max(one val image, ``tie_margin``); None: no patience rule.
        dedupe: Keep one copy of each group of byte-identical images and drop label-conflicted ones when
            the dataset is scanned (:mod:`autotransfer.data.hygiene`).
        screen: Keep only the ``screen`` backbones of the space that score best on their pooled
            features (:mod:`autotransfer.screen`) before any trial trains; None: no screen.
        screen_score: The score the screen ranks by: one of :data:`SCREEN_SCORES`.

    Raises:
        ConfigError: A value is out of range (raised on construction).
    """

    n_trials: int | None = 20
    timeout: float | None = None
    trial_timeout: float | None = None
    pruner: str = "hyperband"
    seed: int = 0
    device: str = "auto"
    storage: str | None = None
    study_name: str | None = None
    out: Path | None = None
    workers: int = 1
    heartbeat_interval: int = 60
    baseline: bool = True
    report_every: float = 30.0
    finalists: int = 3
    repeats: int | None = None
    tie_margin: float = 0.01
    resplit: bool = False
    confirm_share: float = 0.5
    screen: int | None = None
    screen_score: str = SCREEN_SCORES[0]
    patience: int | None = None
    dedupe: bool = False

    def __post_init__(self) -> None:
        _positive_int("n_trials", self.n_trials, optional=True)
        _positive_seconds("timeout", self.timeout)
        _positive_seconds("trial_timeout", self.trial_timeout)
        if self.pruner not in PRUNERS:
            raise ConfigError(describe("pruner", f"one of {list(PRUNERS)}", self.pruner))
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed <= _MAX_SEED:
            raise ConfigError(describe("seed", f"an integer in [0, {_MAX_SEED}]", self.seed))
        device = self.device
        if not isinstance(device, str) or not (device in ("auto", "cpu", "cuda")
                                               or (device.startswith("cuda:") and device[5:].isdigit())):
            raise ConfigError(describe("device", "'auto', 'cpu', 'cuda' or 'cuda:N'", device))
        _positive_int("workers", self.workers)
        _positive_int("heartbeat_interval", self.heartbeat_interval)
        if not isinstance(self.baseline, bool):
            raise ConfigError(describe("baseline", "True or False", self.baseline))
        if isinstance(self.report_every, bool) or not isinstance(self.report_every, (int, float)) \
                or not self.report_every >= 0:
            raise ConfigError(describe("report_every", "a number of seconds >= 0", self.report_every))
        if isinstance(self.finalists, bool) or not isinstance(self.finalists, int) or self.finalists < 0:
            raise ConfigError(describe("finalists", "an integer >= 0 (0: no confirmation stage)", self.finalists))
        if self.repeats is not None and (isinstance(self.repeats, bool) or not isinstance(self.repeats, int)
                                         or self.repeats < 2):
            raise ConfigError(describe("repeats", "an integer >= 2, or None (as many as fit the budget)",
                                       self.repeats))
        if isinstance(self.tie_margin, bool) or not isinstance(self.tie_margin, (int, float)) \
                or not 0 <= self.tie_margin < 0.5:
            raise ConfigError(describe("tie_margin", "a metric difference in [0, 0.5) (0.01 = one point)",
                                       self.tie_margin))
        if isinstance(self.confirm_share, bool) or not isinstance(self.confirm_share, (int, float)) \
                or not 0 < self.confirm_share <= 10:
            raise ConfigError(describe("confirm_share", "a share of the search's compute in (0, 10]",
                                       self.confirm_share))
        _positive_int("screen", self.screen, optional=True)
        _positive_int("patience", self.patience, optional=True)
        if not isinstance(self.dedupe, bool):
            raise ConfigError(describe("dedupe", "True or False", self.dedupe))
        if self.screen_score not in SCREEN_SCORES:
            raise ConfigError(describe("screen_score", f"one of {list(SCREEN_SCORES)}", self.screen_score))
        if self.out is not None and not isinstance(self.out, Path):
            object.__setattr__(self, "out", Path(self.out))


def split_options(options: dict[str, Any], *classes: type) -> list[dict[str, Any]]:
    """Distribute keyword options over dataclasses by field name: one dict of keywords per class.

    Args:
        options: Keyword arguments, e.g. ``{"n_trials": 5, "epochs": 2, "cache_mb": 64}``.
        classes: Dataclasses whose fields the keywords name (a name goes to the first that has it).

    Returns:
        One ``{field: value}`` dict per class, in the order of ``classes``.

    Raises:
        ConfigError: A keyword is not a field of any of the classes (the message lists them).
    """
    names = [{f.name for f in fields(cls)} for cls in classes]
    out: list[dict[str, Any]] = [{} for _ in classes]
    for key, value in options.items():
        owner = next((k for k, known in enumerate(names) if key in known), None)
        if owner is None:
            accepted = sorted(set().union(*names))
            raise ConfigError(describe("option", f"one of {accepted}", key))
        out[owner][key] = value
    return out
