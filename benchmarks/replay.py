"""Replay searches against the recorded grid: Optuna's samplers and pruners, no training.

A replayed trial samples a strategy through the search space exactly as a real trial does
(:meth:`autotransfer.SearchSpace.suggest`, the study's sampler and pruner from
:mod:`autotransfer.study.sampling`), then reads the strategy's recorded learning curve from
``benchmarks/search_quality/grid.csv`` instead of training: it reports the recorded val metric
after every epoch, asks the pruner, and is charged the recorded seconds. This is the tabular
benchmark method of HPOBench and LCBench (Eggensperger et al., 2021; Zimmer et al., 2021): a
comparison of methods over many seeds costs minutes instead of days.

Cost model (seconds, as recorded on the grid's machine): each epoch a trial runs costs the median
``train_seconds + eval_seconds`` of the epochs recorded for its backbone, freeze depth and head
width (over all learning rates: the cost does not depend on the learning rate, and the median
keeps a strategy timed while the shared machine was busy from counting as slow). Building the
network and preparing its inputs costs the group's cold ``setup_seconds`` the first time a
replayed study uses a backbone at a freeze depth (that is when a search extracts the cached
features or frozen-prefix activations) and the warm one afterwards. Sampling time is not
charged: it is milliseconds against seconds of training.

A strategy whose loss diverged in the recording fails at once, charged its recorded seconds,
without reporting (the recording keeps no per-split metrics of the epochs before it diverged).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import optuna
import pandas as pd

from autotransfer.errors import TrialFailed
from autotransfer.space.search_space import SearchSpace, load_search_space
from autotransfer.space.strategy import Strategy, strategy_family
from autotransfer.study.sampling import make_pruner, make_sampler

from .grid import KEY, Grid

Key = tuple[str, float, int, float]


@dataclass(frozen=True)
class Curve:
    """One recorded strategy: its metrics and seconds per epoch.

    Attributes:
        val: Val metric after each epoch (the objective).
        test: Test accuracy after each epoch (never seen by a replayed search).
        seconds: Train plus val seconds of each epoch.
        setup_cold: Setup seconds the first time its backbone and freeze depth are used.
        setup_warm: Setup seconds afterwards.
        diverged: Whether its loss diverged (then ``val`` and ``test`` are empty).
    """

    val: tuple[float, ...]
    test: tuple[float, ...]
    seconds: tuple[float, ...]
    setup_cold: float
    setup_warm: float
    diverged: bool = False

    @property
    def final(self) -> float:
        """Val metric at the full budget (NaN if diverged)."""
        return self.val[-1] if self.val else math.nan


class RecordedGrid:
    """The recorded grid of one dataset, looked up by strategy.

    Args:
        table: The recorded table (:func:`benchmarks.grid.read_table`).
        dataset: ``hymenoptera``, ``flowers`` or ``digits``.
        metric: The val metric that is the objective (``accuracy``, ``balanced_accuracy``, ``macro_f1``).

    Raises:
        ValueError: The table holds no strategy of ``dataset``.
    """

    def __init__(self, table: pd.DataFrame, dataset: str, metric: str = "accuracy") -> None:
        rows = table[table["dataset"] == dataset] if not table.empty else table
        if rows.empty:
            raise ValueError(f"The recorded grid has no rows for dataset {dataset!r}; record it with "
                             f"python -m benchmarks.record_grid --datasets {dataset}")
        self.dataset = dataset
        self.epochs = int(rows["epoch"].max())
        self.curves: dict[Key, Curve] = {}
        setup = rows[rows["epoch"] == 1].groupby(["backbone", "freeze_depth"])["setup_seconds"].agg(["max", "min"])
        epoch_cost = (rows["train_seconds"] + rows["eval_seconds"]).groupby(
            [rows["backbone"], rows["freeze_depth"], rows["head_width"]]).median()
        for _, group in rows.sort_values("epoch").groupby(KEY[1:], sort=True):
            first = group.iloc[0]
            k: Key = (str(first["backbone"]), float(first["freeze_depth"]), int(first["head_width"]),
                      float(first["learning_rate"]))
            cold, warm = (float(v) for v in setup.loc[(k[0], k[1])])
            if (group["status"] == "diverged").any():
                spent = float((group["train_seconds"] + group["eval_seconds"]).sum())
                self.curves[k] = Curve((), (), (spent,), cold, warm, True)
            else:
                self.curves[k] = Curve(tuple(group[f"val_{metric}"].astype(float)),
                                       tuple(group["test_accuracy"].astype(float)),
                                       (float(epoch_cost[k[:3]]),) * len(group), cold, warm)
        complete = [c for c in self.curves.values() if not c.diverged and len(c.val) == self.epochs]
        if not complete:
            raise ValueError(f"No strategy of {dataset!r} was recorded for all {self.epochs} epochs")
        self.learning_rates = np.array(sorted({k[3] for k in self.curves}))

    def key(self, strategy: Strategy) -> Key:
        """The recorded strategy a sampled one reads: the same values, the learning rate nearest in log scale.

        Raises:
            KeyError: The backbone, freeze depth or head width was not recorded.
        """
        distance = np.abs(np.log(self.learning_rates) - math.log(strategy.learning_rate))
        lr = float(self.learning_rates[np.argmin(distance)])
        key = (strategy.backbone, float(strategy.freeze_depth), int(strategy.head_width), lr)
        if key not in self.curves:
            raise KeyError(f"Strategy {key} is not in the recorded grid of {self.dataset!r}")
        return key

    def best_val(self) -> float:
        """The best val metric at the full budget over the grid."""
        return max(c.final for c in self.curves.values() if not c.diverged)

    def full_cost(self) -> float:
        """Seconds to train every strategy of the grid for the full budget (a full study), setups included."""
        clock = Clock(self)
        for key, curve in self.curves.items():
            clock.setup(key)
            clock.seconds += sum(curve.seconds)
        return clock.seconds

    def family_values(self) -> pd.Series:
        """Best full-budget val metric of each strategy family (backbone x transfer mode x head kind)."""
        values: dict[str, float] = {}
        for (backbone, depth, head, _), curve in self.curves.items():
            family = strategy_family(backbone, depth, head)
            if not curve.diverged:
                values[family] = max(values.get(family, -math.inf), curve.final)
        return pd.Series(values).sort_values(ascending=False)


@dataclass
class Clock:
    """Compute seconds spent by one replayed study, and the trace of its trials."""

    grid: RecordedGrid
    seconds: float = 0.0
    warm: set[tuple[str, float]] = field(default_factory=set)
    trace: list[dict[str, Any]] = field(default_factory=list)

    def setup(self, key: Key) -> None:
        """Charge the setup of ``key``'s network and inputs (cold once per backbone and depth)."""
        curve, group = self.grid.curves[key], (key[0], key[1])
        self.seconds += curve.setup_warm if group in self.warm else curve.setup_cold
        self.warm.add(group)

    def log(self, number: int, key: Key, state: str, epochs: int, value: float | None) -> None:
        """Append one finished trial to the trace."""
        curve = self.grid.curves[key]
        complete = state == "COMPLETE" and value is not None
        self.trace.append({"trial": number, "backbone": key[0], "freeze_depth": key[1], "head_width": key[2],
                           "learning_rate": key[3], "state": state, "epochs": epochs, "seconds": self.seconds,
                           "value": value if complete else math.nan,
                           "test": curve.test[-1] if complete else math.nan})


