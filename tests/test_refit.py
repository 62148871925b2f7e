"""Refit: the chosen strategy retrained on the full budget, evaluated once, exported, and predicted with."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest

from autotransfer import ConfigError, DataError, SearchResult, load_model, refit, search
from autotransfer.cli.main import main
from autotransfer.storage.records import StudyAttr
from tests.conftest import HYMENOPTERA, ZOO_FILE, cli_env, needs_shared

PROBE_SPACE = {"backbone": ["mobilenetv2_035.keras_in1k"], "freeze_depth": [1.0], "head_width": [0],
               "learning_rate": {"low": 3e-3, "high": 1e-2}}


@pytest.fixture
def with_test_split(tmp_path: Path) -> Path:
    """Real hymenoptera photos in train/ (10 per class), val/ (8) and test/ (12) folders."""
    if not HYMENOPTERA.is_dir():
        pytest.skip("../shared/data/datasets/hymenoptera_data is not present")
    root = tmp_path / "ants_bees"
    for split, source, start, n in (("train", "train", 0, 10), ("val", "val", 0, 8), ("test", "val", 8, 12)):
        for cls in ("ants", "bees"):
            (root / split / cls).mkdir(parents=True)
            for src in sorted((HYMENOPTERA / source / cls).glob("*.jpg"))[start:start + n]:
                shutil.copy(src, root / split / cls / src.name)
    return root


def _accuracy_of_csv(csv: Path) -> float:
    table = pd.read_csv(csv)
    truth = table["image"].map(lambda p: Path(p).parent.name)
    return float((table["label"] == truth).mean())


def test_refit_trains_on_train_and_val_and_is_tested_once(tmp_path: Path, with_test_split: Path,
                                                          test_model_zoo: Path, tiny_space: dict[str, object],
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    result = search(with_test_split, space=tiny_space, n_trials=3, epochs=2, out=out, zoo=test_model_zoo,
                    baseline=False, pruner="none")
    best = result.study.best_trial
    capsys.readouterr()
    status = main(["refit", "--storage", f"sqlite:///{out / 'study.db'}", "--out", str(tmp_path / "model"),
                   "--zoo", str(test_model_zoo), "--epochs", "3"])
    printed = capsys.readouterr().out
    assert status == 0, printed
    assert f"Refit trial {best.number}" in printed and "on train+val (36 images) for 3 epochs" in printed
    assert "Test: accuracy" in printed and "on 24 images" in printed
    record = optuna.load_study(study_name=result.study.study_name, storage=f"sqlite:///{out / 'study.db'}"
                               ).user_attrs[StudyAttr.REFIT]
    assert record["trial"] == best.number and record["eval_split"] == "test" and record["train_on"] == "train+val"
    assert record["epochs"] == 3 and len(record["train_loss"]) == 3 and len(record["predictions"]) == 24

    # predict on the test folder with the exported model: the refit's reported test accuracy, exactly
    assert main(["predict", str(tmp_path / "model"), str(with_test_split / "test"),
                 "--out", str(tmp_path / "p.csv")]) == 0
    assert _accuracy_of_csv(tmp_path / "p.csv") == record["metrics"]["accuracy"]
    table = pd.read_csv(tmp_path / "p.csv")
    assert list(table.columns) == ["image", "label", "prob_ants", "prob_bees"] and len(table) == 24
    np.testing.assert_allclose(table[["prob_ants", "prob_bees"]].sum(axis=1), 1.0, rtol=1e-5)
    saved = json.loads((tmp_path / "model" / "model.json").read_text())
    assert saved["metrics"]["test"]["accuracy"] == record["metrics"]["accuracy"]
    assert saved["metrics"]["search"]["trial"] == best.number and saved["training"]["n_images"] == 36

    # the report, rebuilt by the refit command, shows the figures labelled as test
    html = (out / "report.html").read_text()
    assert "Test figures of the refit model, evaluated once; never used for selection." in html
    assert "fig-confusion_refit" in html


def test_refit_of_a_given_trial_and_bad_choices(tmp_path: Path, with_test_split: Path, test_model_zoo: Path,
                                                tiny_space: dict[str, object],
                                                capsys: pytest.CaptureFixture[str]) -> None:
    result = search(with_test_split, space=tiny_space, n_trials=2, epochs=1, zoo=test_model_zoo, baseline=False,
                    pruner="none")
    model = result.refit(trial=1, train_on="train")
    assert model.training["trial"] == 1 and model.training["n_images"] == 20
    assert model.strategy == result.study.trials[1].params and "test" in model.metrics
    with pytest.raises(ConfigError, match=r"The 'trial' must be a trial number .* \(0 to 1\). Got 7"):
        result.refit(trial=7)
    with pytest.raises(ConfigError, match="'train_on' must be one of"):
        result.refit(train_on="everything")
    empty = optuna.create_study()
    with pytest.raises(ConfigError, match=r"was not made by autotransfer\.search"):
        refit(empty)
    # from storage alone: the folder moved, so the files are missing until --data names it
    out = tmp_path / "stored"
    search(with_test_split, space=tiny_space, n_trials=1, epochs=1, out=out, zoo=test_model_zoo, baseline=False)
    moved = tmp_path / "moved"
    with_test_split.rename(moved)
    stored = SearchResult.from_storage(f"sqlite:///{out / 'study.db'}")
    with pytest.raises(DataError, match=r"60 image\(s\) of study 'ants_bees' are missing"):
        refit(stored.study, zoo=test_model_zoo)
    assert refit(stored.study, zoo=test_model_zoo, data=moved).training["n_images"] == 36
    capsys.readouterr()
    assert main(["refit", "--storage", f"sqlite:///{out / 'study.db'}", "--trial", "5", "--out",
                 str(tmp_path / "m"), "--zoo", str(test_model_zoo)]) == 1
    assert "The 'trial' must be a trial number" in capsys.readouterr().err
    assert not (tmp_path / "m").exists()


@needs_shared
@pytest.mark.slow
def test_exported_model_reproduces_the_refit_accuracy_on_hymenoptera_val(tmp_path: Path) -> None:
    """hymenoptera has no test split: the refit trains on train and is judged once on val."""
    out = tmp_path / "out"
    result = search(HYMENOPTERA, space=PROBE_SPACE, n_trials=1, epochs=2, out=out, zoo=ZOO_FILE, baseline=False)
    model = result.refit()
    assert model.training["train_on"] == "train" and model.training["n_images"] == 245
    reported = model.metrics["val"]["accuracy"]
    assert reported > 0.8 and model.metrics["val"]["n_images"] == 153  # a real pretrained linear probe
    model.save(tmp_path / "model")

    files = sorted((HYMENOPTERA / "val").rglob("*.jpg"))
    loaded = load_model(tmp_path / "model")
    np.testing.assert_array_equal(loaded.predict_proba(files), model.predict_proba(files))  # identical after load
    run = subprocess.run([sys.executable, "-m", "autotransfer", "predict", str(tmp_path / "model"),
                          str(HYMENOPTERA / "val"), "--out", str(tmp_path / "val.csv")],
                         capture_output=True, text=True, env=cli_env(), timeout=300)
    assert run.returncode == 0, run.stderr
    assert "Wrote 153 predictions" in run.stdout
    assert _accuracy_of_csv(tmp_path / "val.csv") == reported
    assert result.study.user_attrs[StudyAttr.REFIT]["metrics"]["accuracy"] == reported


def test_predict_command_refuses_bad_paths_before_predicting(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    from tests.test_model import _model

    _model().save(tmp_path / "m")
    (tmp_path / "bad.jpg").write_bytes(b"not an image")
    (tmp_path / "empty").mkdir()
    for args, message in ((["nowhere.png"], "an existing image file or folder"),
                          ([str(tmp_path / "bad.jpg")], "1 file(s) cannot be decoded"),
                          ([str(tmp_path / "empty")], "holds no image file")):
        assert main(["predict", str(tmp_path / "m"), *args, "--out", str(tmp_path / "p.csv")]) == 1
        assert message in capsys.readouterr().err
    assert not (tmp_path / "p.csv").exists()
    assert main(["predict", str(tmp_path / "nomodel"), str(tmp_path / "bad.jpg")]) == 1
    assert "must be a folder holding model.json" in capsys.readouterr().err
