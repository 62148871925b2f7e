"""The backbone screen: its estimators on constructed cases, the ranking, ``search(screen=K)`` and the command."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import timm
import torch
import yaml
from PIL import Image
from safetensors.torch import save_file
from scipy import optimize, stats
from sklearn.datasets import load_digits
from sklearn.model_selection import LeaveOneOut, cross_val_score
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import Normalizer

from autotransfer import ConfigError, DataError, SearchSettings, StudyMismatchError, load_dataset, search
from autotransfer.cli.main import main
from autotransfer.data.dataset import ImageDataset
from autotransfer.screen.scores import SCORES, h_score, knn_accuracy, linear_probe_accuracy, logme, score_features
from autotransfer.screen.screen import check_screen, screen
from autotransfer.storage.records import StudyAttr, read_config
from autotransfer.training.runtime import Runtime
from tests.conftest import ZOO_FILE, needs_shared

TWO = ["test_resnet.local", "test_resnet.other"]


def _blobs(n_per_class: int, separation: float, seed: int = 0, dim: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Three Gaussian classes whose means lie ``separation`` apart along the first axes."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(3), n_per_class)
    features = rng.normal(size=(len(labels), dim))
    features[np.arange(len(labels)), labels] += separation
    return features, labels


@pytest.fixture
def two_backbone_zoo(test_model_zoo: Path) -> Path:
    """conftest's zoo plus a second ``test_resnet`` with other (seeded random) weights."""
    torch.manual_seed(1)
    weights = timm.create_model("test_resnet", num_classes=0).state_dict()
    save_file(weights, str(test_model_zoo.parent / "other.safetensors"))
    zoo = yaml.safe_load(test_model_zoo.read_text())
    zoo["test_resnet.other"] = {**zoo["test_resnet.local"], "file": "other.safetensors"}
    test_model_zoo.write_text(yaml.safe_dump(zoo))
    return test_model_zoo


@pytest.fixture
def digits_small() -> ImageDataset:
    ds = load_dataset("digits", seed=0)
    return dataclasses.replace(ds, splits={"train": ds.splits["train"][:100], "val": ds.splits["val"][:50],
                                           "test": ds.splits["test"][:30]})


def _exact_log_evidence(f: np.ndarray, y: np.ndarray, log_alpha: float, log_beta: float) -> float:
    """log N(y; 0, I / beta + F F^T / alpha): the marginal likelihood LogME maximises, computed directly."""
    cov = np.eye(len(y)) / np.exp(log_beta) + f @ f.T / np.exp(log_alpha)
    return float(stats.multivariate_normal(mean=np.zeros(len(y)), cov=cov).logpdf(y))


@pytest.mark.parametrize("shape", [(60, 5), (20, 40)])  # more samples than features, and fewer
def test_logme_is_the_maximised_evidence_of_the_bayesian_linear_model(shape: tuple[int, int]) -> None:
    rng = np.random.default_rng(0)
    f = rng.normal(size=shape)
    labels = (f[:, 0] > 0).astype(int)
    f[:, 0] += 2 * (2 * labels - 1)  # the features carry the label: the evidence peaks inside (alpha, beta) > 0
    best = []
    for k in (0, 1):
        y = (labels == k).astype(float)
        res = optimize.minimize(lambda p, y=y: -_exact_log_evidence(f, y, *p), x0=[0.0, 0.0], method="Nelder-Mead",
                                options={"xatol": 1e-10, "fatol": 1e-12, "maxiter": 8000})
        best.append(-res.fun / shape[0])
    assert logme(f, labels) == pytest.approx(np.mean(best), abs=1e-6)


def test_scores_do_not_depend_on_the_order_of_the_samples() -> None:
    f, y = _blobs(20, 1.5)
    order = np.random.default_rng(3).permutation(len(y))
    for name in SCORES:
        if name != "linear_probe":  # its folds are drawn from the order: equal only in distribution
            assert score_features(f[order], y[order])[name] == pytest.approx(score_features(f, y)[name], abs=1e-9)


def test_knn_score_is_the_leave_one_out_accuracy_of_scikit_learns_classifier() -> None:
    f, y = _blobs(15, 1.0, dim=6)
    model = make_pipeline(Normalizer(), KNeighborsClassifier(n_neighbors=5))
    expected = cross_val_score(model, f, y, cv=LeaveOneOut(), scoring="accuracy").mean()
    assert knn_accuracy(f, y) == pytest.approx(expected, abs=1e-12)
    assert knn_accuracy(f, y, n_neighbors=500) == pytest.approx(  # k is capped at n - 1
        cross_val_score(make_pipeline(Normalizer(), KNeighborsClassifier(n_neighbors=len(y) - 1)), f, y,
                        cv=LeaveOneOut()).mean(), abs=1e-12)