def replay_objective(grid: RecordedGrid, space: SearchSpace, clock: Clock) -> Callable[[optuna.Trial], float]:
    """An objective that replays recorded curves, as :class:`autotransfer.Objective` trains them."""

    def objective(trial: optuna.Trial) -> float:
        strategy = space.suggest(trial)
        trial.set_user_attr("family", strategy.family)
        key = grid.key(strategy)
        curve = grid.curves[key]
        clock.setup(key)
        if curve.diverged:
            clock.seconds += curve.seconds[0]
            clock.log(trial.number, key, "FAIL", 0, None)
            raise TrialFailed("diverged (recorded)")
        for epoch, (value, seconds) in enumerate(zip(curve.val, curve.seconds, strict=True), start=1):
            clock.seconds += seconds
            trial.report(value, epoch)
            trial.set_user_attr("epochs", epoch)
            if epoch < grid.epochs and trial.should_prune():
                clock.log(trial.number, key, "PRUNED", epoch, None)
                raise optuna.TrialPruned(f"pruned at epoch {epoch}")
        clock.log(trial.number, key, "COMPLETE", grid.epochs, curve.final)
        return curve.final

    return objective


@dataclass(frozen=True)
class Method:
    """A search method replayed through Optuna.

    Attributes:
        name: Short name used in tables and plots.
        sampler: ``"tpe"`` (:func:`autotransfer.study.sampling.make_sampler`) or ``"random"``.
        pruner: A name for :func:`autotransfer.study.sampling.make_pruner` (``"hyperband"``, ``"sha"``,
            ``"median"``, ``"none"``).
        baseline: Enqueue the textbook recipe as the first trial, as ``autotransfer search`` does.
        sampler_kwargs: Extra arguments of ``make_sampler`` (``n_startup_trials``).
        pruner_kwargs: Extra arguments of ``make_pruner`` (``reduction_factor``).
    """

    name: str
    sampler: str
    pruner: str
    baseline: bool = False
    sampler_kwargs: dict[str, Any] = field(default_factory=dict)
    pruner_kwargs: dict[str, Any] = field(default_factory=dict)


