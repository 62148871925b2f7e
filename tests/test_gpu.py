"""The CUDA path of every training feature, in one `pytest -m gpu` run (skipped where CUDA is absent).

Each test is small (timm's ``test_resnet`` on 32-pixel digits), so the whole file takes well under five
minutes on one GPU: the trainer on every input route (cached features, cached frozen prefix, images) with
bf16 autocast and channels-last, ``torch.compile``, the recipe hooks, a search, refit and a saved model.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from torch import nn

from autotransfer import Budget, Runtime, fit, load_dataset, load_model, refit, search
from autotransfer.data.dataset import ImageDataset
from autotransfer.models.network import BackboneWithHead
from autotransfer.space.dimensions import Recipe

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

CONFIG = {"input_size": (3, 32, 32), "interpolation": "bilinear", "mean": (0.5,) * 3, "std": (0.5,) * 3,
          "crop_pct": 1.0}


@pytest.fixture(scope="module")
def digits_small() -> ImageDataset:
    ds = load_dataset("digits", seed=0)
    return dataclasses.replace(ds, splits={"train": ds.splits["train"][:256], "val": ds.splits["val"][:128],
                                           "test": ds.splits["test"][:128]})


def _fit(dataset: ImageDataset, freeze: float, runtime: Runtime, recipe: Recipe | None = None) -> object:
    torch.manual_seed(0)
    net = BackboneWithHead.build(timm.create_model("test_resnet", num_classes=0), freeze, 16, 10)
    return fit(net, dataset, CONFIG, Budget(epochs=2, batch_size=32), 3e-3, seed=0, device=torch.device("cuda"),
               hflip=False, runtime=runtime, recipe=recipe)


@pytest.mark.parametrize(("freeze", "route"), [(1.0, "features"), (0.5, "prefix"), (0.0, "images")])
@pytest.mark.parametrize("amp", [False, True])
def test_every_input_route_trains_on_cuda_and_caching_changes_nothing(digits_small: ImageDataset, freeze: float,
                                                                      route: str, amp: bool) -> None:
    cached = _fit(digits_small, freeze, Runtime(amp=amp))
    uncached = _fit(digits_small, freeze, Runtime(amp=amp, cache=False))
    assert cached.inputs == route and uncached.inputs == "images"  # type: ignore[attr-defined]
    assert all(np.isfinite(cached.train_loss))  # type: ignore[attr-defined]
    if route != "images":  # frozen parts in eval mode: the same function, cached or not (bf16 rounding aside)
        assert cached.metrics["accuracy"] == pytest.approx(uncached.metrics["accuracy"],  # type: ignore[attr-defined]
                                                           abs=0.05 if amp else 0.01)


def test_compile_and_channels_last_on_cuda(digits_small: ImageDataset) -> None:
    compiled = _fit(digits_small, 0.0, Runtime(compile=True, channels_last=True))
    plain = _fit(digits_small, 0.0, Runtime(compile=False, channels_last=False))
    assert compiled.metrics["accuracy"] == pytest.approx(plain.metrics["accuracy"], abs=0.1)  # type: ignore


def test_recipe_hooks_run_on_cuda(digits_small: ImageDataset) -> None:
    def penalty(module: nn.Module) -> torch.Tensor:
        return sum((p.pow(2).sum() for p in module.parameters() if p.requires_grad), torch.zeros((), device="cuda"))

    recipe = Recipe(weight_decay=0.05, loss=lambda: nn.CrossEntropyLoss(label_smoothing=0.1),
                    extra_loss=(penalty, lambda module: torch.tensor(1.0)),
                    param_groups=(lambda module, groups: [{**g, "lr_scale": 0.5} for g in groups],),
                    train_transform={"hflip": 0.0}, augment_frozen=True)
    result = _fit(digits_small, 1.0, Runtime(amp=True), recipe)
    assert result.inputs == "images" and all(np.isfinite(result.train_loss))  # type: ignore[attr-defined]


def test_search_refit_and_saved_model_on_cuda(tmp_path: Path, digits_small: ImageDataset, test_model_zoo: Path,
                                              tiny_space: dict[str, object]) -> None:
    result = search(digits_small, space={**tiny_space, "weight_decay": [0.0, 0.05]}, n_trials=4, epochs=2,
                    zoo=test_model_zoo, out=tmp_path / "out", device="cuda")
    assert sum(t.state.name == "COMPLETE" for t in result.study.trials) >= 1
    model = refit(result.study, epochs=1, zoo=test_model_zoo, device="cuda")
    assert model.device.type == "cuda"
    images = [np.full((8, 8), k * 16, dtype=np.uint8) for k in range(4)]
    on_gpu = model.predict_proba(images)
    on_cpu = load_model(model.save(tmp_path / "model"), device="cpu").predict_proba(images)
    assert np.allclose(on_gpu, on_cpu, atol=1e-2)  # bf16 autocast on the GPU, float32 on the CPU


@pytest.mark.parametrize("freeze", [0.5, 0.0])
def test_every_recipe_dimension_trains_on_cuda(digits_small: ImageDataset, freeze: float) -> None:
    recipe = Recipe(lp_ft=True, layer_decay=0.75, l2_sp=0.01, label_smoothing=0.1, warmup=0.1, grad_clip=1.0,
                    augmentation="rand_augment", mixup=0.2, cutmix=1.0, augment_frozen=True)
    result = _fit(digits_small, freeze, Runtime(amp=True), recipe)
    assert result.inputs == "images" and all(np.isfinite(result.train_loss))  # type: ignore[attr-defined]
    assert result.head_fit["loss_after"] < result.head_fit["loss_before"]  # type: ignore[attr-defined]
    plain = Recipe(lp_ft=True, layer_decay=0.75, l2_sp=0.01, augmentation="none")
    cached, uncached = (_fit(digits_small, freeze, Runtime(cache=c), plain) for c in (True, False))
    assert cached.metrics["accuracy"] == pytest.approx(uncached.metrics["accuracy"], abs=0.01)  # type: ignore[attr-defined]


def test_class_weights_on_cuda(digits_small: ImageDataset) -> None:
    torch.manual_seed(0)
    net = BackboneWithHead.build(timm.create_model("test_resnet", num_classes=0), 0.0, 16, 10)
    for recipe in (Recipe(), Recipe(mixup=0.2, augmentation="none")):
        result = fit(net, digits_small, CONFIG, Budget(epochs=1, batch_size=32, class_weight="balanced"), 3e-3,
                     seed=0, device=torch.device("cuda"), hflip=False, runtime=Runtime(), recipe=recipe)
        assert np.isfinite(result.train_loss[0])


def test_screen_scores_cuda_features_as_cpu_ones(digits_small: ImageDataset, test_model_zoo: Path) -> None:
    from autotransfer.screen.screen import screen  # PyTorch-side module, imported where CUDA exists

    tables = [screen(digits_small, ["test_resnet.local"], resolutions=[32], zoo=test_model_zoo, device=device,
                     runtime=Runtime(cache=False)).table for device in ("cuda", "cpu")]
    for score in ("knn", "linear_probe"):  # accuracies: float32 features on either device give the same votes
        assert tables[0][score].iloc[0] == pytest.approx(tables[1][score].iloc[0], abs=0.02)
