from __future__ import annotations

import dataclasses
from pathlib import Path

import optuna
import pandas as pd
import pytest

from autotransfer import StudyMismatchError, load_dataset, search
from autotransfer.data.dataset import ImageDataset
from autotransfer.results.leaderboard import LEADERBOARD_COLUMNS
from autotransfer.study.recovery import finished_trials
from tests.conftest import ZOO_FILE, needs_shared


@pytest.fixture(scope="module")
def digits_small() -> ImageDataset:
    ds = load_dataset("digits", seed=0)
    return dataclasses.replace(ds, splits={"train": ds.splits["train"][:120], "val": ds.splits["val"][:60],
                                           "test": ds.splits["test"][:60]})


def test_search_writes_ranked_leaderboard_and_resumes(tmp_path: Path, digits_small: ImageDataset,
                                                      test_model_zoo: Path, tiny_space: dict[str, object]) -> None:
    kwargs = {"space": tiny_space, "epochs": 2, "zoo": test_model_zoo, "out": tmp_path / "out", "seed": 0,
              "device": "cpu", "batch_size": 32}
    result = search(digits_small, n_trials=3, **kwargs)  # type: ignore[arg-type]
    board = result.leaderboard
    assert list(board.columns) == LEADERBOARD_COLUMNS and len(board) == 3
    assert board["rank"].tolist() == [1, 2, 3]
    assert set(board["state"]) <= {"COMPLETE", "PRUNED", "FAIL"}
    assert result.best is not None and result.best_value == board.loc[0, "value"]
    assert result.best["backbone"] == "test_resnet.local"
    first = {t.number: t.params for t in result.study.trials}
    csv = pd.read_csv(tmp_path / "out" / "leaderboard.csv")
    assert len(csv) == 3 and (tmp_path / "out" / "report.html").read_text().startswith("<!DOCTYPE html>")
    assert (tmp_path / "out" / "study.db").is_file()

    resumed = search(digits_small, n_trials=5, **kwargs)  # type: ignore[arg-type]
    assert len(resumed.study.trials) == 5
    assert {t.number: t.params for t in resumed.study.trials[:3]} == first  # kept, not repeated
    again = search(digits_small, n_trials=5, **kwargs)  # type: ignore[arg-type]
    assert len(again.study.trials) == 5  # the total is reached: nothing more runs

    with pytest.raises(StudyMismatchError, match="budget: stored"):
        search(digits_small, n_trials=6, **{**kwargs, "epochs": 1})  # type: ignore[arg-type]
    with pytest.raises(StudyMismatchError, match="space: stored"):
        search(digits_small, n_trials=6, **{**kwargs, "space": {**tiny_space, "head_width": [0]}})  # type: ignore[arg-type]
    other = dataclasses.replace(digits_small, splits={**digits_small.splits, "val": digits_small.splits["val"][:50]})
    with pytest.raises(StudyMismatchError, match="dataset: stored"):
        search(other, n_trials=6, **kwargs)  # type: ignore[arg-type]


def test_interrupted_search_resumes_to_the_total(tmp_path: Path, digits_small: ImageDataset,
                                                 test_model_zoo: Path, tiny_space: dict[str, object]) -> None:
    kwargs = {"space": tiny_space, "epochs": 1, "zoo": test_model_zoo, "out": tmp_path / "o", "device": "cpu",
              "pruner": "none"}

    def interrupt_second(trial: optuna.Trial, epoch: int, metrics: dict[str, float]) -> None:
        if trial.number == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        search(digits_small, n_trials=3, on_epoch=interrupt_second, **kwargs)  # type: ignore[arg-type]
    study = optuna.load_study(study_name="digits", storage=f"sqlite:///{tmp_path / 'o' / 'study.db'}")
    assert [t.state.name for t in study.trials] == ["COMPLETE", "FAIL"]
    assert study.trials[1].user_attrs["stop_reason"] == "interrupted"
    assert len(pd.read_csv(tmp_path / "o" / "leaderboard.csv")) == 2  # outputs rewritten on interrupt

    result = search(digits_small, n_trials=3, **kwargs)  # type: ignore[arg-type]
    assert finished_trials(result.study) == 3
    assert result.study.trials[0].value == study.trials[0].value


