"""Class imbalance: the scan's warning, --class-weight balanced (scikit-learn's weights, per training split),
stored with the study and used by refit."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from sklearn.utils.class_weight import compute_class_weight

from autotransfer import Budget, ConfigError, load_dataset, refit, search
from autotransfer.data.hygiene import describe_hygiene
from autotransfer.storage.records import read_budget, read_config
from autotransfer.training import trainer as trainer_module
from autotransfer.training.losses import balanced_class_weight
from tests.conftest import HYMENOPTERA


@pytest.fixture
def imbalanced(tmp_path: Path) -> Path:
    """60 real ant images against 12 real bee images, one ImageFolder."""
    if not HYMENOPTERA.is_dir():
        pytest.skip("../shared/data/datasets/hymenoptera_data is not present")
    root = tmp_path / "ants_bees"
    for cls, n in (("ants", 60), ("bees", 12)):
        (root / cls).mkdir(parents=True)
        for path in sorted((HYMENOPTERA / "train" / cls).iterdir())[:n]:
            shutil.copy(path, root / cls / path.name)
    return root


def test_balanced_weights_are_scikit_learns() -> None:
    labels = [0] * 9 + [1] * 3 + [2] * 6
    expected = compute_class_weight("balanced", classes=np.arange(3), y=np.asarray(labels))
    assert torch.allclose(balanced_class_weight(labels, 3), torch.tensor(expected, dtype=torch.float32))
    assert balanced_class_weight([0, 0, 1], 3).tolist()[2] == 1.0  # a class absent from the split
    with pytest.raises(ConfigError, match="'class_weight' must be 'balanced' or None"):
        Budget(class_weight="inverse")


def test_an_imbalanced_real_subset_is_warned_weighted_stored_and_refit(
        imbalanced: Path, tmp_path: Path, test_model_zoo: Path, tiny_space: dict[str, object],
        monkeypatch: pytest.MonkeyPatch) -> None:
    dataset = load_dataset(imbalanced, seed=0)
    lines = describe_hygiene(dataset.hygiene)
    assert any("'ants' has 60 images, 'bees' 12 (5.0x)" in line and "balanced_accuracy" in line for line in lines)
    seen: list[tuple[int, list[float] | None]] = []
    original = trainer_module.training_loss

    def spy(recipe: Any, module: Any, **kwargs: Any) -> Any:
        weight = kwargs.get("class_weight")
        seen.append((0, None if weight is None else weight.tolist()))
        return original(recipe, module, **kwargs)

    monkeypatch.setattr(trainer_module, "training_loss", spy)
    result = search(dataset, space={**tiny_space, "freeze_depth": [1.0]}, n_trials=1, epochs=1, zoo=test_model_zoo,
                    device="cpu", baseline=False, finalists=0, class_weight="balanced", out=tmp_path / "out")
    train = [y for _, y in dataset.splits["train"]]
    expected = compute_class_weight("balanced", classes=np.arange(2), y=np.asarray(train)).tolist()
    assert seen[0][1] == pytest.approx(expected) and expected[1] > 2 * expected[0]
    config = read_config(result.study)
    assert config["budget"]["class_weight"] == "balanced" and read_budget(config).class_weight == "balanced"
    seen.clear()
    refit(result.study, zoo=test_model_zoo, device="cpu", epochs=1, train_on="train+val")
    pooled = train + [y for _, y in dataset.splits["val"]]
    refit_weights = compute_class_weight("balanced", classes=np.arange(2), y=np.asarray(pooled)).tolist()
    assert seen and seen[0][1] == pytest.approx(refit_weights)  # recomputed for the refit's training split


def test_an_unweighted_study_stores_no_class_weight(tmp_path: Path, test_model_zoo: Path,
                                                    tiny_space: dict[str, object]) -> None:
    result = search("digits", space=tiny_space, n_trials=1, epochs=1, zoo=test_model_zoo, device="cpu",
                    baseline=False, finalists=0)
    assert "class_weight" not in read_config(result.study)["budget"]  # earlier studies compare equal
