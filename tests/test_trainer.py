from __future__ import annotations

import dataclasses

import pytest
import timm
import torch

from autotransfer import BackboneWithHead as TransferNet
from autotransfer import Budget, ConfigError, fit, load_dataset
from autotransfer.errors import TrialFailed
from autotransfer.training.trainer import resolve_device

CONFIG = {"input_size": (3, 32, 32), "interpolation": "bilinear", "mean": (0.5,) * 3, "std": (0.5,) * 3,
          "crop_pct": 1.0}


@pytest.fixture(scope="module")
def digits_subset():  # type: ignore[no-untyped-def]
    ds = load_dataset("digits", seed=0)
    return dataclasses.replace(ds, splits={"train": ds.splits["train"][:160], "val": ds.splits["val"][:80],
                                           "test": []})


def _net(freeze: float = 0.0) -> TransferNet:
    torch.manual_seed(0)
    return TransferNet.build(timm.create_model("test_resnet", num_classes=0), freeze, 0, n_classes=10)


def test_fit_reports_every_epoch_and_is_seeded(digits_subset) -> None:  # type: ignore[no-untyped-def]
    seen: list[tuple[int, float]] = []
    result = fit(_net(), digits_subset, CONFIG, Budget(epochs=2, batch_size=32), 3e-3, seed=1,
                 device=torch.device("cpu"), on_epoch=lambda e, m: seen.append((e, m["accuracy"])) is not None,
                 hflip=False)
    assert [e for e, _ in seen] == [1, 2] and result.epochs_run == 2 and result.stop_reason == "completed"
    assert set(result.metrics) == {"accuracy", "balanced_accuracy", "macro_f1", "loss"}
    assert all(0.0 <= result.metrics[k] <= 1.0 for k in ("accuracy", "balanced_accuracy", "macro_f1"))
    assert result.seconds > 0
    again = fit(_net(), digits_subset, CONFIG, Budget(epochs=2, batch_size=32), 3e-3, seed=1,
                device=torch.device("cpu"), hflip=False)
    assert again.history == result.history  # same seed, same metrics


def test_training_learns_above_chance(digits_subset) -> None:  # type: ignore[no-untyped-def]
    result = fit(_net(), digits_subset, CONFIG, Budget(epochs=4, batch_size=16), 5e-3, seed=0,
                 device=torch.device("cpu"), hflip=False)
    assert result.metrics["accuracy"] > 0.3  # 10 classes: chance is 0.1


def test_pruning_callback_stops_training(digits_subset) -> None:  # type: ignore[no-untyped-def]
    result = fit(_net(), digits_subset, CONFIG, Budget(epochs=3), 1e-3, seed=0, device=torch.device("cpu"),
                 on_epoch=lambda e, m: True)
    assert result.epochs_run == 1 and result.stop_reason == "pruned at epoch 1"


def test_nan_loss_fails_the_trial_with_its_reason(digits_subset) -> None:  # type: ignore[no-untyped-def]
    net = _net(freeze=1.0)
    with torch.no_grad():
        net.head.weight.fill_(float("nan"))
    with pytest.raises(TrialFailed, match="diverged: loss is nan at epoch 1 step 1"):
        fit(net, digits_subset, CONFIG, Budget(epochs=1), 1e-3, seed=0, device=torch.device("cpu"))


@pytest.mark.parametrize(("kwargs", "fragment"), [
    ({"epochs": 0}, "'epochs' must be a positive integer"),
    ({"batch_size": -2}, "'batch_size' must be a positive integer"),
    ({"metric": "auc"}, "'metric' must be one of"),
])
def test_bad_budget(kwargs: dict[str, object], fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        Budget(**kwargs)  # type: ignore[arg-type]


def test_device_names() -> None:
    assert resolve_device("cpu").type == "cpu"
    with pytest.raises(ConfigError, match="'device' must be"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA is not available"):
            resolve_device("cuda")
