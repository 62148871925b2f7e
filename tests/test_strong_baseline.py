"""The strong fixed baseline (AutoGluon's recipe): run outside the space, on the search split and every
confirmation repeat, resumed, shown in the report, and absent with --no-baseline or in older studies."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import optuna
import pytest

from autotransfer import load_dataset, load_search_space, search, write_report
from autotransfer.data.dataset import ImageDataset
from autotransfer.space.dimensions import Recipe
from autotransfer.space.strategy import STRONG_BASELINE_RECIPE, Strategy
from autotransfer.storage.records import BASELINE_SUFFIX, StudyAttr, TrialAttr, companion_study
from autotransfer.study.strong_baseline import SEARCH_SPLIT

SPACE: dict[str, object] = {"backbone": ["test_resnet.local"], "freeze_depth": [0.5, 1.0], "head_width": [0, 16],
                            "learning_rate": {"low": 3e-3, "high": 1e-2}}


@pytest.fixture(scope="module")
def digits_small() -> ImageDataset:
    ds = load_dataset("digits", seed=0)
    return dataclasses.replace(ds, splits={"train": ds.splits["train"][:64], "val": ds.splits["val"][:32],
                                           "test": ds.splits["test"][:32]})


def _search(dataset: ImageDataset, zoo: Path, out: Path, **kwargs: Any) -> Any:
    options = {"space": SPACE, "n_trials": 3, "epochs": 1, "zoo": zoo, "out": out, "device": "cpu",
               "pruner": "none", "finalists": 0, **kwargs}
    return search(dataset, **options)


def test_the_recipe_is_autogluons_on_the_first_backbone() -> None:
    strong = load_search_space(SPACE).strong_baseline()
    assert strong.backbone == "test_resnet.local"
    assert (strong.freeze_depth, strong.head_width, strong.learning_rate) == (0.0, 0, 1e-4)
    assert strong.recipe() == Recipe(weight_decay=1e-3, layer_decay=0.9, warmup=0.1, grad_clip=1.0)
    assert set(STRONG_BASELINE_RECIPE) <= set(strong.as_dict())
    sized = load_search_space({**SPACE, "input_size": [32, 48]}).strong_baseline()
    assert sized.value("input_size") == 48 and isinstance(Strategy.from_params(sized.as_dict()), Strategy)


def test_a_new_study_runs_it_outside_the_space_and_the_report_compares(tmp_path: Path, digits_small: ImageDataset,
                                                                         test_model_zoo: Path) -> None:
    result = _search(digits_small, test_model_zoo, tmp_path / "out")
    assert len(result.study.trials) == 3  # neither a search trial nor counted by --n-trials
    companion = companion_study(result.study, BASELINE_SUFFIX)
    assert companion is not None
    runs = companion.get_trials()
    assert [t.user_attrs[TrialAttr.REPEAT] for t in runs] == [SEARCH_SPLIT] and runs[0].state.name == "COMPLETE"
    assert runs[0].user_attrs[TrialAttr.TRAINABLE_PARAMS] > 0  # full fine-tuning
    summary = result.study.user_attrs[StudyAttr.STRONG_BASELINE]
    assert summary["search"]["value"] == runs[0].value and summary["repeats"] == {}
    assert summary["params"]["layer_decay"] == 0.9
    assert all("layer_decay" not in t.params for t in result.study.trials)  # the sampler never saw it
    html = (tmp_path / "out" / "report.html").read_text(encoding="utf-8")
    assert "Against a strong fixed recipe" in html and "AutoGluon" in html and "exact\nMcNemar" in html
    _search(digits_small, test_model_zoo, tmp_path / "out")  # resumed: nothing runs again
    again = companion_study(result.study, BASELINE_SUFFIX)
    assert again is not None and len(again.get_trials()) == 1


def test_with_confirmation_it_runs_on_every_repeat_paired(tmp_path: Path, digits_small: ImageDataset,
                                                          test_model_zoo: Path) -> None:
    result = _search(digits_small, test_model_zoo, tmp_path / "out", n_trials=4, finalists=2, repeats=2)
    companion = companion_study(result.study, BASELINE_SUFFIX)
    assert companion is not None
    assert sorted(t.user_attrs[TrialAttr.REPEAT] for t in companion.get_trials()) == [SEARCH_SPLIT, 0, 1]
    confirm = companion_study(result.study)
    assert confirm is not None
    plan = confirm.user_attrs[StudyAttr.CONFIRM_PLAN]
    summary = result.study.user_attrs[StudyAttr.STRONG_BASELINE]
    assert set(summary["repeats"]) == {"0", "1"} and summary["rho"] == plan["rho"]
    html = write_report(result.study, tmp_path / "r.html").read_text(encoding="utf-8")
    if result.decision is not None:
        assert "confirmation repeats (same seeds and splits)" in html


def test_no_baseline_runs_neither(tmp_path: Path, digits_small: ImageDataset, test_model_zoo: Path) -> None:
    result = _search(digits_small, test_model_zoo, tmp_path / "out", baseline=False)
    assert companion_study(result.study, BASELINE_SUFFIX) is None
    assert StudyAttr.STRONG_BASELINE not in result.study.user_attrs
    html = (tmp_path / "out" / "report.html").read_text(encoding="utf-8")
    assert "No strong baseline in this study (run with <code>--no-baseline</code>)" in html
    assert optuna.load_study(study_name="digits", storage=f"sqlite:///{tmp_path}/out/study.db").trials


def test_past_the_timeout_only_the_search_split_runs_and_a_resume_completes_it(
        tmp_path: Path, digits_small: ImageDataset, test_model_zoo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from autotransfer.study import search as search_module
    from autotransfer.study import strong_baseline as strong_module

    def out_of_time(study: optuna.Study, objective: Any, **kwargs: Any) -> Any:
        return strong_module.run_strong_baseline(study, objective, deadline=0.0)  # long past

    monkeypatch.setattr(search_module, "run_strong_baseline", out_of_time)
    result = _search(digits_small, test_model_zoo, tmp_path / "out", n_trials=4, finalists=2, repeats=2)
    summary = result.study.user_attrs[StudyAttr.STRONG_BASELINE]
    assert summary["search"]["state"] == "COMPLETE" and summary["repeats"] == {} and "--timeout" in summary["skipped"]
    monkeypatch.undo()
    again = _search(digits_small, test_model_zoo, tmp_path / "out", n_trials=4, finalists=2, repeats=2)
    summary = again.study.user_attrs[StudyAttr.STRONG_BASELINE]
    assert set(summary["repeats"]) == {"0", "1"} and summary["skipped"] == ""
    companion = companion_study(again.study, BASELINE_SUFFIX)
    assert companion is not None and len(companion.get_trials()) == 3
