"""The recipe dimensions: what each one changes in what is built (optimizer, schedule, loss, transform,
model, head, penalty, data config), caching on every route, and a search over every one of them."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pytest
import timm
import torch
import torch.nn.functional as F
from torch import nn

from autotransfer import Budget, fit, leaderboard, load_dataset, load_model, load_search_space, search, write_report
from autotransfer.data.dataset import ImageDataset
from autotransfer.models.network import BackboneWithHead
from autotransfer.space.dimensions import DIMENSIONS, Recipe
from autotransfer.space.strategy import Strategy
from autotransfer.training import trainer as trainer_module
from autotransfer.training.cache import memory_cache
from autotransfer.training.input_plan import pooled_features, prepare_inputs, weights_fingerprint
from autotransfer.training.linear_probe import fit_head, logistic_head
from autotransfer.training.losses import L2SP, make_mixup, mix_batch, training_loss
from autotransfer.training.optim import make_optimizer, make_scheduler
from autotransfer.training.pipeline import Preprocess
from autotransfer.training.runtime import Runtime

CPU = torch.device("cpu")
CONFIG = {"input_size": (3, 32, 32), "interpolation": "bilinear", "mean": (0.5,) * 3, "std": (0.5,) * 3,
          "crop_pct": 1.0}
NEW = ("lp_ft", "layer_decay", "l2_sp", "drop_path", "label_smoothing", "warmup", "grad_clip", "augment_frozen",
       "augmentation", "mixup", "cutmix", "input_size")


@pytest.fixture(scope="module")
def digits_small() -> ImageDataset:
    ds = load_dataset("digits", seed=0)
    return dataclasses.replace(ds, splits={"train": ds.splits["train"][:96], "val": ds.splits["val"][:48],
                                           "test": ds.splits["test"][:48]})


@pytest.fixture(autouse=True)
def _empty_cache() -> None:
    memory_cache(0).clear()


def _net(freeze: float, head_width: int = 0, **kwargs: Any) -> BackboneWithHead:
    torch.manual_seed(0)
    return BackboneWithHead.build(timm.create_model("test_resnet", num_classes=0, **kwargs), freeze, head_width, 10)


def _rate_of(optimizer: torch.optim.Optimizer, param: nn.Parameter) -> float:
    return next(float(g["lr"]) for g in optimizer.param_groups if any(p is param for p in g["params"]))


@pytest.mark.parametrize("runtime", [Runtime(), Runtime(cache=False)], ids=["prefix", "images"])
def test_layer_decay_scales_the_trainable_groups_after_a_scheduler_step(digits_small: ImageDataset,
                                                                        runtime: Runtime) -> None:
    net = _net(0.4)  # test_resnet has 5 block groups: 2 frozen, groups 2, 3, 4 train
    report = net.freeze_report
    assert report is not None and (report.n_groups, report.n_frozen) == (5, 2)
    names = dict(net.backbone.named_parameters())
    first = next(names[n] for n, g in report.groups.items() if g == 2 and names.get(n) is not None
                 and names[n].requires_grad)
    last = next(names[n] for n, g in report.groups.items() if g == 4 and n in names)
    recipe = Recipe(layer_decay=0.5)
    frozen = [p for p in net.parameters() if not p.requires_grad]
    with prepare_inputs(net, digits_small, dict(CONFIG), 32, seed=0, device=CPU, runtime=runtime, hflip=False,
                        recipe=recipe) as inputs:
        assert inputs.mode == ("prefix" if runtime.cache else "images")
        optimizer = make_optimizer(inputs.module, 1e-2, recipe, net=net)
        scheduler = make_scheduler(optimizer, recipe, epochs=2, updates_per_epoch=len(inputs.train))
        for updates in (0, 1):  # the very first step already runs at the scaled rates
            scheduler.step_update(num_updates=updates)
            base = 1e-2 * 0.5 * (1 + np.cos(np.pi * updates / (2 * len(inputs.train))))
            assert _rate_of(optimizer, net.head.weight) == pytest.approx(base)
            assert _rate_of(optimizer, last) == pytest.approx(base * 0.5)  # decay^(5 - 4)
            assert _rate_of(optimizer, first) == pytest.approx(base * 0.5 ** 3)  # decay^(5 - 2)
        assert frozen and not any(p is q for g in optimizer.param_groups for p in g["params"] for q in frozen)


def test_warmup_is_a_fraction_of_all_steps_from_zero() -> None:
    head = nn.Linear(4, 2)
    optimizer = make_optimizer(head, 1e-2, Recipe(warmup=0.1))
    scheduler = make_scheduler(optimizer, Recipe(warmup=0.1), epochs=2, updates_per_epoch=50)  # 10 warm-up steps
    assert optimizer.param_groups[0]["lr"] == 0.0
    scheduler.step_update(num_updates=5)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(5e-3)
    scheduler.step_update(num_updates=10)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(1e-2 * 0.5 * (1 + np.cos(np.pi * 10 / 100)))
    plain = make_optimizer(nn.Linear(4, 2), 1e-2, Recipe())
    make_scheduler(plain, Recipe(), epochs=2, updates_per_epoch=50)
    assert plain.param_groups[0]["lr"] == 1e-2  # no warm-up: the first step at the peak rate, as before


def test_the_loss_follows_label_smoothing_and_mixing() -> None:
    logits, labels = torch.randn(6, 3), torch.tensor([0, 1, 2, 0, 1, 2])
    head = nn.Linear(2, 3)
    plain = training_loss(Recipe(), head, mixed=False)
    assert plain is F.cross_entropy  # the default is exactly the loss before these options existed
    smoothed = training_loss(Recipe(label_smoothing=0.2), head, mixed=False)
    assert float(smoothed(logits, labels)) == pytest.approx(float(F.cross_entropy(logits, labels,
                                                                                  label_smoothing=0.2)))
    weighted = training_loss(Recipe(), head, mixed=False, class_weight=torch.tensor([1.0, 2.0, 3.0]))
    assert float(weighted(logits, labels)) == pytest.approx(float(F.cross_entropy(logits, labels,
                                                                                  weight=torch.tensor([1., 2., 3.]))))
    mixup = make_mixup(Recipe(mixup=0.2, label_smoothing=0.1), 3)
    assert mixup is not None and mixup.label_smoothing == 0.1 and mixup.mixup_alpha == 0.2 and mixup.cutmix_alpha == 0
    assert make_mixup(Recipe(label_smoothing=0.1), 3) is None
    soft = training_loss(Recipe(mixup=0.2), head, mixed=True)
    targets = torch.full((6, 3), 1 / 3)
    assert float(soft(logits, targets)) == pytest.approx(float(-(F.log_softmax(logits, 1) / 3).sum(1).mean()))


def test_mixing_drops_the_last_image_of_an_odd_batch() -> None:
    mixup = make_mixup(Recipe(mixup=1.0, cutmix=1.0, label_smoothing=0.1), 4)
    assert mixup is not None
    x, y = torch.randn(5, 3, 8, 8), torch.tensor([0, 1, 2, 3, 0])
    mixed_x, targets = mix_batch(mixup, x, y)
    assert mixed_x.shape == (4, 3, 8, 8) and targets.shape == (4, 4)
    assert torch.allclose(targets.sum(1), torch.ones(4))
    one_x, one_target = mix_batch(mixup, x[:1], y[:1])  # one image: not mixed, its target smoothed
    assert torch.equal(one_x, x[:1]) and one_target[0, 0] == pytest.approx(0.925)


def test_augmentation_choices_build_their_transforms() -> None:
    crop_flip = Preprocess.from_config(dict(CONFIG))
    assert "RandomResizedCrop" in repr(crop_flip.train) and "RandAugment" not in repr(crop_flip.train)
    rand = Preprocess.from_config(dict(CONFIG), augmentation="rand_augment")
    assert "RandAugment(n=2" in repr(rand.train) and "m=9" in repr(rand.train)
    trivial = Preprocess.from_config(dict(CONFIG), augmentation="trivial_augment")
    steps = [type(t).__name__ for t in trivial.train.transforms]  # type: ignore[attr-defined]
    assert steps[-2:] == ["TrivialAugmentWide", "MaybePILToTensor"] and "RandomResizedCropAndInterpolation" in steps
    none = Preprocess.from_config(dict(CONFIG), augmentation="none")
    assert none.train is none.eval


def test_rand_augment_posterize_at_the_top_magnitude_does_not_fail() -> None:
    from PIL import Image

    rand = Preprocess.from_config(dict(CONFIG), augmentation="rand_augment")
    step = next(t for t in rand.train.transforms if hasattr(t, "ops"))  # type: ignore[attr-defined]
    posterize = next(op for op in step.ops if op.name == "PosterizeIncreasing")
    posterize.prob, posterize.magnitude, posterize.magnitude_std = 1.0, 10, 0  # 0 bits before the guard
    image = Image.new("RGB", (32, 32), (200, 120, 40))
    out = posterize(image)
    assert out.size == (32, 32) and max(out.getpixel((0, 0))) == 128  # one bit kept: 200 -> 128, 120 -> 0
    for _ in range(50):  # the whole policy, at random magnitudes
        rand.train(image)


def test_a_recipe_without_augmentation_trains_full_fine_tuning_on_cached_images(digits_small: ImageDataset) -> None:
    for recipe, augment in ((Recipe(), True), (Recipe(augmentation="none"), False),
                            (Recipe(augmentation="none", mixup=0.2), True)):
        with prepare_inputs(_net(0.0), digits_small, dict(CONFIG), 32, seed=0, device=CPU, runtime=Runtime(),
                            hflip=False, recipe=recipe) as inputs:
            assert inputs.mode == "images" and inputs.augment is augment


def test_drop_path_reaches_the_model_and_is_off_by_default() -> None:
    on = Strategy("m", 0.0, 0, 1e-3, {"drop_path": 0.2}).recipe()
    assert dict(on.model_kwargs) == {"drop_path_rate": 0.2}
    assert dict(Strategy("m", 0.0, 0, 1e-3).recipe().model_kwargs) == {}  # unchanged without the dimension
    model = timm.create_model("test_resnet", num_classes=0, **on.model_kwargs)
    rates = [m.drop_prob for m in model.modules() if type(m).__name__ == "DropPath"]
    assert rates and max(rates) == pytest.approx(0.2)


def test_lp_ft_fits_the_head_on_train_features_before_fine_tuning(digits_small: ImageDataset,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    net = _net(0.4)
    features = pooled_features(net, digits_small, dict(CONFIG), runtime=Runtime(), device=CPU,
                               splits=("train",))["train"]
    labels = torch.tensor([y for _, y in digits_small.splits["train"]])
    expected = nn.Linear(features.shape[1], 10)
    logistic_head(expected, features, labels)
    seen: dict[str, torch.Tensor] = {}
    original = trainer_module.make_optimizer

    def spy(module: nn.Module, lr: float, recipe: Recipe, net: BackboneWithHead | None = None) -> Any:
        assert net is not None
        seen["head"] = net.head.weight.detach().clone()  # when fine-tuning starts
        return original(module, lr, recipe, net=net)

    monkeypatch.setattr(trainer_module, "make_optimizer", spy)
    result = fit(net, digits_small, dict(CONFIG), Budget(epochs=1, batch_size=32), 1e-3, seed=0, device=CPU,
                 hflip=False, runtime=Runtime(), recipe=Recipe(lp_ft=True))
    assert torch.allclose(seen["head"], expected.weight, atol=1e-5)
    assert result.head_fit["loss_after"] < result.head_fit["loss_before"] and "C" in result.head_fit
    # the features are the linear probe's (same cache key), so a linear-probe trial would find them
    probe = _net(1.0)
    assert weights_fingerprint(probe.backbone) == weights_fingerprint(_net(0.4).backbone)
    assert torch.equal(pooled_features(probe, digits_small, dict(CONFIG), runtime=Runtime(), device=CPU,
                                       splits=("train",))["train"], features)


def test_lp_ft_fits_an_mlp_head_and_skips_a_linear_probe(digits_small: ImageDataset) -> None:
    net = _net(0.4, head_width=16)
    record = fit_head(net, digits_small, dict(CONFIG), weight_decay=0.01, runtime=Runtime(), device=CPU)
    assert record["loss_after"] < record["loss_before"] and "C" not in record
    probe = fit(_net(1.0), digits_small, dict(CONFIG), Budget(epochs=1, batch_size=32), 1e-3, seed=0, device=CPU,
                hflip=False, recipe=Recipe(lp_ft=True))
    assert probe.head_fit == {}  # nothing of the backbone trains: LP-FT is the linear probe itself


def test_l2_sp_gradient_and_no_decay_on_the_backbone() -> None:
    net = _net(0.0, head_width=16)
    penalty = L2SP(net.backbone, alpha=0.3)
    assert all(p.ndim > 1 for p in penalty.weights) and len(penalty.weights) > 3  # norms and biases excluded
    weight = penalty.weights[0]
    with torch.no_grad():
        weight.add_(torch.randn_like(weight) * 0.1)
    start = penalty.start[0]
    penalty().backward()
    assert weight.grad is not None
    assert torch.allclose(weight.grad, 2 * 0.3 * (weight.detach() - start), atol=1e-6)
    optimizer = make_optimizer(net, 1e-3, Recipe(l2_sp=0.3, weight_decay=0.05), net=net)
    backbone = {id(p) for p in net.backbone.parameters()}
    for group in optimizer.param_groups:
        if any(id(p) in backbone for p in group["params"]):
            assert group["weight_decay"] == 0.0
    head_decays = {g["weight_decay"] for g in optimizer.param_groups if any(p is net.head.fc1.weight
                                                                            for p in g["params"])}
    assert head_decays == {0.05}  # L2 on the head, as in the paper


def test_input_size_enters_the_data_config_and_the_cache_key() -> None:
    recipe = Strategy("m", 0.0, 0, 1e-3, {"input_size": 48}).recipe()
    config = recipe.data_config(CONFIG)
    assert config["input_size"] == (3, 48, 48) and CONFIG["input_size"] == (3, 32, 32)
    assert Recipe().data_config(CONFIG) == CONFIG
    assert Preprocess.from_config(config).key != Preprocess.from_config(dict(CONFIG)).key


@pytest.mark.parametrize("freeze", [1.0, 0.4])
def test_caching_changes_nothing_with_the_recipe_dimensions(digits_small: ImageDataset, freeze: float) -> None:
    recipe = Recipe(lp_ft=True, layer_decay=0.75, l2_sp=0.01, label_smoothing=0.1, warmup=0.1, grad_clip=1.0,
                    weight_decay=0.05)
    runs = []
    for runtime in (Runtime(cache=False), Runtime(), Runtime()):
        runs.append(fit(_net(freeze, 16), digits_small, dict(CONFIG), Budget(epochs=2, batch_size=32), 3e-3, seed=3,
                        device=CPU, hflip=False, runtime=runtime, recipe=recipe))
    assert runs[0].inputs == "images" and runs[1].inputs == ("features" if freeze == 1.0 else "prefix")
    for run in runs[1:]:
        assert run.predictions == runs[0].predictions
        assert [h["loss"] for h in run.history] == pytest.approx([h["loss"] for h in runs[0].history], rel=1e-5)


def test_mixup_and_rand_augment_train_full_fine_tuning(digits_small: ImageDataset) -> None:
    recipe = Recipe(augmentation="rand_augment", mixup=0.4, cutmix=1.0, label_smoothing=0.1)
    net = _net(0.0)
    odd = dataclasses.replace(digits_small, splits={**digits_small.splits, "train": digits_small.splits["train"][:77]})
    result = fit(net, odd, dict(CONFIG), Budget(epochs=1, batch_size=32), 3e-3, seed=0, device=CPU, hflip=False,
                 recipe=recipe)  # 77 images: a last batch of 13 loses one
    assert result.inputs == "images" and np.isfinite(result.train_loss[0])


def test_recipe_dimensions_are_declared_with_their_defaults() -> None:
    defaults = {name: DIMENSIONS[name].default for name in NEW}
    assert defaults == {"lp_ft": False, "layer_decay": 1.0, "l2_sp": 0.0, "drop_path": 0.0, "label_smoothing": 0.0,
                        "warmup": 0.0, "grad_clip": 0.0, "augment_frozen": False, "augmentation": "crop_flip",
                        "mixup": 0.0, "cutmix": 0.0, "input_size": None}
    assert Strategy("m", 0.0, 0, 1e-3).recipe() == Recipe()  # every default is the recipe before them
    assert all(DIMENSIONS[name].source for name in NEW)


def test_bundled_recipe_spaces_name_every_new_dimension() -> None:
    small = load_search_space("recipe_small")
    assert set(NEW) <= set(small.dimensions)
    assert set(NEW) - {"grad_clip", "augment_frozen"} <= set(load_search_space("recipe").dimensions)
    assert small.baseline().value("input_size") == 128  # a trial must sample it: the largest choice
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    for _ in range(30):
        strategy = small.suggest(study.ask())
        sampled = strategy.as_dict()
        assert ("lp_ft" in sampled) == (strategy.freeze_depth < 1)
        assert ("mixup" in sampled) == (strategy.freeze_depth == 0 or bool(sampled["augment_frozen"]))


def test_bad_recipe_values_are_refused_naming_them(tiny_space: dict[str, object]) -> None:
    from autotransfer import ConfigError
    for key, value, fragment in (("augmentation", ["autoaugment"], "one of ['none', 'crop_flip'"),
                                 ("layer_decay", [1.5], "a factor in (0, 1]"),
                                 ("lp_ft", ["yes"], "true or false"),
                                 ("input_size", [16], "an integer from 32 to 1024"),
                                 ("label_smoothing", [1.0], "a number in [0, 1)")):
        with pytest.raises(ConfigError, match=re.escape(fragment)):
            load_search_space({**tiny_space, key: value})


def test_a_search_over_every_recipe_dimension_is_stored_shown_refitted_and_saved(
        tmp_path: Path, digits_small: ImageDataset, test_model_zoo: Path) -> None:
    space = {name: domain for name, domain in _small_space().items() if name != "description"}
    space.update(backbone=["test_resnet.local"], input_size=[32, 40])
    result = search(digits_small, space=space, n_trials=6, epochs=1, zoo=test_model_zoo, device="cpu",
                    pruner="none", out=tmp_path / "out", seed=2)
    board = leaderboard(result.study)
    sampled = {name for trial in result.study.trials for name in trial.params}
    assert {"input_size", "label_smoothing", "warmup"} <= sampled
    assert {f"params_{name}" for name in sampled} <= set(board.columns)
    html = write_report(result.study, tmp_path / "report.html").read_text(encoding="utf-8")
    assert "input size" in html
    model = result.refit(epochs=1)
    saved = model.save(tmp_path / "model")
    loaded = load_model(saved)
    best = result.study.best_trial.params
    assert loaded.data_config["input_size"] == (3, best["input_size"], best["input_size"])
    record = json.loads((saved / "model.json").read_text(encoding="utf-8"))
    assert record["strategy"] == best


def _small_space() -> dict[str, Any]:
    import yaml

    from autotransfer.space.search_space import bundled_spaces
    raw: dict[str, Any] = yaml.safe_load(bundled_spaces()["recipe_small"].read_text(encoding="utf-8"))
    return raw


def test_gradient_clipping_bounds_the_global_norm_before_each_step(digits_small: ImageDataset,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    norms: list[float] = []
    clip = trainer_module.timm.utils.dispatch_clip_grad

    def spy(parameters: Any, value: float, mode: str = "norm") -> None:
        parameters = [p for p in parameters if p.grad is not None]
        clip(parameters, value, mode=mode)
        norms.append(float(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in parameters]))))

    monkeypatch.setattr(trainer_module.timm.utils, "dispatch_clip_grad", spy)
    fit(_net(0.0), digits_small, dict(CONFIG), Budget(epochs=1, batch_size=32), 3e-3, seed=0, device=CPU, hflip=False,
        recipe=Recipe(grad_clip=1e-3))
    assert len(norms) == 3 and max(norms) == pytest.approx(1e-3, rel=1e-3)  # 96 images: three steps
    norms.clear()
    fit(_net(0.0), digits_small, dict(CONFIG), Budget(epochs=1, batch_size=32), 3e-3, seed=0, device=CPU, hflip=False)
    assert norms == []  # off by default
