from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from autotransfer import ConfigError, SearchSpace, Strategy, load_search_space
from autotransfer.space.search_space import bundled_spaces
from autotransfer.space.strategy import strategy_family

GOOD = {"backbone": ["a", "b"], "freeze_depth": {"low": 0.0, "high": 1.0, "step": 0.25},
        "head_width": [0, 256], "learning_rate": {"low": 1e-4, "high": 1e-2}}


def test_bundled_spaces_parse() -> None:
    names = bundled_spaces()
    assert {"default", "small", "demo", "hub"} <= set(names)
    for name in names:
        space = load_search_space(name)
        assert space.backbones and space.source.endswith(f"{name}.yaml")


def test_suggest_with_fixed_trial() -> None:
    space = load_search_space(GOOD)
    trial = optuna.trial.FixedTrial({"backbone": "b", "freeze_depth": 0.5, "head_width": 256,
                                     "learning_rate": 1e-3})
    assert space.suggest(trial) == Strategy("b", 0.5, 256, 1e-3)


def test_suggest_samples_inside_the_space() -> None:
    space = load_search_space(GOOD)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(20):
        strategy = space.suggest(study.ask())
        assert strategy.backbone in {"a", "b"}
        assert strategy.freeze_depth in {0.0, 0.25, 0.5, 0.75, 1.0}
        assert 1e-4 <= strategy.learning_rate <= 1e-2


def test_yaml_file_and_key_order_do_not_matter(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text("learning_rate: {high: 0.01, low: 0.0001}\nhead_width: [0, 256]\n"
                    "freeze_depth: {step: 0.25, high: 1.0, low: 0.0}\nbackbone: [a, b]\n")
    assert load_search_space(path).to_json() == load_search_space(GOOD).to_json()


@pytest.mark.parametrize(("change", "fragment"), [
    ({"batch": 3}, "Unknown key 'batch'"),
    ({"backbone": []}, "'backbone.choices' must be a non-empty list"),
    ({"backbone": [3]}, "'backbone' must be a zoo or timm model name"),
    ({"freeze_depth": [0.0, 1.5]}, "'freeze_depth' must be a fraction in [0, 1]"),
    ({"freeze_depth": {"low": 0.0, "high": 2.0}}, "fraction in [0, 1]"),
    ({"head_width": [-1]}, "'head_width' must be a non-negative integer"),
    ({"head_width": [0.5]}, "non-negative integer"),
    ({"learning_rate": {"low": -1, "high": 1e-2}}, "'learning_rate.low' must be a positive number"),
    ({"learning_rate": {"low": 1e-2, "high": 1e-3}}, "'learning_rate.high' must be greater than low"),
    ({"learning_rate": {"low": 1e-4, "high": 1e-2, "log": False}}, "'learning_rate.log' must be true"),
    ({"learning_rate": [1e-3]}, "'learning_rate' must be a mapping with keys"),
    ({"learning_rate": {"low": "x", "high": 1e-2}}, "'learning_rate.low' must be a finite number"),
    ({"head_width": [0, 0]}, "without repeated values"),
])
def test_bad_values_name_key_value_and_what_is_accepted(change: dict[str, object], fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_search_space({**GOOD, **change})
    assert fragment in str(info.value)


def test_missing_dimension_is_named() -> None:
    raw = {k: v for k, v in GOOD.items() if k != "head_width"}
    with pytest.raises(ConfigError, match="lacks the dimension 'head_width'"):
        load_search_space(raw)


def test_bad_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="bundled names"):
        load_search_space(tmp_path / "missing.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("backbone: [a\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_search_space(broken)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("just text\n")
    with pytest.raises(ConfigError, match="mapping of dimension names"):
        load_search_space(scalar)
    unsafe = tmp_path / "unsafe.yaml"
    unsafe.write_text("backbone: !!python/object/apply:os.system ['echo hi']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_search_space(unsafe)


def test_space_object_passes_through_and_families() -> None:
    space = load_search_space(GOOD)
    assert load_search_space(space) is space
    assert isinstance(space, SearchSpace)
    assert strategy_family("m", 1.0, 0) == "m / linear probe / linear head"
    assert strategy_family("m", 0.0, 256) == "m / full fine-tuning / MLP head"
    assert strategy_family("m", 0.5, 0) == "m / partial fine-tuning / linear head"


def test_including_widens_a_space_just_enough_for_the_baseline() -> None:
    space = load_search_space({"backbone": ["a", "b"], "freeze_depth": {"low": 0.0, "high": 0.5, "step": 0.25},
                               "head_width": [0, 256], "learning_rate": {"low": 1e-3, "high": 1e-2}})
    baseline = space.baseline()
    assert baseline.as_dict() == {"backbone": "a", "freeze_depth": 1.0, "head_width": 1024, "learning_rate": 1e-4}
    widened, changes = space.including(baseline)
    assert changes == ["freeze_depth: range widened from [0, 0.5] to [0, 1]", "head_width: added choice 1024",
                       "learning_rate: range widened from [0.001, 0.01] to [0.0001, 0.01]"]
    assert widened.as_dict()["head_width"] == {"choices": [0, 256, 1024]}
    assert widened.including(baseline) == (widened, [])
    for name in ("default", "small", "demo"):  # the bundled spaces already hold the recipe
        bundled = load_search_space(name)
        assert bundled.including(bundled.baseline())[1] == []


def test_a_baseline_off_the_freeze_grid_is_refused() -> None:
    space = load_search_space({"backbone": ["a"], "freeze_depth": {"low": 0.0, "high": 0.9, "step": 0.3},
                               "head_width": [1024], "learning_rate": {"low": 1e-4, "high": 1e-2}})
    with pytest.raises(ConfigError, match=r"freeze_depth=1\.0.*--no-baseline"):
        space.including(space.baseline())
