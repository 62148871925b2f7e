"""``--patience``: sampling stops after N finished trials without an improvement larger than the step."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from autotransfer import load_dataset, search
from autotransfer.errors import ConfigError
from autotransfer.results.status import format_status, sampling_stopped, study_status
from autotransfer.settings import SearchSettings
from autotransfer.storage.records import StudyAttr
from autotransfer.study.recovery import TrialQuota, patience_exhausted, set_patience


def _study(values: list[float | None], direction: str = "maximize") -> optuna.Study:
    """A study whose trials have these values in order (None: a pruned trial)."""
    study = optuna.create_study(direction=direction)
    dist = {"x": FloatDistribution(0, 1)}
    for value in values:
        state = TrialState.PRUNED if value is None else TrialState.COMPLETE
        study.add_trial(create_trial(state=state, value=value, params={"x": 0.5}, distributions=dist))
    return study


def test_patience_counts_trials_since_the_last_real_improvement() -> None:
    # 0.60 improves on 0.50 by 0.10 > 0.02; 0.61 (+0.01) and a pruned trial do not reset the count
    study = _study([0.50, 0.60, 0.61, None])
    set_patience(study, 3, 0.02)
    assert patience_exhausted(study) is None  # 2 trials since 0.60
    study = _study([0.50, 0.60, 0.61, None, 0.615])
    set_patience(study, 3, 0.02)
    reason = patience_exhausted(study)
    assert reason is not None and reason.startswith("3 finished trials") and "--patience 3" in reason
    study = _study([0.50, 0.60, 0.61, None, 0.63])  # +0.03 over 0.60: an improvement, the count restarts
    set_patience(study, 3, 0.02)
    assert patience_exhausted(study) is None


def test_patience_follows_the_study_direction_and_is_off_without_a_rule() -> None:
    study = _study([0.5, 0.4, 0.3], direction="minimize")  # every trial improves a minimised loss by 0.1
    set_patience(study, 2, 0.05)
    assert patience_exhausted(study) is None
    study = _study([0.5, 0.5, 0.5])
    assert patience_exhausted(study) is None  # no rule stored
    set_patience(study, 2, 0.0)
    assert patience_exhausted(study) is not None
    set_patience(study, None, 0.0)  # a later run without --patience clears the rule
    assert patience_exhausted(study) is None


def test_the_trial_quota_stops_on_patience_and_records_why() -> None:
    study = _study([0.5, 0.5, 0.5])
    set_patience(study, 2, 0.01)
    assert not TrialQuota(n_trials=10).may_start(study)
    assert study.user_attrs[StudyAttr.SAMPLING_STOPPED]["reason"] == "patience"
    assert "2 finished trials" in str(sampling_stopped(study))


def test_patience_must_be_a_positive_integer() -> None:
    with pytest.raises(ConfigError, match="patience"):
        SearchSettings(patience=0)


def test_a_search_stops_sampling_on_patience_and_says_so(test_model_zoo: Path, tmp_path: Path) -> None:
    ds = load_dataset("digits", seed=0)
    ds = dataclasses.replace(ds, splits={"train": ds.splits["train"][:48], "val": ds.splits["val"][:32]})
    space = {"backbone": ["test_resnet.local"], "freeze_depth": [1.0], "head_width": [0, 16],
             "learning_rate": {"low": 3e-3, "high": 1e-2}}
    # a tie margin of 0.45 makes an improvement all but impossible: the first trial, then 2 more
    result = search(ds, space=space, n_trials=12, epochs=1, zoo=test_model_zoo, out=tmp_path / "out",
                    device="cpu", pruner="none", baseline=False, finalists=0, patience=2, tie_margin=0.45)
    assert len(result.study.trials) == 3
    assert result.study.user_attrs[StudyAttr.SAMPLING_STOPPED]["reason"] == "patience"
    assert "sampling stopped: 2 finished trials" in format_status(study_status(result.study))
    assert "Sampling stopped" in (tmp_path / "out" / "report.html").read_text()


def test_a_search_that_runs_its_trials_says_the_trial_count_stopped_it(test_model_zoo: Path, tmp_path: Path) -> None:
    ds = load_dataset("digits", seed=0)
    ds = dataclasses.replace(ds, splits={"train": ds.splits["train"][:32], "val": ds.splits["val"][:16]})
    space = {"backbone": ["test_resnet.local"], "freeze_depth": [1.0], "head_width": [0],
             "learning_rate": {"low": 3e-3, "high": 1e-2}}
    result = search(ds, space=space, n_trials=2, epochs=1, zoo=test_model_zoo, device="cpu", pruner="none",
                    baseline=False, finalists=0)
    assert result.study.user_attrs[StudyAttr.SAMPLING_STOPPED] == {"reason": "trials",
                                                                   "detail": "2 finished trials (--n-trials 2)"}

