"""The search-quality benchmark: the recorder, the replay of samplers and pruners, its summaries."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest
import torch

from autotransfer import Budget, Runtime, fit, load_dataset
from autotransfer.errors import ConfigError
from autotransfer.models.network import BackboneWithHead as TransferNet
from autotransfer.models.zoo import create_backbone, load_zoo
from autotransfer.space.strategy import Strategy, strategy_family
from autotransfer.study.sampling import make_pruner
from autotransfer.training.trainer import evaluate_split, seed_everything
from benchmarks.grid import TABLE, Grid, read_table
from benchmarks.record_grid import record_strategy
from benchmarks.replay import Clock, RecordedGrid, grid_space, replay_one_epoch, replay_study, replay_textbook
from benchmarks.search_quality import METHODS, best_so_far, kendall_one, summarise

needs_grid = pytest.mark.skipif(not TABLE.is_file(), reason="benchmarks/search_quality/grid.csv is not recorded")


@pytest.fixture(scope="module")
def table() -> pd.DataFrame:
    if not TABLE.is_file():
        pytest.skip("benchmarks/search_quality/grid.csv is not recorded")
    return read_table()


@pytest.fixture(scope="module")
def hymenoptera(table: pd.DataFrame) -> RecordedGrid:
    return RecordedGrid(table, "hymenoptera")


def _trials(study: optuna.Study) -> list[tuple[object, ...]]:
    return [(t.number, t.state.name, tuple(sorted(t.params.items())), t.value, tuple(t.intermediate_values.items()))
            for t in study.trials]


@needs_grid
def test_replay_with_a_fixed_seed_reproduces_its_sequence_exactly(hymenoptera: RecordedGrid) -> None:
    space = grid_space(Grid.load())
    runs = [replay_study(METHODS["default"], hymenoptera, space, seed=7, budget_seconds=600.0) for _ in range(2)]
    (study_a, trace_a), (study_b, trace_b) = runs
    assert len(study_a.trials) > 10
    assert _trials(study_a) == _trials(study_b)
    pd.testing.assert_frame_equal(trace_a, trace_b)
    assert {"COMPLETE", "PRUNED"} <= set(trace_a["state"])  # Hyperband pruned some, others ran the whole budget
    other, _ = replay_study(METHODS["default"], hymenoptera, space, seed=8, budget_seconds=600.0)
    assert _trials(other) != _trials(study_a)


@needs_grid
def test_replayed_trials_report_the_recorded_curves_and_pay_the_recorded_seconds(
        table: pd.DataFrame, hymenoptera: RecordedGrid) -> None:
    study, trace = replay_study(METHODS["random+sha"], hymenoptera, grid_space(Grid.load()), seed=0,
                                budget_seconds=400.0)
    rows = table[table["dataset"] == "hymenoptera"]
    clock = 0.0
    warm: set[tuple[str, float]] = set()
    for trial, step in zip(study.trials, trace.itertuples(), strict=True):
        key = hymenoptera.key(Strategy(**trial.params))
        recorded = rows[(rows["backbone"] == key[0]) & (rows["freeze_depth"] == key[1])
                        & (rows["head_width"] == key[2]) & (rows["learning_rate"] == key[3])].sort_values("epoch")
        assert (step.backbone, step.freeze_depth, step.head_width, step.learning_rate) == key
        for epoch, value in trial.intermediate_values.items():
            assert value == pytest.approx(recorded["val_accuracy"].iloc[epoch - 1])
        epochs = len(trial.intermediate_values)
        assert step.epochs == epochs
        if trial.state == optuna.trial.TrialState.COMPLETE:
            assert epochs == hymenoptera.epochs and trial.value == pytest.approx(recorded["val_accuracy"].iloc[-1])
            assert step.test == pytest.approx(recorded["test_accuracy"].iloc[-1])
        group = rows[(rows["backbone"] == key[0]) & (rows["freeze_depth"] == key[1]) & (rows["epoch"] == 1)]
        setup = group["setup_seconds"].min() if (key[0], key[1]) in warm else group["setup_seconds"].max()
        warm.add((key[0], key[1]))
        group_rows = rows[(rows["backbone"] == key[0]) & (rows["freeze_depth"] == key[1])]
        same_cost = group_rows[group_rows["head_width"] == key[2]]
        clock += setup + epochs * float((same_cost["train_seconds"] + same_cost["eval_seconds"]).median())
        assert step.seconds == pytest.approx(clock)
    assert clock >= 400.0 and trace["seconds"].iloc[-2] < 400.0  # stops at the first trial past the budget


@needs_grid
def test_learning_rates_snap_to_the_nearest_recorded_decade(hymenoptera: RecordedGrid) -> None:
    space = grid_space(Grid.load())
    low, high = space.dimensions["learning_rate"].low, space.dimensions["learning_rate"].high
    assert low == pytest.approx(10**-4.5) and high == pytest.approx(10**-1.5)
    for lr, expected in ((4e-5, 1e-4), (3e-4, 1e-4), (3.3e-4, 1e-3), (2e-3, 1e-3), (0.03, 1e-2)):
        strategy = Strategy("mobilenetv2_035.keras_in1k", 1.0, 0, lr)
        assert hymenoptera.key(strategy)[3] == pytest.approx(expected)
    with pytest.raises(KeyError, match="not in the recorded grid"):
        hymenoptera.key(Strategy("resnet50", 1.0, 0, 1e-3))


@needs_grid
def test_one_epoch_baseline_and_textbook_recipe(hymenoptera: RecordedGrid) -> None:
    trace = replay_one_epoch(hymenoptera, seed=0, keep=3)
    first = trace[trace["state"] != "COMPLETE"]
    assert len(first) == len(hymenoptera.curves) and (first["epochs"] <= 1).all()
    complete = trace[trace["state"] == "COMPLETE"]
    order = [tuple(r) for r in first[["backbone", "freeze_depth", "head_width", "learning_rate"]].values]
    top3 = sorted(order, key=lambda k: -hymenoptera.curves[k].val[0])[:3]  # ties: the first trained goes on
    assert [tuple(r) for r in complete[["backbone", "freeze_depth", "head_width", "learning_rate"]].values] == top3
    assert trace["seconds"].is_monotonic_increasing
    assert replay_one_epoch(hymenoptera, seed=1)["backbone"].tolist() != trace["backbone"].tolist()
    textbook = replay_textbook(hymenoptera, grid_space(Grid.load()))
    assert textbook[["backbone", "freeze_depth", "head_width", "learning_rate"]].iloc[0].tolist() == [
        "mobilenetv2_100.tf2_in1k", 1.0, 1024, 1e-4]


def _synthetic_grid(value: Callable[[str], float]) -> RecordedGrid:
    """Every grid strategy, its val metric ``value(family)`` at every epoch, 1 s per epoch."""
    rows = [{"dataset": "synthetic", "backbone": b, "freeze_depth": d, "head_width": h, "learning_rate": lr,
             "epoch": epoch, "status": "completed", "setup_seconds": 0.0, "train_seconds": 1.0, "eval_seconds": 0.0,
             "val_accuracy": value(strategy_family(b, d, h)), "test_accuracy": 0.5}
            for b, d, h, lr in Grid.load().strategies() for epoch in range(1, 5)]
    return RecordedGrid(pd.DataFrame(rows), "synthetic")


def test_kendall_tau_compares_the_reports_family_ranking_with_the_grids() -> None:
    families = sorted({strategy_family(b, d, h) for b, d, h, _ in Grid.load().strategies()})
    agree = _synthetic_grid(lambda f: 0.5 + 0.01 * families.index(f))
    result = kendall_one(agree, seed=0, n_trials=40)
    assert result["families"] >= 3 and result["tau"] == pytest.approx(1.0)
    assert result["families_tried"] >= result["families"] and result["tau_epoch1"] == pytest.approx(1.0)
    assert result["top_is_grid_best"] == (result["top_family"] == families[-1])
    # a grid whose full-budget values reverse what the search saw cannot agree: build the search's view
    # from one grid and the truth from another
    reverse = _synthetic_grid(lambda f: 0.9 - 0.01 * families.index(f))
    agree.family_values = reverse.family_values  # type: ignore[method-assign]
    assert kendall_one(agree, seed=0, n_trials=40)["tau"] == pytest.approx(-1.0)


def test_summary_finds_compute_to_target_and_the_picks_test(table: pd.DataFrame) -> None:
    grid = RecordedGrid(table, "hymenoptera")
    best = grid.best_val()
    trace = pd.DataFrame({"seconds": [10.0, 30.0, 70.0, 90.0, 95.0],
                          "value": [best - 0.05, math.nan, best - 0.005, best, math.nan],
                          "test": [0.5, math.nan, 0.7, 0.8, math.nan]})
    trace = trace.assign(dataset="hymenoptera", method="m", seed=0)
    row = summarise(trace, {"hymenoptera": grid}, {"hymenoptera": 100.0}).iloc[0]
    assert row["to_target"] == 70.0 and row["best_val"] == best and row["pick_test"] == 0.8  # last trial pruned
    curve = best_so_far(trace, np.array([5.0, 30.0, 75.0, 100.0]))
    assert np.isnan(curve[0]) and curve[1:].tolist() == [best - 0.05, best - 0.005, best]
    never = trace.assign(value=[0.1, math.nan, 0.2, 0.3, math.nan])
    assert summarise(never, {"hymenoptera": grid}, {"hymenoptera": 100.0}).iloc[0]["to_target"] == math.inf


def test_clock_charges_a_cold_setup_once_per_backbone_and_depth() -> None:
    rows = []
    for head, setup in ((0, 5.0), (256, 0.5)):
        for epoch in (1, 2):
            rows.append({"dataset": "d", "backbone": "b", "freeze_depth": 1.0, "head_width": head,
                         "learning_rate": 1e-3, "epoch": epoch, "status": "completed",
                         "setup_seconds": setup if epoch == 1 else 0.0, "train_seconds": 1.0, "eval_seconds": 0.25,
                         "val_accuracy": 0.5 + 0.1 * epoch, "test_accuracy": 0.4})
    grid = RecordedGrid(pd.DataFrame(rows), "d")
    clock = Clock(grid)
    for key in [("b", 1.0, 0, 1e-3), ("b", 1.0, 256, 1e-3), ("b", 1.0, 0, 1e-3)]:
        clock.setup(key)
    assert clock.seconds == 5.0 + 0.5 + 0.5
    assert grid.full_cost() == 5.0 + 0.5 + 4 * 1.25
    with pytest.raises(ValueError, match="no rows for dataset 'x'"):
        RecordedGrid(pd.DataFrame(rows), "x")


def test_record_strategy_scores_val_and_test_in_one_pass(test_model_zoo: Path) -> None:
    """The recorder's val figures are those of a plain fit on val alone; test comes from the same weights."""
    zoo = load_zoo(test_model_zoo)
    full = load_dataset("digits", seed=0)
    splits = {s: items[:n] for (s, items), n in zip(full.splits.items(), (60, 40, 30), strict=True)}
    dataset = replace(full, splits=splits)
    grid = replace(Grid.load(), epochs=2)
    strategy = ("test_resnet.local", 0.5, 0, 1e-3)
    rows = record_strategy(dataset, strategy, grid, zoo, Runtime(), resolution=32)
    assert [r["epoch"] for r in rows] == [1, 2] and all(r["status"] == "completed" for r in rows)
    assert rows[0]["setup_seconds"] > 0 and rows[1]["setup_seconds"] == 0.0
    seed_everything(grid.seed)  # as the recorder does before building: the head's init comes from it
    backbone, config = create_backbone("test_resnet.local", zoo)
    config = {**config, "input_size": (3, 32, 32)}
    net = TransferNet.build(backbone, 0.5, 0, dataset.n_classes)
    plain = fit(net, dataset, config, Budget(epochs=2, batch_size=grid.batch_size), 1e-3, seed=grid.seed,
                device=torch.device("cpu"), hflip=False)
    assert [r["val_accuracy"] for r in rows] == [h["accuracy"] for h in plain.history]
    assert [r["val_macro_f1"] for r in rows] == [h["macro_f1"] for h in plain.history]
    test, _ = evaluate_split(net, dataset, config, "test", batch_size=32, device=torch.device("cpu"))
    assert rows[-1]["test_accuracy"] == test["accuracy"] and rows[-1]["test_macro_f1"] == test["macro_f1"]
    assert all(r["n_test"] == 30 and r["train_seconds"] > 0 and r["eval_seconds"] > 0 for r in rows)


def test_pruner_defaults_are_the_measured_ones_and_the_reduction_factor_is_validated() -> None:
    assert make_pruner("hyperband", 4)._reduction_factor == 2  # benchmarks/README.md, "Search quality"
    assert make_pruner("sha", 4)._reduction_factor == 3
    assert make_pruner("hyperband", 4, reduction_factor=3)._reduction_factor == 3
    with pytest.raises(ConfigError, match="reduction_factor"):
        make_pruner("sha", 4, reduction_factor=1)
