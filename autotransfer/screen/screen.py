"""Rank candidate backbones by transferability scores of their pooled features.

Each candidate (a backbone, optionally at an input resolution other than its own) is built as a
linear-probe trial builds it (every block group frozen), so its pooled train and val features come
from, and go to, the same cache as linear-probe trials (:func:`~autotransfer.training.input_plan.pooled_features`:
memory, then ``OUT/cache/features``). The scores of :mod:`autotransfer.screen.scores` are computed on
the train features alone (val is what the search selects on; its features are extracted too, for the
linear-probe trials that follow); the candidates are ranked by one of them, and ``search(..., screen=K)``
keeps the ``K`` best backbones of the search space. On a terminal each extraction shows a progress bar
(images done, rate, time left; :mod:`autotransfer.progress`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from autotransfer import interrupt
from autotransfer.data.dataset import ImageDataset, load_dataset
from autotransfer.errors import ConfigError, DataError, describe
from autotransfer.models.network import BackboneWithHead
from autotransfer.models.zoo import Zoo, check_backbones, create_backbone, feature_dim, load_zoo
from autotransfer.screen.scores import METHODS, SCORES, score_features
from autotransfer.storage.records import ScreenKey
from autotransfer.training.input_plan import pooled_features
from autotransfer.training.runtime import Runtime
from autotransfer.training.trainer import resolve_device

__all__ = ["ScreenResult", "check_screen", "screen"]

logger = logging.getLogger(__name__)

SPLITS = ("train", "val")
COLUMNS = ["rank", "backbone", "resolution", "n_features", *SCORES, "images", "seconds", "kept"]


@dataclass(frozen=True)
class ScreenResult:
    """The ranked candidates of a screen.

    Attributes:
        table: One row per candidate, best first: ``rank`` (1 = best), ``backbone``, ``resolution``
            (px, square input), ``n_features``, one column per score of :data:`~autotransfer.screen.scores.SCORES`,
            ``images`` (train + val images passed through the backbone, or found in the cache),
            ``seconds`` (features and scores) and ``kept``.
        score: The score the table is ranked by.
        k: How many backbones are kept (None: all).
        resolutions: The input sizes screened (px), or None for each backbone's own.
    """

    table: pd.DataFrame
    score: str
    k: int | None
    resolutions: tuple[int, ...] | None = None

    @property
    def kept(self) -> list[str]:
        """The kept backbones, best first (each once, whatever its resolutions)."""
        return list(dict.fromkeys(self.table.loc[self.table["kept"], "backbone"]))

    @classmethod
    def from_record(cls, record: dict[str, Any], score: str, k: int | None) -> ScreenResult:
        """A stored screen ranked again by ``score`` with ``k`` kept, without extracting anything.

        Args:
            record: :meth:`record`'s output, as a study stores it.
            score: One of :data:`~autotransfer.screen.scores.SCORES`.
            k: Backbones to keep, or None.

        Raises:
            ConfigError: The record lacks the score, or ``k`` exceeds its backbones.
        """
        table = pd.DataFrame(record.get(ScreenKey.CANDIDATES) or [])
        if score not in table or table[score].isna().any():
            raise ConfigError(describe("screen_score", f"a score the stored screen holds ({list(table)})", score))
        check_screen(list(dict.fromkeys(table["backbone"])), score=score, k=k)
        stored = record.get(ScreenKey.RESOLUTIONS)
        return _ranked(table.drop(columns=["rank", "kept"], errors="ignore"), score, k,
                       tuple(stored) if stored else None)

    def record(self) -> dict[str, Any]:
        """The screen as a study stores it (``StudyAttr.SCREEN``): JSON-compatible values only."""
        rows = self.table.astype(object).where(self.table.notna(), None).to_dict(orient="records")
        return {ScreenKey.SCORE: self.score, ScreenKey.K: self.k, ScreenKey.KEPT: self.kept,
                ScreenKey.CANDIDATES: rows, ScreenKey.METHODS: dict(METHODS),
                ScreenKey.RESOLUTIONS: list(self.resolutions) if self.resolutions else None}


def check_screen(backbones: Sequence[str], *, score: str, k: int | None,
                 resolutions: Sequence[int] | None = None) -> None:
    """Refuse a screen that cannot run, before anything is extracted.

    Args:
        backbones: The candidate backbone names.
        score: The ranking score.
        k: Backbones to keep, or None.
        resolutions: Input resolutions (px), or None for each backbone's own.

    Raises:
        ConfigError: No or repeated backbones, an unknown score, ``k`` not in ``[1, len(backbones)]``,
            or a resolution that is not an integer of at least 16 px.
    """
    if not backbones or len(set(backbones)) != len(backbones):
        raise ConfigError(describe("backbones", "a non-empty list of distinct names", list(backbones)))
    if score not in SCORES:
        raise ConfigError(describe("screen_score", f"one of {list(SCORES)}", score))
    if k is not None and (isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= len(backbones)):
        raise ConfigError(describe("screen", f"an integer in [1, {len(backbones)}] (the backbones screened: "
                                   f"{list(backbones)})", k))
    for r in resolutions or ():
        if isinstance(r, bool) or not isinstance(r, int) or r < 16:
            raise ConfigError(describe("resolutions", "integers of at least 16 (px)", list(resolutions or ())))


def screen(
    data: str | Path | ImageDataset,
    backbones: Sequence[str],
    *,
    score: str = SCORES[0],
    k: int | None = None,
    resolutions: Sequence[int] | None = None,
    zoo: str | Path | Zoo | None = None,
    device: str = "auto",
    runtime: Runtime | None = None,
    seed: int = 0,
    check: Callable[[], None] = interrupt.check,
) -> ScreenResult:
    """Score every candidate backbone on a dataset's pooled features and rank them.

    Everything is checked (the options, the backbones' weights, the dataset and its train classes)
    before the first image goes through a backbone. One INFO line per candidate reports its images,
    their rate and its scores.

    Args:
        data: Image folder, folder with ``train/`` and ``val/``, ``"digits"``, or an
            :class:`~autotransfer.data.dataset.ImageDataset` (split as a search splits it with ``seed``).
        backbones: Zoo or timm names.
        score: Ranking score, one of :data:`~autotransfer.screen.scores.SCORES`: ``"knn"`` (default),
            ``"logme"``, ``"h_score"`` or ``"linear_probe"``.
        k: Keep the ``k`` best backbones (the others get ``kept`` False); None keeps all.
        resolutions: Screen every backbone at each of these square input sizes (px) instead of its
            own (``pretrained_cfg["input_size"]``); the candidates are then backbone x resolution.
        zoo: Local zoo file (default ``$AUTOTRANSFER_ZOO``) or :class:`~autotransfer.models.zoo.Zoo`.
        device: ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        runtime: Caches and accelerator (default :class:`~autotransfer.training.runtime.Runtime()`;
            give ``cache_dir`` to share features with later searches and restarts).
        seed: The dataset's split seed and the linear probe's fold shuffle.
        check: Called before every batch (raises to stop).

    Returns:
        The :class:`ScreenResult`.

    Raises:
        ConfigError: A bad option (see :func:`check_screen`) or zoo. WeightsNotFoundError: a backbone
            has no weights. DataError: a bad dataset, or a train class with fewer than two images.
    """
    check_screen(backbones, score=score, k=k, resolutions=resolutions)
    torch_device = resolve_device(device)
    local_zoo = zoo if isinstance(zoo, Zoo) else load_zoo(zoo)
    check_backbones(list(backbones), local_zoo)
    dataset = data if isinstance(data, ImageDataset) else load_dataset(data, seed=seed)
    labels = {s: np.array([y for _, y in dataset.splits[s]], dtype=np.int64) for s in SPLITS}
    counts = np.bincount(labels["train"], minlength=dataset.n_classes)
    if counts.min() < 2 or not len(labels["val"]):
        raise DataError(describe("data", "a dataset with two train images of every class and a val split",
                                 f"train counts {counts.tolist()}, {len(labels['val'])} val images"))
    runtime = runtime or Runtime()
    sizes: list[int | None] = list(resolutions) if resolutions else [None]
    rows = [_candidate(name, size, dataset, labels, local_zoo, runtime, torch_device, check, seed)
            for name in backbones for size in sizes]
    return _ranked(pd.DataFrame(rows), score, k, tuple(resolutions) if resolutions else None)


def _ranked(rows: pd.DataFrame, score: str, k: int | None, resolutions: tuple[int, ...] | None) -> ScreenResult:
    """The candidates best first by ``score``, with their rank and the ``k`` best backbones kept."""
    table = rows.sort_values(score, ascending=False, kind="stable").reset_index(drop=True)
    table.insert(0, "rank", range(1, len(table) + 1))
    best = list(dict.fromkeys(table["backbone"]))[:k]
    table["kept"] = table["backbone"].isin(best)
    return ScreenResult(table[COLUMNS], score, k, resolutions)


def _candidate(name: str, resolution: int | None, dataset: ImageDataset, labels: dict[str, np.ndarray],
               zoo: Zoo, runtime: Runtime, device: torch.device, check: Callable[[], None],
               seed: int) -> dict[str, Any]:
    """One candidate's row: features (cached or extracted), then every score."""
    tick = time.perf_counter()
    backbone, data_config = create_backbone(name, zoo)
    if resolution is not None:
        data_config = {**data_config, "input_size": (data_config["input_size"][0], resolution, resolution)}
    net = BackboneWithHead.build(backbone, 1.0, 0, dataset.n_classes).to(device)  # as a linear-probe trial
    calls = 0

    def counted() -> None:  # called before every batch decoded or extracted: never when the cache holds them
        nonlocal calls
        calls += 1
        check()

    feats = pooled_features(net, dataset, data_config, runtime=runtime, device=device, check=counted, splits=SPLITS)
    extracted = time.perf_counter() - tick
    scores = score_features(feats["train"].double().numpy(), labels["train"], seed=seed)
    images = sum(len(feats[s]) for s in SPLITS)
    row = {"backbone": name, "resolution": int(data_config["input_size"][-1]), "n_features": feature_dim(backbone),
           **scores, "images": images, "seconds": time.perf_counter() - tick}
    source = f"{images / max(extracted, 1e-9):.1f} images/s" if calls else "features from the cache"
    logger.info("Screen %s at %d px: %d images in %.1f s (%s); %s", name, row["resolution"], images, extracted,
                source, ", ".join(f"{s} {scores[s]:.4f}" for s in SCORES))
    return row
