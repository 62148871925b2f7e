"""TransferClassifier: the scikit-learn contract (clone, params), cross-validation and pipelines on real images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.model_selection import cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer

from autotransfer import ConfigError, DataError, TransferClassifier
from tests.conftest import HYMENOPTERA


def _photos(per_class: int = 12) -> tuple[list[str], list[str]]:
    if not HYMENOPTERA.is_dir():
        pytest.skip("../shared/data/datasets/hymenoptera_data is not present")
    paths, labels = [], []
    for cls in ("ants", "bees"):
        for path in sorted((HYMENOPTERA / "train" / cls).glob("*.jpg"))[:per_class]:
            paths.append(str(path))
            labels.append(cls)
    return paths, labels


def _classifier(zoo: Path, space: dict[str, object], **kwargs: object) -> TransferClassifier:
    params: dict[str, object] = {"space": space, "n_trials": 2, "epochs": 1, "zoo": zoo, "baseline": False,
                                 "pruner": "none", "seed": 0, "device": "cpu", "finalists": 0, **kwargs}
    return TransferClassifier(**params)  # type: ignore[arg-type]


def test_clone_and_params_follow_the_estimator_contract(test_model_zoo: Path, tiny_space: dict[str, object]) -> None:
    estimator = _classifier(test_model_zoo, tiny_space, epochs=2)
    copy = clone(estimator)
    assert copy is not estimator and copy.get_params() == estimator.get_params()
    assert copy.get_params()["epochs"] == 2 and copy.get_params()["space"] == tiny_space
    assert copy.set_params(n_trials=5).n_trials == 5
    assert not hasattr(TransferClassifier(), "model_")  # __init__ stores its arguments and nothing else
    with pytest.raises(NotFittedError, match="not fitted"):
        TransferClassifier().predict(["x.png"])


def test_cross_val_score_on_real_photos(test_model_zoo: Path, tiny_space: dict[str, object]) -> None:
    X, y = _photos()
    scores = cross_val_score(_classifier(test_model_zoo, tiny_space), X, y, cv=2, error_score="raise")
    assert scores.shape == (2,) and np.all((scores >= 0) & (scores <= 1))


def test_fit_predict_and_fitted_attributes(test_model_zoo: Path, tiny_space: dict[str, object]) -> None:
    X, y = _photos()
    estimator = _classifier(test_model_zoo, tiny_space).fit(X, y)
    assert list(estimator.classes_) == ["ants", "bees"]
    proba = estimator.predict_proba(X)
    assert proba.shape == (24, 2)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-5)
    predicted = estimator.predict(X)
    assert set(predicted) <= {"ants", "bees"} and estimator.score(X, y) == np.mean(predicted == np.asarray(y))
    assert set(estimator.best_params_) == {"backbone", "freeze_depth", "head_width", "learning_rate"}
    board = estimator.search_results_
    assert len(board) == 2 and board.loc[0, "params"] == estimator.best_params_
    assert estimator.best_score_ == board.loc[0, "value"] and estimator.best_trial_ == board.loc[0, "number"]
    assert estimator.model_.training["train_on"] == "train+val" and estimator.model_.training["n_images"] == 24
    # a pipeline that loads the files itself hands arrays to the estimator
    pipeline = make_pipeline(FunctionTransformer(lambda paths: [np.asarray(Image.open(p).convert("RGB"))
                                                                for p in paths]),
                             _classifier(test_model_zoo, tiny_space))
    pipeline.fit(X, y)
    np.testing.assert_array_equal(pipeline.predict_proba(X), pipeline[-1].predict_proba(
        [np.asarray(Image.open(p).convert("RGB")) for p in X]))


def test_arrays_with_integer_labels(test_model_zoo: Path, tiny_space: dict[str, object]) -> None:
    from sklearn.datasets import load_digits

    digits = load_digits()
    X = (digits.images[:60] / 16.0)  # floats in [0, 1], shape (60, 8, 8)
    y = digits.target[:60] % 2  # even / odd
    estimator = _classifier(test_model_zoo, tiny_space, n_trials=1).fit(X, y)
    assert estimator.classes_.tolist() == [0, 1] and estimator.predict(X).dtype == y.dtype
    assert estimator.predict_proba(X[:3]).shape == (3, 2)


def test_bad_input_is_refused_before_training(test_model_zoo: Path, tiny_space: dict[str, object]) -> None:
    estimator = _classifier(test_model_zoo, tiny_space)
    ok = [np.zeros((8, 8), np.uint8)] * 4
    with pytest.raises(DataError, match="Got 4 images but 3 labels"):
        estimator.fit(ok, [0, 1, 0])
    with pytest.raises(DataError, match="at least two images"):
        estimator.fit(ok, [0, 0, 0, 1])
    with pytest.raises(DataError, match=r"floats in \[0, 1\]"):
        estimator.fit([np.full((8, 8), 16.0)] * 4, [0, 1, 0, 1])
    with pytest.raises(ConfigError, match="'metric' must be one of"):
        clone(estimator).set_params(metric="auc").fit(ok, [0, 1, 0, 1])


def test_verbose_zero_is_silent_and_two_shows_optunas_trial_lines(test_model_zoo: Path, tiny_space: dict[str, object],
                                                                 capfd: pytest.CaptureFixture[str]) -> None:
    from sklearn.datasets import load_digits

    digits = load_digits()
    X, y = digits.images[:60] / 16.0, digits.target[:60] % 2
    _classifier(test_model_zoo, tiny_space, n_trials=1).fit(X, y)  # verbose=0, the default
    out, err = capfd.readouterr()
    assert "Trial 0 finished" not in out + err and "A new study created" not in out + err
    _classifier(test_model_zoo, tiny_space, n_trials=1, verbose=2).fit(X, y)
    out, err = capfd.readouterr()
    assert "Trial 0 finished" in out + err
