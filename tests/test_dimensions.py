"""Strategy dimensions declared once: the extension point, weight decay, the recipe hooks, the family label."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import optuna
import pytest
import timm
import torch
from optuna.trial import FrozenTrial, TrialState
from torch import nn

from autotransfer import (
    Budget,
    ConfigError,
    Strategy,
    fit,
    format_status,
    leaderboard,
    load_dataset,
    load_model,
    load_search_space,
    refit,
    search,
    study_status,
    write_report,
)
from autotransfer.data.dataset import ImageDataset
from autotransfer.models.network import BackboneWithHead
from autotransfer.space.dimensions import DIMENSIONS, Dimension, Recipe, declared
from autotransfer.space.strategy import family_label, transfer_mode
from autotransfer.storage.records import TrialAttr, trial_family
from autotransfer.study import objective as objective_module
from autotransfer.training.input_plan import prepare_inputs
from autotransfer.training.optim import make_optimizer
from autotransfer.training.pipeline import Preprocess
from autotransfer.training.runtime import Runtime

CPU = torch.device("cpu")
CONFIG = {"input_size": (3, 32, 32), "interpolation": "bilinear", "mean": (0.5,) * 3, "std": (0.5,) * 3,
          "crop_pct": 1.0}


def _check_rate(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
        raise ConfigError(f"The '{name}' must be a dropout rate in [0, 1). Got {value!r} instead.")
    return float(value)


TOY = Dimension("toy_drop_rate", "toy drop rate", _check_rate, float, default=0.0, short="drop",
                enter=lambda recipe, v: replace(recipe, model_kwargs={**recipe.model_kwargs, "drop_rate": v}),
                source="timm's drop_rate (dropout before the classifier)")


@pytest.fixture
def toy() -> Iterator[Dimension]:
    with declared(TOY) as dim:
        yield dim


@pytest.fixture(scope="module")
def digits_small() -> ImageDataset:
    ds = load_dataset("digits", seed=0)
    return dataclasses.replace(ds, splits={"train": ds.splits["train"][:96], "val": ds.splits["val"][:48],
                                           "test": ds.splits["test"][:48]})


def test_a_toy_dimension_is_sampled_applied_stored_and_shown(
        toy: Dimension, tmp_path: Path, digits_small: ImageDataset, test_model_zoo: Path,
        tiny_space: dict[str, object], monkeypatch: pytest.MonkeyPatch) -> None:
    built: list[float] = []
    create = objective_module.create_backbone

    def spy(name: str, zoo: Any, **kwargs: Any) -> Any:
        model, config = create(name, zoo, **kwargs)
        built.append(model.drop_rate)
        return model, config

    monkeypatch.setattr(objective_module, "create_backbone", spy)
    space = {**tiny_space, "freeze_depth": [0.0], "toy_drop_rate": [0.25]}
    result = search(digits_small, space=space, n_trials=2, epochs=1, zoo=test_model_zoo, out=tmp_path / "out",
                    device="cpu", baseline=False)
    assert built == [0.25, 0.25]  # what each trial built
    assert [t.params["toy_drop_rate"] for t in result.study.trials] == [0.25, 0.25]  # stored
    board = leaderboard(result.study)
    assert board["params_toy_drop_rate"].tolist() == [0.25, 0.25]
    html = write_report(result.study, tmp_path / "report.html").read_text()
    assert "<th>toy drop rate</th>" in html and "toy drop rate 0.25" in html
    assert "toy drop rate 0.25" in format_status(study_status(result.study))
    model = refit(result.study, epochs=1, zoo=test_model_zoo, device="cpu")
    assert model.backbone.model_kwargs["drop_rate"] == 0.25 and model.strategy["toy_drop_rate"] == 0.25
    assert load_model(model.save(tmp_path / "model")).net.backbone.drop_rate == 0.25


def test_an_omitted_dimension_keeps_its_default_and_the_fingerprint(toy: Dimension,
                                                                      tiny_space: dict[str, object]) -> None:
    space = load_search_space(tiny_space)
    assert "toy_drop_rate" not in space.as_dict()  # nothing stored for it
    trial = optuna.trial.FixedTrial({"backbone": "test_resnet.local", "freeze_depth": 0.5, "head_width": 0,
                                     "learning_rate": 1e-3})
    strategy = space.suggest(trial)
    assert strategy.as_dict() == trial.params and strategy.value("toy_drop_rate") == 0.0
    assert strategy.recipe().model_kwargs == {"drop_rate": 0.0} and strategy.recipe().weight_decay == 0.01
    with pytest.raises(ConfigError, match="'toy_drop_rate' must be a dropout rate"):
        load_search_space({**tiny_space, "toy_drop_rate": [1.5]})
    with pytest.raises(ConfigError, match="already declared"), declared(TOY):
        pass


def test_an_inactive_dimension_is_not_sampled(tiny_space: dict[str, object]) -> None:
    head_only = Dimension("toy_mlp_dropout", "MLP dropout", _check_rate, float, default=0.0,
                          active=lambda values: values.get("head_width", 0) > 0)
    with declared(head_only):
        space = load_search_space({**tiny_space, "toy_mlp_dropout": [0.1, 0.2]})
        study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
        for _ in range(12):
            strategy = space.suggest(study.ask())
            assert ("toy_mlp_dropout" in strategy.as_dict()) == (strategy.head_width > 0)


def test_weight_decay_is_a_dimension_with_the_old_default(tiny_space: dict[str, object]) -> None:
    assert DIMENSIONS["weight_decay"].default == 0.01
    space = load_search_space({**tiny_space, "weight_decay": {"low": 1e-4, "high": 1e-1, "log": True}})
    assert space.as_dict()["weight_decay"] == {"low": 1e-4, "high": 1e-1, "log": True}
    strategy = Strategy.from_params({"backbone": "m", "freeze_depth": 0.0, "head_width": 16, "learning_rate": 1e-3,
                                     "weight_decay": 0.05})
    net = BackboneWithHead.build(timm.create_model("test_resnet", num_classes=0), 0.0, 16, 3)
    optimizer = make_optimizer(net, 1e-3, strategy.recipe())
    decays = {group["weight_decay"] for group in optimizer.param_groups}
    assert decays == {0.0, 0.05}  # biases and norms get none (timm.optim)
    with pytest.raises(ConfigError, match="'weight_decay' must be a number >= 0"):
        load_search_space({**tiny_space, "weight_decay": [-0.1]})


def _fit(dataset: ImageDataset, recipe: Recipe, freeze: float = 0.0) -> tuple[Any, nn.Module]:
    torch.manual_seed(0)
    net = BackboneWithHead.build(timm.create_model("test_resnet", num_classes=0), freeze, 0, 10)
    result = fit(net, dataset, CONFIG, Budget(epochs=1, batch_size=32), 3e-3, seed=1, device=CPU, hflip=False,
                 runtime=Runtime(cache=False), recipe=recipe)
    return result, net


def test_recipe_hooks_change_the_loss_and_the_optimizer(digits_small: ImageDataset) -> None:
    plain, _ = _fit(digits_small, Recipe())
    penalised, _ = _fit(digits_small, Recipe(extra_loss=(lambda module: torch.tensor(10.0),)))
    assert penalised.train_loss[0] == pytest.approx(plain.train_loss[0] + 10.0, abs=1e-4)  # a constant: same steps
    smoothed, _ = _fit(digits_small, Recipe(loss=lambda: nn.CrossEntropyLoss(label_smoothing=0.5)))
    assert smoothed.train_loss[0] != pytest.approx(plain.train_loss[0], abs=1e-3)

    def frozen_rates(module: nn.Module, groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{**group, "lr_scale": 0.0} for group in groups]  # timm's schedulers apply lr_scale

    torch.manual_seed(0)
    before = BackboneWithHead.build(timm.create_model("test_resnet", num_classes=0), 0.0, 0, 10).state_dict()
    _, net = _fit(digits_small, Recipe(param_groups=(frozen_rates,), weight_decay=0.0))
    for name, tensor in net.state_dict().items():
        if tensor.is_floating_point() and "running" not in name:
            assert torch.equal(tensor, before[name]), name


def test_recipe_transform_and_augmenting_frozen_strategies(digits_small: ImageDataset) -> None:
    preprocess = Preprocess.from_config(dict(CONFIG), train_transform={"hflip": 0.0, "scale": (1.0, 1.0)})
    assert "RandomHorizontalFlip" not in repr(preprocess.train) and "scale=(1.0, 1.0)" in repr(preprocess.train)
    net = BackboneWithHead.build(timm.create_model("test_resnet", num_classes=0), 1.0, 0, 10)
    for recipe, mode in ((Recipe(), "features"), (Recipe(augment_frozen=True), "images")):
        with prepare_inputs(net, digits_small, dict(CONFIG), 32, seed=0, device=CPU, runtime=Runtime(), hflip=False,
                            recipe=recipe) as inputs:
            assert inputs.mode == mode and inputs.augment == (mode == "images")


def test_family_comes_from_the_groups_that_were_frozen() -> None:
    labels = {}  # mobilenetv2_100 has 18 block groups
    for depth in (0.02, 0.98):
        net = BackboneWithHead.build(timm.create_model("mobilenetv2_100", pretrained=False, num_classes=0), depth, 0, 2)
        report = net.freeze_report
        assert report is not None and report.n_groups == 18
        labels[depth] = family_label("mobilenetv2_100", transfer_mode(report.n_frozen, report.n_groups), 0)
    assert labels == {0.02: "mobilenetv2_100 / full fine-tuning / linear head",
                      0.98: "mobilenetv2_100 / linear probe / linear head"}
    # a stored trial of an earlier release, labelled from its sampled depth, reads as what it trained
    old = FrozenTrial(number=0, state=TrialState.COMPLETE, value=0.5, values=None, datetime_start=None,
                      datetime_complete=None, params={"backbone": "mobilenetv2_100", "freeze_depth": 0.98,
                                                      "head_width": 0, "learning_rate": 1e-3},
                      distributions={}, user_attrs={TrialAttr.FAMILY: "mobilenetv2_100 / partial fine-tuning / "
                                                                      "linear head",
                                                    TrialAttr.N_GROUPS: 18, TrialAttr.N_FROZEN_GROUPS: 18},
                      system_attrs={}, intermediate_values={}, trial_id=0)
    assert trial_family(old) == "mobilenetv2_100 / linear probe / linear head"


def test_a_search_labels_families_from_the_built_network(tmp_path: Path, digits_small: ImageDataset,
                                                          test_model_zoo: Path, tiny_space: dict[str, object]) -> None:
    # test_resnet has 5 block groups: 0.02 freezes none of them, 0.98 all five
    space = {**tiny_space, "freeze_depth": [0.02, 0.98], "head_width": [0]}
    result = search(digits_small, space=space, n_trials=4, epochs=1, zoo=test_model_zoo, device="cpu",
                    baseline=False, pruner="none")
    for trial in result.study.trials:
        mode = "full fine-tuning" if trial.params["freeze_depth"] == 0.02 else "linear probe"
        assert trial.user_attrs[TrialAttr.FAMILY] == f"test_resnet.local / {mode} / linear head"
    assert set(leaderboard(result.study)["family"]) <= {"test_resnet.local / full fine-tuning / linear head",
                                                        "test_resnet.local / linear probe / linear head"}