def test_scores_rank_separable_features_above_noise() -> None:
    good, y = _blobs(30, 4.0)
    bad, _ = _blobs(30, 0.2, seed=1)
    high, low = score_features(good, y), score_features(bad, y)
    assert list(high) == list(SCORES) and SCORES[0] == "knn"  # the default first
    assert all(high[s] > low[s] for s in SCORES)
    assert high["knn"] == 1.0 and high["linear_probe"] == 1.0
    assert 0 < h_score(good, y) <= 2 + 1e-9  # at most n_classes - 1
    assert h_score(bad, y) < 0.5


def test_h_score_stays_finite_with_more_features_than_samples() -> None:
    f, y = _blobs(5, 3.0, dim=200)  # 15 samples, 200 features: the plain covariance is singular
    assert np.isfinite(h_score(f, y))


def test_estimators_refuse_bad_input() -> None:
    f, y = _blobs(5, 1.0)
    with pytest.raises(DataError, match="at least two classes"):
        logme(f, np.zeros(len(f), dtype=int))
    with pytest.raises(DataError, match="one label per row"):
        h_score(f, y[:-1])
    with pytest.raises(DataError, match="finite"):
        logme(np.full_like(f, np.nan), y)
    with pytest.raises(DataError, match="two samples of every class"):
        linear_probe_accuracy(f[:11], y[:11])  # class 2 keeps a single sample
    with pytest.raises(DataError, match="'n_neighbors' must be a positive integer"):
        knn_accuracy(f, y, n_neighbors=0)


def test_bad_screen_options_are_refused_with_the_message_template() -> None:
    with pytest.raises(ConfigError, match=r"The 'screen' must be an integer in \[1, 2\]"):
        check_screen(TWO, score="logme", k=3)
    with pytest.raises(ConfigError, match="'screen_score' must be one of"):
        check_screen(TWO, score="leep", k=1)
    with pytest.raises(ConfigError, match="'resolutions' must be integers of at least 16"):
        check_screen(TWO, score="logme", k=None, resolutions=[8])
    with pytest.raises(ConfigError, match="distinct names"):
        check_screen([TWO[0], TWO[0]], score="logme", k=1)
    with pytest.raises(ConfigError, match="'screen' must be a positive integer"):
        SearchSettings(screen=0)
    with pytest.raises(ConfigError, match="'screen_score' must be one of"):
        SearchSettings(screen=1, screen_score="leep")


def test_screen_ranks_candidates_and_shares_the_linear_probe_cache(
        tmp_path: Path, digits_small: ImageDataset, two_backbone_zoo: Path) -> None:
    runtime = Runtime(cache_dir=tmp_path / "cache", cache_mb=64)
    result = screen(digits_small, TWO, score="knn", k=1, resolutions=[32, 48], zoo=two_backbone_zoo, device="cpu",
                    runtime=runtime)
    table = result.table
    assert len(table) == 4 and table["rank"].tolist() == [1, 2, 3, 4]
    assert table["knn"].is_monotonic_decreasing
    assert sorted(zip(table["backbone"], table["resolution"], strict=True)) == [(b, r) for b in TWO for r in (32, 48)]
    assert result.kept == [table.loc[0, "backbone"]] and table["kept"].sum() == 2  # both resolutions of the best
    assert (table["images"] == 150).all() and (table["n_features"] > 0).all()
    assert len(list((tmp_path / "cache" / "features").glob("*.safetensors"))) == 4
    record = result.record()
    assert record["kept"] == result.kept and len(record["candidates"]) == 4

    runtime.memory().clear()  # a new process: the disk cache answers, with the same scores
    again = screen(digits_small, TWO, score="knn", k=1, resolutions=[32, 48], zoo=two_backbone_zoo, device="cpu",
                   runtime=runtime)
    pd.testing.assert_frame_equal(again.table.drop(columns="seconds"), table.drop(columns="seconds"))

    # the scores read the train split only: other val images (the test split's, relabelled) change none of them
    other_val = dataclasses.replace(digits_small, splits={**digits_small.splits, "val": [
        (key, (label + 1) % 10) for key, label in digits_small.splits["test"]]})
    moved = screen(other_val, TWO, score="knn", k=1, resolutions=[32, 48], zoo=two_backbone_zoo, device="cpu",
                   runtime=runtime)
    pd.testing.assert_frame_equal(moved.table[["backbone", "resolution", *SCORES]],
                                  table[["backbone", "resolution", *SCORES]])
    assert record["methods"]["knn"].startswith("leave-one-out") and record["resolutions"] == [32, 48]