def grid_space(grid: Grid) -> SearchSpace:
    """The search space of the recorded grid (a continuous log learning rate, as in the real spaces)."""
    return load_search_space(grid.space())


def replay_study(method: Method, grid: RecordedGrid, space: SearchSpace, seed: int, *, budget_seconds: float,
                 max_trials: int = 1000) -> tuple[optuna.Study, pd.DataFrame]:
    """Run one replayed study until its compute reaches ``budget_seconds``.

    Args:
        method: What to replay.
        grid: The recorded grid of one dataset.
        space: The search space (:func:`grid_space`).
        seed: Sampler seed.
        budget_seconds: Recorded compute (s) after which no trial starts.
        max_trials: A cap on trials, so that a run of cheap pruned trials ends.

    Returns:
        ``(study, trace)``: the in-memory Optuna study and one row per finished trial (``trial,
        backbone, freeze_depth, head_width, learning_rate, state, epochs, seconds, value, test``),
        ``seconds`` being the compute spent when the trial ended.
    """
    sampler: optuna.samplers.BaseSampler = (make_sampler(seed, **method.sampler_kwargs) if method.sampler == "tpe"
                                            else optuna.samplers.RandomSampler(seed=seed))
    # A fixed study name: Optuna's HyperbandPruner assigns trials to brackets by a hash of the
    # study name and trial number, so an in-memory study's random name would change the sequence.
    study = optuna.create_study(study_name=f"replay-{grid.dataset}-{method.name}-{seed}", direction="maximize",
                                sampler=sampler, pruner=make_pruner(method.pruner, grid.epochs, **method.pruner_kwargs))
    if method.baseline:
        study.enqueue_trial(space.baseline().as_dict(), user_attrs={"baseline": True})
    clock = Clock(grid)

    def stop(study: optuna.Study, _: optuna.trial.FrozenTrial) -> None:
        if clock.seconds >= budget_seconds:
            study.stop()

    study.optimize(replay_objective(grid, space, clock), n_trials=max_trials, callbacks=[stop], catch=(TrialFailed,))
    return study, pd.DataFrame(clock.trace)


def replay_one_epoch(grid: RecordedGrid, seed: int, *, keep: int = 3) -> pd.DataFrame:
    """The one-epoch baseline: every grid strategy trains one epoch, the best ``keep`` go on to the full budget.

    The order of the first round is Optuna's seeded ``GridSampler`` order; the survivors continue
    from their epoch-1 state (no second setup), best first.

    Returns:
        The trace, as :func:`replay_study` returns it.
    """
    clock = Clock(grid)
    keys = list(grid.curves)
    values = {name: sorted({k[i] for k in keys}) for i, name in enumerate(KEY[1:])}
    sampler = optuna.samplers.GridSampler(values, seed=seed)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    first: dict[Key, float] = {}

    def one_epoch(trial: optuna.Trial) -> float:
        key: Key = tuple(trial.suggest_categorical(n, values[n]) for n in KEY[1:])  # type: ignore[assignment]
        curve = grid.curves[key]
        clock.setup(key)
        clock.seconds += curve.seconds[0]
        if curve.diverged:
            clock.log(trial.number, key, "FAIL", 0, None)
            raise TrialFailed("diverged (recorded)")
        first[key] = curve.val[0]
        clock.log(trial.number, key, "PRUNED", 1, None)
        return curve.val[0]

    study.optimize(one_epoch, n_trials=len(keys), catch=(TrialFailed,))
    survivors = sorted(first, key=lambda k: -first[k])[:keep]
    for i, key in enumerate(survivors):
        curve = grid.curves[key]
        clock.seconds += sum(curve.seconds[1:])
        clock.log(len(keys) + i, key, "COMPLETE", grid.epochs, curve.final)
    return pd.DataFrame(clock.trace)


def replay_textbook(grid: RecordedGrid, space: SearchSpace) -> pd.DataFrame:
    """The textbook recipe alone: frozen backbone, Dense(1024) head, learning rate 1e-4, one trial.

    It is :meth:`autotransfer.SearchSpace.baseline` on the space's first backbone, trained for the full budget.
    """
    clock = Clock(grid)
    key = grid.key(space.baseline())
    clock.setup(key)
    curve = grid.curves[key]
    clock.seconds += sum(curve.seconds)
    clock.log(0, key, "FAIL" if curve.diverged else "COMPLETE", 0 if curve.diverged else grid.epochs,
              None if curve.diverged else curve.final)
    return pd.DataFrame(clock.trace)
