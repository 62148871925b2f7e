"""Studies and models stored by autotransfer 0.1.0 still load, resume, render, refit and predict.

The fixtures in ``tests/fixtures/release-0.1.0/`` were written by the 0.1.0 release (commit cfe6d65)
with ``make_fixtures.py`` there; ``facts.json`` records what they held when they were made. They are
copied into ``tmp_path`` before use, since a resume or a refit writes into its storage. The zoo they
were made with is not stored: conftest's ``test_model_zoo`` rebuilds it (checked tensor by tensor);
the studies' recorded zoo path points to a temporary folder that is gone, so ``zoo=`` is always passed.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from safetensors.torch import load_file
from sklearn.datasets import load_digits

from autotransfer import (
    format_status,
    leaderboard,
    load_dataset,
    load_existing_study,
    load_model,
    refit,
    search,
    study_status,
    write_report,
)
from autotransfer.storage.records import BASELINE_SUFFIX, companion_study

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "release-0.1.0"
FACTS: dict[str, Any] = json.loads((FIXTURES / "facts.json").read_text())
FILES = {"sqlite": "study.db", "journal": "study.journal"}
PARAMS_COLUMNS = ["params_backbone", "params_freeze_depth", "params_head_width", "params_learning_rate"]


def _digits_pixels(indices: list[int]) -> np.ndarray:
    """sklearn digits as uint8 (N, 8, 8) arrays, scaled 0-255 as the fixtures' predictions were made."""
    images = load_digits().images[indices]
    return np.clip(images * (255.0 / 16.0), 0, 255).astype(np.uint8)


def _trial_record(trial: Any) -> dict[str, Any]:
    return {"number": trial.number, "state": trial.state.name, "value": trial.value, "params": dict(trial.params)}


@pytest.fixture(params=["sqlite", "journal"])
def stored(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, dict[str, Any]]:
    """``(storage URL, facts)`` of a copy of one stored study."""
    kind: str = request.param
    folder = tmp_path / "stored" / kind
    shutil.copytree(FIXTURES / kind, folder)
    path = folder / FILES[kind]
    return (f"sqlite:///{path}" if kind == "sqlite" else str(path)), FACTS[kind]


@pytest.fixture
def stored_model(tmp_path: Path) -> Path:
    folder = tmp_path / "stored" / "model"
    shutil.copytree(FIXTURES / "model", folder)
    return folder


def test_the_rebuilt_zoo_is_the_one_the_fixtures_were_made_with(test_model_zoo: Path) -> None:
    digest = hashlib.sha256()
    for name, tensor in sorted(load_file(str(test_model_zoo.parent / "test_resnet.safetensors")).items()):
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.contiguous().numpy().tobytes())
    assert digest.hexdigest() == FACTS["zoo"]["tensor_sha256"], (
        "conftest's test_model_zoo no longer builds the weights the fixtures were made with (timm/torch "
        "changed test_resnet's initialisation, or the fixture changed); this is the environment, not the format")


def test_stored_study_loads_with_its_trials(stored: tuple[str, dict[str, Any]]) -> None:
    url, facts = stored
    study = load_existing_study(url)
    assert study.study_name == facts["study_name"]
    assert load_existing_study(url, facts["study_name"]).study_name == facts["study_name"]
    expected = [{k: t[k] for k in ("number", "state", "value", "params")} for t in facts["trials"]]
    assert [_trial_record(t) for t in study.trials] == expected
    assert [bool(t.user_attrs.get("baseline", False)) for t in study.trials] == [t["baseline"] for t in facts["trials"]]
    assert study.best_trial.number == facts["best"]["number"]
    assert study.best_value == facts["best"]["value"]
    assert study.best_params == facts["best"]["params"]


def test_stored_study_leaderboard(stored: tuple[str, dict[str, Any]]) -> None:
    url, facts = stored
    board = leaderboard(load_existing_study(url))
    assert len(board) == facts["n_trials"]
    assert set(PARAMS_COLUMNS) <= set(board.columns)
    assert board["number"].tolist() == facts["leaderboard_order"]
    by_number = {t["number"]: t for t in facts["trials"]}
    for _, row in board.iterrows():
        trial = by_number[int(row["number"])]
        assert row["state"] == trial["state"] and row["value"] == trial["value"]
        assert {c.removeprefix("params_"): row[c] for c in PARAMS_COLUMNS} == trial["params"]