def test_screen_refuses_bad_input_before_any_extraction(tmp_path: Path, digits_small: ImageDataset,
                                                        two_backbone_zoo: Path) -> None:
    runtime = Runtime(cache_dir=tmp_path / "cache")
    with pytest.raises(ConfigError, match="'screen' must be"):
        screen(digits_small, TWO, k=3, zoo=two_backbone_zoo, device="cpu", runtime=runtime)
    one_image = dataclasses.replace(digits_small, splits={**digits_small.splits,
                                                          "train": digits_small.splits["train"][:12]})
    with pytest.raises(DataError, match="two train images of every class"):
        screen(one_image, TWO, zoo=two_backbone_zoo, device="cpu", runtime=runtime)
    assert not (tmp_path / "cache").exists()


def test_search_with_screen_keeps_the_best_backbones_and_stores_the_screen(
        tmp_path: Path, digits_small: ImageDataset, two_backbone_zoo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    Runtime().memory().clear()  # features of an earlier test in this process would be found in memory
    space = {"backbone": TWO, "freeze_depth": [1.0], "head_width": [0], "learning_rate": {"low": 1e-3, "high": 1e-2}}
    kwargs = {"space": space, "epochs": 1, "zoo": two_backbone_zoo, "out": tmp_path / "out", "device": "cpu",
              "baseline": False}
    with pytest.raises(ConfigError, match="'screen' must be an integer in"):
        search(digits_small, n_trials=2, screen=3, **kwargs)  # type: ignore[arg-type]
    assert not (tmp_path / "out").exists()  # refused before anything was written or extracted

    result = search(digits_small, n_trials=2, screen=1, screen_score="logme", **kwargs)  # type: ignore[arg-type]
    stored = result.study.user_attrs[StudyAttr.SCREEN]
    kept = stored["kept"]
    assert len(kept) == 1 and stored["score"] == "logme" and stored["k"] == 1 and len(stored["candidates"]) == 2
    assert {t.params["backbone"] for t in result.study.trials} == set(kept)
    config = read_config(result.study)
    assert config["screen"] == {"score": "logme", "k": 1, "backbones": TWO}
    assert config["space"]["backbone"]["choices"] == kept
    features = list((tmp_path / "out" / "cache" / "features").glob("*.safetensors"))
    assert len(features) == 2  # the linear-probe trials found the screen's features: nothing extracted twice
    html = (tmp_path / "out" / "report.html").read_text()
    assert 'id="screen"' in html and "Backbone screen" in html

    def no_second_screen(*args: object, **kw: object) -> None:
        raise AssertionError("a resumed study must reuse its stored screen")

    monkeypatch.setattr("autotransfer.study.screening.screen", no_second_screen)
    resumed = search(digits_small, n_trials=3, screen=1, screen_score="logme", **kwargs)  # type: ignore[arg-type]
    assert len(resumed.study.trials) == 3
    assert {t.params["backbone"] for t in resumed.study.trials} == set(kept)
    assert resumed.study.user_attrs[StudyAttr.SCREEN] == stored
    with pytest.raises(StudyMismatchError, match="screen: stored"):
        search(digits_small, n_trials=4, **kwargs)  # type: ignore[arg-type]
    with pytest.raises(StudyMismatchError, match=r"screened by 'logme' keeping 1 .*--screen 1 --screen-score logme"):
        search(digits_small, n_trials=4, screen=1, **kwargs)  # type: ignore[arg-type]  # the default score: knn


def test_search_without_screen_stores_no_screen(tmp_path: Path, digits_small: ImageDataset,
                                                test_model_zoo: Path, tiny_space: dict[str, object]) -> None:
    result = search(digits_small, space=tiny_space, n_trials=1, epochs=1, zoo=test_model_zoo, device="cpu",
                    out=tmp_path / "out")
    assert "screen" not in read_config(result.study) and StudyAttr.SCREEN not in result.study.user_attrs
    assert 'id="screen"' not in (tmp_path / "out" / "report.html").read_text()
    with pytest.raises(StudyMismatchError, match="created without a backbone screen"):  # before any extraction
        search(digits_small, space=tiny_space, n_trials=2, epochs=1, zoo=test_model_zoo, device="cpu",
               out=tmp_path / "out", screen=1)


def test_screen_command_writes_the_ranked_table(tmp_path: Path, two_backbone_zoo: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "digit_images"  # an ImageFolder of 12 real digits per class
    digits = load_digits()
    for cls in range(10):
        (folder / str(cls)).mkdir(parents=True)
        for j, index in enumerate(np.flatnonzero(digits.target == cls)[:12]):
            Image.fromarray((digits.images[index] * 255 / 16).astype(np.uint8)).save(folder / str(cls) / f"{j}.png")
    out = tmp_path / "screened"
    args = ["screen", str(folder), "--backbones", ",".join(TWO), "--zoo", str(two_backbone_zoo), "--device", "cpu",
            "--out", str(out)]
    assert main([*args, "--keep", "3"]) == 1
    assert "'screen' must be an integer in [1, 2]" in capsys.readouterr().err and not out.exists()
    assert main([*args, "--resolutions", "64,big"]) == 1
    assert "'resolutions' must be comma-separated integers" in capsys.readouterr().err and not out.exists()
    assert main([*args, "--keep", "1", "--score", "h_score"]) == 0
    table = pd.read_csv(out / "screen.csv")
    assert table["rank"].tolist() == [1, 2] and table["h_score"].is_monotonic_decreasing
    assert table["kept"].tolist() == [True, False]
    printed = capsys.readouterr().out
    assert "ranked by h_score" in printed and "--screen 1 --screen-score h_score" in printed
    assert main([*args, "--study-name", "x"]) == 1
    assert "'study_name' must be given with --storage" in capsys.readouterr().err


def test_a_search_ranks_the_scores_the_screen_command_stored(tmp_path: Path, two_backbone_zoo: Path,
                                                             capsys: pytest.CaptureFixture[str],
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "digit_images"
    digits = load_digits()
    for cls in range(3):
        (folder / str(cls)).mkdir(parents=True)
        for j, index in enumerate(np.flatnonzero(digits.target == cls)[:15]):
            Image.fromarray((digits.images[index] * 255 / 16).astype(np.uint8)).save(folder / str(cls) / f"{j}.png")
    url = f"sqlite:///{tmp_path / 'screens.db'}"
    assert main(["screen", str(folder), "--backbones", ",".join(TWO), "--zoo", str(two_backbone_zoo), "--device",
                 "cpu", "--out", str(tmp_path / "screened"), "--storage", url, "--keep", "2"]) == 0
    assert "Stored the scores in study 'digit_images'" in capsys.readouterr().out
    table = pd.read_csv(tmp_path / "screened" / "screen.csv")
    best_by_logme = table.sort_values("logme", ascending=False)["backbone"].iloc[0]

    def no_extraction(*args: object, **kw: object) -> None:
        raise AssertionError("the stored scores must be ranked again, not extracted again")

    monkeypatch.setattr("autotransfer.study.screening.screen", no_extraction)
    space = {"backbone": TWO, "freeze_depth": [1.0], "head_width": [0], "learning_rate": {"low": 1e-3, "high": 1e-2}}
    result = search(folder, space=space, n_trials=1, epochs=1, zoo=two_backbone_zoo, device="cpu", baseline=False,
                    storage=url, study_name="digit_images", screen=1, screen_score="logme")
    stored = result.study.user_attrs[StudyAttr.SCREEN]
    assert stored["kept"] == [best_by_logme] and stored["score"] == "logme" and stored["k"] == 1
    assert read_config(result.study)["space"]["backbone"]["choices"] == [best_by_logme]
    assert main(["screen", str(folder), "--backbones", ",".join(TWO), "--zoo", str(two_backbone_zoo), "--device",
                 "cpu", "--storage", url]) == 1  # a search's study: refused before any extraction
    assert "already holds a search" in capsys.readouterr().err


@needs_shared
def test_screen_of_real_weights_on_real_photos(tiny_hymenoptera: Path) -> None:
    names = ["tf_mobilenetv3_small_100.tf1_in1k", "mobilenetv2_035.keras_in1k"]
    result = screen(tiny_hymenoptera, names, k=1, zoo=ZOO_FILE, device="cpu", runtime=Runtime(cache_mb=64))
    table = result.table
    assert set(table["backbone"]) == set(names) and (table["resolution"] == 224).all()
    assert np.isfinite(table[list(SCORES)].to_numpy(dtype=float)).all()
    assert (table["linear_probe"] > 0.7).all() and (table["knn"] > 0.6).all()  # pretrained: far above chance