def test_bad_options_fail_before_any_trial(tmp_path: Path, test_model_zoo: Path,
                                           tiny_space: dict[str, object]) -> None:
    from autotransfer import ConfigError, WeightsNotFoundError

    with pytest.raises(ConfigError, match="'pruner' must be one of"):
        search("digits", space=tiny_space, zoo=test_model_zoo, pruner="asha", out=tmp_path)
    with pytest.raises(ConfigError, match="'n_trials'"):
        search("digits", space=tiny_space, zoo=test_model_zoo, n_trials=0, out=tmp_path)
    with pytest.raises(WeightsNotFoundError, match="not in the local zoo"):
        search("digits", space={**tiny_space, "backbone": ["nope_net"]}, zoo=test_model_zoo, out=tmp_path)
    assert not (tmp_path / "study.db").exists()


@needs_shared
@pytest.mark.slow
def test_real_weights_transfer_on_real_photos(tmp_path: Path, tiny_hymenoptera: Path) -> None:
    space = {"backbone": ["tf_mobilenetv3_small_100.tf1_in1k"], "freeze_depth": [1.0], "head_width": [0],
             "learning_rate": {"low": 3e-3, "high": 1e-2}}
    result = search(tiny_hymenoptera, space=space, n_trials=2, epochs=2, zoo=ZOO_FILE, out=tmp_path / "o",
                    device="cpu", batch_size=8, baseline=False)
    assert result.best_value is not None and result.best_value >= 0.8  # random init gives about 0.5
    assert result.best is not None and result.best["family"].endswith("linear probe / linear head")
    html = (tmp_path / "o" / "report.html").read_text()
    assert "hymenoptera_tiny" in html and "Recommended strategy" in html


def test_same_seed_gives_the_same_strategies_and_metrics(digits_small: ImageDataset, test_model_zoo: Path,
                                                         tiny_space: dict[str, object]) -> None:
    runs = [search(digits_small, space=tiny_space, n_trials=2, epochs=1, zoo=test_model_zoo, seed=7,
                   device="cpu", pruner="none") for _ in range(2)]
    first, second = ([(t.params, t.value) for t in run.study.trials] for run in runs)
    assert first == second


def test_baseline_is_the_first_trial_and_fixed_when_the_study_is_created(
        tmp_path: Path, digits_small: ImageDataset, test_model_zoo: Path, tiny_space: dict[str, object]) -> None:
    kwargs = {"space": tiny_space, "epochs": 1, "zoo": test_model_zoo, "out": tmp_path / "b", "device": "cpu",
              "pruner": "none"}
    result = search(digits_small, n_trials=2, **kwargs)  # type: ignore[arg-type]
    first = result.study.trials[0]
    assert first.user_attrs["baseline"] is True
    assert first.params == {"backbone": "test_resnet.local", "freeze_depth": 1.0, "head_width": 1024,
                            "learning_rate": 1e-4}
    stored = result.study.user_attrs["autotransfer.config"]["baseline"]
    assert stored["changes"] == ["head_width: added choice 1024",
                                 "learning_rate: range widened from [0.001, 0.01] to [0.0001, 0.01]"]
    assert result.leaderboard["baseline"].sum() == 1
    # Resuming with baseline=False keeps the space the stored trials were drawn from.
    resumed = search(digits_small, n_trials=3, baseline=False, **kwargs)  # type: ignore[arg-type]
    assert len(resumed.study.trials) == 3 and sum(t.user_attrs.get("baseline", False)
                                                  for t in resumed.study.trials) == 1

    plain = search(digits_small, n_trials=1, baseline=False, **{**kwargs, "out": tmp_path / "n"})  # type: ignore[arg-type]
    assert "baseline" not in plain.study.trials[0].user_attrs
    assert plain.study.user_attrs["autotransfer.config"]["baseline"] is None


def test_complete_trials_store_val_predictions_and_the_best_its_test_figures(
        digits_small: ImageDataset, test_model_zoo: Path, tiny_space: dict[str, object]) -> None:
    result = search(digits_small, space=tiny_space, n_trials=3, epochs=1, zoo=test_model_zoo, device="cpu",
                    pruner="none")
    n_val = len(digits_small.splits["val"])
    for trial in result.study.trials:
        assert len(trial.user_attrs["val_predictions"]) == n_val
        labels = [y for _, y in digits_small.splits["val"]]
        hits = sum(p == y for p, y in zip(trial.user_attrs["val_predictions"], labels, strict=True))
        assert hits / n_val == pytest.approx(trial.user_attrs["val_accuracy"])
    test = result.study.user_attrs["autotransfer.test"]
    assert test["trial"] == result.study.best_trial.number
    assert len(test["predictions"]) == len(digits_small.splits["test"]) and 0 <= test["metrics"]["accuracy"] <= 1