def test_stored_study_status(stored: tuple[str, dict[str, Any]]) -> None:
    url, facts = stored
    status = study_status(load_existing_study(url))
    assert status.study_name == facts["study_name"]
    assert status.states == facts["states"] and status.finished == facts["finished"]
    assert status.best is not None
    assert (status.best["number"], status.best["value"]) == (facts["best"]["number"], facts["best"]["value"])
    text = format_status(status)
    assert isinstance(text, str) and facts["study_name"] in text


def test_stored_study_report_renders(stored: tuple[str, dict[str, Any]], tmp_path: Path) -> None:
    url, facts = stored
    path = tmp_path / "report.html"
    write_report(load_existing_study(url), path)
    html = path.read_text()
    assert html.strip() and "<html" in html.lower() and facts["study_name"] in html


def test_stored_study_resumes_with_one_more_trial(stored: tuple[str, dict[str, Any]], test_model_zoo: Path) -> None:
    url, facts = stored
    before = load_existing_study(url).trials
    args = dict(facts["search_args"])
    args["n_trials"] = facts["n_trials"] + 1
    search("digits", **args, storage=url, study_name=facts["study_name"], zoo=test_model_zoo)

    study = load_existing_study(url, facts["study_name"])
    after = study.trials
    assert len(after) == len(before) + 1
    for old, new in zip(before, after[:len(before)], strict=True):
        assert _trial_record(new) == _trial_record(old)
        assert new.user_attrs == old.user_attrs
    assert after[-1].state.name in ("COMPLETE", "PRUNED")
    assert study_status(study).finished == facts["finished"] + 1
    assert companion_study(study, BASELINE_SUFFIX) is None  # no strong baseline in a study made before it


def test_stored_model_loads_and_predicts_as_recorded(stored_model: Path) -> None:
    recorded = FACTS["model"]
    model = load_model(stored_model)
    assert list(model.classes) == recorded["classes"]
    assert dict(model.strategy) == recorded["strategy"]
    pixels = _digits_pixels(recorded["predict"]["indices"])
    probabilities = model.predict_proba(pixels)
    np.testing.assert_allclose(probabilities, np.asarray(recorded["predict"]["probabilities"]), rtol=0, atol=1e-5)
    assert model.predict(pixels).tolist() == recorded["predict"]["predicted"]


def test_stored_model_scores_the_test_split_as_recorded(stored_model: Path) -> None:
    """The saved model on the digits test split (keys ``digits/<index>``) gives the accuracy model.json records."""
    model = load_model(stored_model)
    items = load_dataset("digits", seed=0).splits["test"]
    assert len(items) == FACTS["model"]["metrics"]["test"]["n_images"]
    indices = [int(key.split("/", 1)[1]) for key, _ in items]
    predicted = model.predict(_digits_pixels(indices))
    accuracy = float(np.mean(predicted == np.asarray([str(label) for _, label in items])))
    assert accuracy == pytest.approx(FACTS["model"]["metrics"]["test"]["accuracy"], abs=1.5 / len(items))


def test_stored_sqlite_study_refits(tmp_path: Path, test_model_zoo: Path) -> None:
    folder = tmp_path / "stored" / "sqlite"
    shutil.copytree(FIXTURES / "sqlite", folder)
    study = load_existing_study(f"sqlite:///{folder / 'study.db'}")
    model = refit(study, epochs=1, zoo=test_model_zoo, device="cpu")
    assert dict(model.strategy) == FACTS["sqlite"]["best"]["params"]
    pixels = _digits_pixels(FACTS["model"]["predict"]["indices"])
    probabilities = model.predict_proba(pixels)
    assert probabilities.shape == (len(pixels), len(FACTS["model"]["classes"]))
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    # The same refit as the one that made model/ (same study, seed and zoo): the same model, up to CPU rounding.
    # A training run amplifies rounding: another CPU's kernels (its vector instructions) moved probabilities by
    # up to 0.0044 (measured on a Xeon with AVX-512) after this one epoch of full fine-tuning.
    np.testing.assert_allclose(probabilities, np.asarray(FACTS["model"]["predict"]["probabilities"]), rtol=0,
                               atol=1e-2)
    model.save(tmp_path / "refit")
    np.testing.assert_allclose(load_model(tmp_path / "refit").predict_proba(pixels), probabilities, rtol=0, atol=1e-6)
