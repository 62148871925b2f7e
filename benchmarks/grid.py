"""The search-quality grid (issue 7): its definition, its datasets and its recorded table.

``benchmarks/grid.yaml`` names the strategies (every zoo backbone x freeze depths x head widths x
learning rates), the budget and, per dataset, the input resolution and split sizes. The datasets
are real: hymenoptera and flowers from ``../shared/data`` and scikit-learn's digits.
"""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pandas as pd
import yaml
from sklearn.model_selection import train_test_split

from autotransfer.data.dataset import ImageDataset, Sample, load_dataset, stratified_split

HERE = Path(__file__).resolve().parent
GRID_FILE = HERE / "grid.yaml"
TABLE = HERE / "search_quality" / "grid.csv"
SHARED = Path(os.environ.get("AUTOTRANSFER_SHARED", HERE.parent.parent / "shared"))
FOLDERS = {"hymenoptera": "datasets/hymenoptera_data", "flowers": "datasets/flowers_recognition_128"}
DATASETS = ("hymenoptera", "flowers", "digits")
KEY = ["dataset", "backbone", "freeze_depth", "head_width", "learning_rate"]
METRICS = ("accuracy", "balanced_accuracy", "macro_f1")


@dataclass(frozen=True)
class Grid:
    """The grid of ``grid.yaml``: strategy values, budget and dataset settings."""

    backbone: tuple[str, ...]
    freeze_depth: tuple[float, ...]
    head_width: tuple[int, ...]
    learning_rate: tuple[float, ...]
    epochs: int
    batch_size: int
    seed: int
    datasets: dict[str, dict[str, int]]

    @classmethod
    def load(cls, path: Path = GRID_FILE) -> Grid:
        raw: dict[str, Any] = yaml.safe_load(path.read_text())
        return cls(tuple(raw["backbone"]), tuple(float(v) for v in raw["freeze_depth"]),
                   tuple(int(v) for v in raw["head_width"]), tuple(float(v) for v in raw["learning_rate"]),
                   int(raw["epochs"]), int(raw["batch_size"]), int(raw["seed"]), dict(raw["datasets"]))

    def strategies(self) -> list[tuple[str, float, int, float]]:
        """Every ``(backbone, freeze_depth, head_width, learning_rate)``, grouped by backbone and depth."""
        return list(itertools.product(self.backbone, self.freeze_depth, self.head_width, self.learning_rate))

    def space(self) -> dict[str, Any]:
        """The grid as a search-space mapping for :func:`autotransfer.load_search_space`.

        The learning rate is a log range one decade wide around each grid value
        (``[min / sqrt(10), max * sqrt(10)]``), so that TPE models it as the real search does; a
        replayed trial reads the grid value nearest in log scale (each value owns an equal share).
        """
        low, high = min(self.learning_rate), max(self.learning_rate)
        return {"description": "the recorded grid", "backbone": list(self.backbone),
                "freeze_depth": list(self.freeze_depth), "head_width": list(self.head_width),
                "learning_rate": {"low": low / 10**0.5, "high": high * 10**0.5}}


def _subsample(items: list[Sample], n: int, seed: int) -> list[Sample]:
    """A stratified subsample of ``n`` items (all of them when there are no more than ``n``)."""
    if n >= len(items):
        return items
    kept, _ = train_test_split(items, train_size=n, stratify=[y for _, y in items], random_state=seed)
    return sorted(kept)


def grid_dataset(name: str, grid: Grid) -> ImageDataset:
    """The dataset ``name`` split as the grid records it (train / val / test, stratified, seeded).

    Hymenoptera keeps its own ``val/`` folder (153 images) and takes its test split from
    ``train/``, so that val stays as large as in a normal search. Flowers and digits are split
    70/15/15 by :func:`autotransfer.load_dataset` and subsampled to the sizes in ``grid.yaml``.

    Raises:
        FileNotFoundError: ``../shared/data`` is absent (set ``AUTOTRANSFER_SHARED``).
        KeyError: Unknown dataset name.
    """
    sizes = grid.datasets[name]
    if name == "digits":
        ds = load_dataset("digits", seed=grid.seed)
    else:
        folder = SHARED / "data" / FOLDERS[name]
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder} is missing; set AUTOTRANSFER_SHARED to the shared folder")
        ds = load_dataset(folder, seed=grid.seed)
    splits = dict(ds.splits)
    if name == "hymenoptera":
        train = splits["train"]
        carved = stratified_split(train, ds.n_classes, grid.seed, sizes["test"] / len(train), 0.0)
        splits = {"train": carved["train"], "val": splits["val"], "test": carved["val"]}
    splits = {split: _subsample(items, sizes[split], grid.seed) for split, items in splits.items()}
    return replace(ds, name=name, splits=splits)


def read_table(path: Path = TABLE) -> pd.DataFrame:
    """The recorded grid: one row per strategy, dataset and epoch (empty if not recorded yet)."""
    if not path.exists():
        return pd.DataFrame()
    return pd.read_csv(path)
