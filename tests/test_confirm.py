"""The confirmation stage and its decision: constructed cases with known answers, and the stage end to end."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pytest
from optuna.trial import TrialState

from autotransfer import TransferClassifier, load_dataset, load_existing_study, search, study_status
from autotransfer.cli.main import main
from autotransfer.data.dataset import ImageDataset
from autotransfer.results.decision import FinalistRuns, bootstrap_posterior, correlated_t_posterior, decide
from autotransfer.results.status import format_status
from autotransfer.storage.records import CONFIRM_SUFFIX, StudyAttr, TrialAttr
from autotransfer.study.refit import choose_trial
from autotransfer.training import input_plan
from autotransfer.training.cache import memory_cache

# --- the decision on constructed cases ------------------------------------------------------------------------

def test_a_clear_winner_is_a_clear_leader() -> None:
    a = FinalistRuns("a", [0.90, 0.905, 0.895])
    b = FinalistRuns("b", [0.80, 0.81, 0.79])
    decision = decide([b, a], margin=0.01, rho=0.2)
    assert (decision.outcome, decision.recommended) == ("clear leader", "a")
    assert decision.comparisons[0].p_lead > 0.95 and decision.comparisons[0].low > 0.01


def test_an_equivalent_pair_is_broken_by_inference_speed() -> None:
    slow = FinalistRuns("full fine-tune", [0.900, 0.901, 0.9005], images_per_second=120, train_seconds=90)
    fast = FinalistRuns("linear probe", [0.900, 0.9005, 0.900], images_per_second=480, train_seconds=5)
    decision = decide([slow, fast], margin=0.01, rho=0.2)
    assert decision.outcome == "practically equivalent" and decision.best_mean == "full fine-tune"
    assert decision.recommended == "linear probe" and set(decision.group) == {"full fine-tune", "linear probe"}
    same_speed = [dataclasses.replace(f, images_per_second=100) for f in (slow, fast)]
    assert decide(same_speed, margin=0.01, rho=0.2).recommended == "linear probe"  # then training seconds


def test_an_undecided_pair_says_how_many_repeats_would_decide() -> None:
    a = FinalistRuns("a", [0.93, 0.90, 0.95])
    b = FinalistRuns("b", [0.89, 0.89, 0.90])
    decision = decide([a, b], margin=0.01, rho=0.05)
    assert (decision.outcome, decision.recommended) == ("undecided", "a")
    assert decision.repeats_needed is not None and decision.repeats_needed > 3
    more = decide([dataclasses.replace(a, scores=[0.93, 0.90, 0.95] * 3),
                   dataclasses.replace(b, scores=[0.89, 0.89, 0.90] * 3)], margin=0.01, rho=0.05)
    assert more.outcome == "clear leader"  # the same means and spreads, more repeats: decided
    assert decision.detectable > decision.margin


def test_the_correlated_t_test_matches_its_closed_form() -> None:
    diffs, rho, margin = np.array([0.02, 0.03, 0.01, 0.04]), 0.25, 0.01
    p_lead, p_tie, p_trail, low, high = correlated_t_posterior(diffs, rho, margin)
    scale = np.sqrt((1 / 4 + rho / (1 - rho)) * diffs.var(ddof=1))  # Corani and Benavoli (2015), eq. 8
    from scipy import stats

    assert p_trail == pytest.approx(stats.t.cdf(-margin, 3, diffs.mean(), scale))
    assert p_lead == pytest.approx(stats.t.sf(margin, 3, diffs.mean(), scale))
    assert p_lead + p_tie + p_trail == pytest.approx(1.0) and low < diffs.mean() < high
    with pytest.raises(ValueError):
        correlated_t_posterior([0.1], 0.2, 0.01)


def test_the_paired_bootstrap_on_a_fixed_val_set() -> None:
    rng = np.random.default_rng(0)
    good, poor = rng.random((3, 400)) < 0.9, rng.random((3, 400)) < 0.6
    assert bootstrap_posterior(good, poor, 0.01)[0] > 0.99
    same = np.repeat(rng.random((1, 400)) < 0.8, 3, axis=0)
    p_lead, p_tie, p_trail, low, high = bootstrap_posterior(same, same, 0.01)
    assert (p_lead, p_tie, p_trail, low, high) == (0.0, 1.0, 0.0, 0.0, 0.0)
    tied = decide([FinalistRuns("a", same.mean(1), same, images_per_second=5),
                   FinalistRuns("b", same.mean(1), same, images_per_second=9)], margin=0.01)
    assert (tied.outcome, tied.recommended, tied.comparisons[0].test) == ("practically equivalent", "b",
                                                                          "paired bootstrap")


# --- the stage end to end -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def digits_small() -> ImageDataset:
    ds = load_dataset("digits", seed=0)
    return dataclasses.replace(ds, splits={"train": ds.splits["train"][:64], "val": ds.splits["val"][:32],
                                           "test": ds.splits["test"][:32]})


SPACE: dict[str, object] = {"backbone": ["test_resnet.local"], "freeze_depth": [0.5, 1.0], "head_width": [0, 16],
                            "learning_rate": {"low": 3e-3, "high": 1e-2}}


def _search(dataset: ImageDataset, zoo: Path, out: Path, **kwargs: Any) -> Any:
    options = {"space": SPACE, "n_trials": 4, "epochs": 1, "zoo": zoo, "out": out, "device": "cpu",
               "pruner": "none", "baseline": False, **kwargs}
    return search(dataset, **options)


def test_the_stage_confirms_paired_repeats_and_everything_follows_the_recommendation(
        tmp_path: Path, digits_small: ImageDataset, test_model_zoo: Path) -> None:
    result = _search(digits_small, test_model_zoo, tmp_path / "out", finalists=2, repeats=2)
    assert len(result.study.trials) == 4  # --n-trials counts search trials only
    companion = optuna.load_study(study_name="digits" + CONFIRM_SUFFIX, storage=f"sqlite:///{tmp_path}/out/study.db")
    runs = companion.get_trials()
    assert sorted((t.user_attrs[TrialAttr.FINALIST], t.user_attrs[TrialAttr.REPEAT]) for t in runs) == [
        (0, 0), (0, 1), (1, 0), (1, 1)]
    plan = companion.user_attrs[StudyAttr.CONFIRM_PLAN]
    test_keys = {k for k, _ in digits_small.splits["test"]}
    originals = {k for k, _ in digits_small.splits["val"]}
    for split in plan["splits"]:  # re-drawn from train+val, test untouched, paired across finalists
        keys = {k for k, _ in split["train"] + split["val"]}
        assert not keys & test_keys and len(split["val"]) == 32 and {k for k, _ in split["val"]} != originals
    for k in range(2):  # the same seeds and splits for every finalist; not the search trial's own seed
        params = plan["finalists"][k]["params"]
        assert all(t.params == params for t in runs if t.user_attrs[TrialAttr.FINALIST] == k)
    decision = result.decision
    assert decision is not None and decision["outcome"] in ("clear leader", "practically equivalent", "undecided")
    recommended = decision["recommended_trial"]
    assert result.best is not None and result.best["trial"] == recommended
    assert choose_trial(result.study, None).number == recommended  # refit's default
    assert result.optuna_best is not None and result.optuna_best["trial"] == result.study.best_trial.number
    assert decision["test"] is None or decision["test"]["trial"] == recommended
    html = (tmp_path / "out" / "report.html").read_text()
    assert 'id="finalists"' in html and decision["outcome"] in html
    text = format_status(study_status(load_existing_study(f"sqlite:///{tmp_path}/out/study.db", "digits")))
    assert decision["outcome"] in text and f"recommended: trial {recommended}" in text


def test_a_killed_confirmation_resumes_without_repeating_a_repeat(tmp_path: Path, digits_small: ImageDataset,
                                                                   test_model_zoo: Path) -> None:
    out = tmp_path / "out"
    _search(digits_small, test_model_zoo, out, finalists=0)

    def stop_the_third_run(trial: optuna.Trial, epoch: int, metrics: dict[str, float]) -> None:
        if trial.user_attrs.get(TrialAttr.FINALIST) == 0 and trial.user_attrs.get(TrialAttr.REPEAT) == 1:
            raise KeyboardInterrupt  # what SIGINT does mid-run

    with pytest.raises(KeyboardInterrupt):
        _search(digits_small, test_model_zoo, out, finalists=2, repeats=2, on_epoch=stop_the_third_run)
    storage = f"sqlite:///{out}/study.db"
    companion = optuna.load_study(study_name="digits" + CONFIRM_SUFFIX, storage=storage)
    before = {t.number: t.user_attrs[TrialAttr.REPEAT] for t in companion.get_trials(states=(TrialState.COMPLETE,))}
    assert len(before) == 2  # finalists 0 and 1 of repeat 0
    resumed = _search(digits_small, test_model_zoo, out, finalists=2, repeats=2)
    runs = optuna.load_study(study_name="digits" + CONFIRM_SUFFIX, storage=storage).get_trials()
    complete = [t for t in runs if t.state == TrialState.COMPLETE]
    assert len(complete) == 4 and {t.number for t in complete} >= set(before)  # nothing finished was redone
    pairs = [(t.user_attrs[TrialAttr.FINALIST], t.user_attrs[TrialAttr.REPEAT]) for t in complete]
    assert len(set(pairs)) == 4
    assert [t.user_attrs[TrialAttr.STOP_REASON] for t in runs if t.state == TrialState.FAIL] == ["interrupted"]
    assert resumed.decision is not None


def test_a_linear_probe_confirmation_extracts_features_once(tmp_path: Path, digits_small: ImageDataset,
                                                            test_model_zoo: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    memory_cache(0).clear()
    calls: list[int] = []
    extract = input_plan._extract

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return extract(*args, **kwargs)

    monkeypatch.setattr(input_plan, "_extract", counted)
    result = _search(digits_small, test_model_zoo, tmp_path / "out", space={**SPACE, "freeze_depth": [1.0]},
                     finalists=2, repeats=3)
    assert result.decision is not None and result.decision["repeats"] == 3
    assert len(calls) == 1  # train+val once: every re-drawn split reads its rows from the cached pool


def test_the_confirm_command_completes_a_stored_study(tmp_path: Path, digits_small: ImageDataset,
                                                       test_model_zoo: Path, capsys: pytest.CaptureFixture[str]
                                                       ) -> None:
    # a study of a folder-less dataset: the command rebuilds it from the stored split ("digits")
    _search(digits_small, test_model_zoo, tmp_path / "out", finalists=0)
    storage = f"sqlite:///{tmp_path}/out/study.db"
    assert main(["confirm", "--storage", storage, "--finalists", "2", "--repeats", "2", "--zoo",
                 str(test_model_zoo), "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert "Confirmation (2 finalists x 2 repeats" in printed and "recommended: trial" in printed
    assert StudyAttr.DECISION in load_existing_study(storage, "digits").user_attrs


def test_the_estimator_follows_the_recommendation(test_model_zoo: Path) -> None:
    from sklearn.datasets import load_digits

    digits = load_digits()
    X, y = (digits.images[:120] * 16).clip(0, 255).astype(np.uint8), digits.target[:120]
    model = TransferClassifier(space=SPACE, n_trials=4, epochs=1, zoo=test_model_zoo, baseline=False, pruner="none",
                               device="cpu", finalists=2, repeats=2).fit(X, y)
    decision = model.study_.user_attrs[StudyAttr.DECISION]
    recommended = next(t for t in model.study_.trials if t.number == decision["recommended_trial"])
    assert model.best_trial_ == recommended.number and model.best_params_ == recommended.params


def test_the_measured_repeats_decide_how_many_more_fit(tmp_path: Path, digits_small: ImageDataset,
                                                       test_model_zoo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from autotransfer.study import confirm
    from autotransfer.study import search as search_module

    # The search trials' seconds say that 2 repeats of 2 finalists fill the stage's 400 s; the repeats
    # themselves take about a second, so 3 more of each fit (5 in all, the most the stage runs).
    monkeypatch.setattr(search_module, "_stage_budget", lambda *args: 400.0)
    monkeypatch.setattr(confirm, "_trial_seconds", lambda trial: 100.0)
    out = tmp_path / "out"
    _search(digits_small, test_model_zoo, out, finalists=0)

    def stop_an_added_repeat(trial: optuna.Trial, epoch: int, metrics: dict[str, float]) -> None:
        if trial.user_attrs.get(TrialAttr.FINALIST) == 1 and trial.user_attrs.get(TrialAttr.REPEAT) == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _search(digits_small, test_model_zoo, out, finalists=2, on_epoch=stop_an_added_repeat)
    storage = f"sqlite:///{out}/study.db"
    companion = optuna.load_study(study_name="digits" + CONFIRM_SUFFIX, storage=storage)
    plan = companion.user_attrs[StudyAttr.CONFIRM_PLAN]
    assert len(plan["seeds"]) == 5 and "3 more repeats" in plan["note"]  # stored before the added runs start
    before = {t.number for t in companion.get_trials(states=(TrialState.COMPLETE,))}
    assert len(before) == 7  # repeats 0-2 of both finalists, repeat 3 of finalist 0
    resumed = _search(digits_small, test_model_zoo, out, finalists=2)
    complete = optuna.load_study(study_name="digits" + CONFIRM_SUFFIX, storage=storage).get_trials(
        states=(TrialState.COMPLETE,))
    assert len(complete) == 10 and {t.number for t in complete} >= before
    assert len({(t.user_attrs[TrialAttr.FINALIST], t.user_attrs[TrialAttr.REPEAT]) for t in complete}) == 10
    assert resumed.decision is not None and resumed.decision["repeats"] == 5
    # the added repeats are exactly those a 5-repeat plan would have drawn: same seeds, same splits
    five, _ = confirm.make_plan(resumed.study, digits_small, finalists=2, repeats=5, margin=0.01, resplit=False,
                                seed=0, budget_seconds=None)
    assert five is not None and plan["seeds"] == five.seeds and plan["splits"] == five.splits


def test_a_plan_is_not_extended_past_five_repeats_its_budget_or_an_earlier_release() -> None:
    from autotransfer.study.confirm import ConfirmPlan, extend_plan

    ds = load_dataset("digits", seed=0)
    finalists = [{"trial": 0, "family": "a", "params": {}, "seconds": 10.0},
                 {"trial": 1, "family": "b", "params": {}, "seconds": 10.0}]
    plan = ConfirmPlan(finalists, [1, 2], None, None, 0.01, "2 finalists x 2 repeats", seed=0)
    seconds = {0: [4.0, 2.0], 1: [6.0, 2.0]}  # 14 s spent; one more repeat of both costs 2 + 2 = 4 s
    longer = extend_plan(plan, ds, seconds, budget_seconds=22.0)
    assert longer is not None and longer.repeats == 4 and longer.seeds[:2] == [1, 2]  # (22 - 14) // 4 = 2 more
    assert extend_plan(plan, ds, seconds, budget_seconds=17.9) is None  # not one more of both
    assert extend_plan(dataclasses.replace(plan, seed=None), ds, seconds, budget_seconds=1e6) is None
    stored = {k: v for k, v in dataclasses.asdict(plan).items() if k != "seed"}  # a plan stored before the seed was
    assert extend_plan(ConfirmPlan(**stored), ds, seconds, budget_seconds=1e6) is None
    longest = extend_plan(plan, ds, seconds, budget_seconds=1e6)
    assert longest is not None and longest.repeats == 5
    assert extend_plan(plan, ds, {0: [4.0, 2.0]}, budget_seconds=1e6) is None  # a finalist without runs
