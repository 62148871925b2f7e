"""Shared fixtures: real data from ../shared/data when present, tiny timm models otherwise."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import timm
import torch
import yaml
from safetensors.torch import save_file

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
HYMENOPTERA = SHARED / "datasets" / "hymenoptera_data"
ZOO_FILE = SHARED / "weights" / "zoo.yaml"

needs_shared = pytest.mark.skipif(not ZOO_FILE.is_file() or not HYMENOPTERA.is_dir(),
                                  reason="../shared/data (real images and weights) is not present")


@pytest.fixture(autouse=True)
def _isolate_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AUTOTRANSFER_ZOO", raising=False)
    torch.set_num_threads(2)


@pytest.fixture
def tiny_hymenoptera(tmp_path: Path) -> Path:
    """A copy of 10 train and 30 val real hymenoptera images per class (train/ and val/ folders)."""
    if not HYMENOPTERA.is_dir():
        pytest.skip("../shared/data/datasets/hymenoptera_data is not present")
    root = tmp_path / "hymenoptera_tiny"
    for split, n in (("train", 10), ("val", 30)):
        for cls in ("ants", "bees"):
            (root / split / cls).mkdir(parents=True)
            for src in sorted((HYMENOPTERA / split / cls).glob("*.jpg"))[:n]:
                shutil.copy(src, root / split / cls / src.name)
    return root


@pytest.fixture
def test_model_zoo(tmp_path: Path) -> Path:
    """A local zoo holding timm's tiny ``test_resnet`` with saved (seeded random) weights.

    It exercises the zoo loader and a whole search without network or ../shared; accuracy
    claims use the real weights of ../shared/data instead.
    """
    torch.manual_seed(0)
    model = timm.create_model("test_resnet", num_classes=0)
    save_file(model.state_dict(), str(tmp_path / "test_resnet.safetensors"))
    zoo = {"test_resnet.local": {
        "architecture": "test_resnet", "file": "test_resnet.safetensors", "model_kwargs": {},
        "pretrained_cfg": {"input_size": [3, 32, 32], "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5],
                           "interpolation": "bilinear", "crop_pct": 1.0, "num_classes": 0}}}
    path = tmp_path / "zoo.yaml"
    path.write_text(yaml.safe_dump(zoo))
    return path


@pytest.fixture
def tiny_space() -> dict[str, object]:
    """A search space over the ``test_resnet.local`` zoo entry."""
    return {"backbone": ["test_resnet.local"], "freeze_depth": [0.0, 0.5, 1.0], "head_width": [0, 16],
            "learning_rate": {"low": 1e-3, "high": 1e-2}}


@pytest.fixture
def tiny_space_file(tmp_path: Path, tiny_space: dict[str, object]) -> Path:
    """:func:`tiny_space` written as a YAML file, for command-line runs."""
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(tiny_space))
    return path


def cli_env() -> dict[str, str]:
    """Environment of a child ``autotransfer`` process: one thread each (2-core CI), no zoo variable."""
    import os

    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    env.pop("AUTOTRANSFER_ZOO", None)
    return env
