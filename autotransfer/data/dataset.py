"""Datasets: scan, validate and split labelled images.

Accepted inputs:

* an ImageFolder directory, one subfolder per class: split into train / val / test with a
  stratified, seeded ``sklearn.model_selection.train_test_split``;
* a directory holding ``train/`` and ``val/`` (optionally ``test/``) ImageFolders, used as given;
* the name ``"digits"``: scikit-learn's bundled 8x8 grey digits (1,797 images, 10 classes),
  converted to RGB and resized to the backbone's input size by the transform.

Every image is decoded once while scanning; files that cannot be decoded are listed with
their reason and excluded before training. Bad datasets raise :class:`DataError` before any
training starts.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from sklearn.model_selection import train_test_split
from torchvision.datasets.folder import IMG_EXTENSIONS

from autotransfer.data import hygiene
from autotransfer.errors import DataError, describe

__all__ = ["DECODE_ERRORS", "DIGITS", "IMAGE_EXTENSIONS", "ImageDataset", "decode_error", "load_dataset",
           "open_image", "stratified_split"]

DIGITS = "digits"
DECODE_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)
"""What Pillow raises for a file it cannot decode (truncated, not an image, over the decompression-bomb limit)."""
IMAGE_EXTENSIONS = tuple(sorted({*IMG_EXTENSIONS, ".gif"}))

Sample = tuple[str, int]  # (key: path relative to the root, or "digits/<index>"; class index)


@dataclass(frozen=True)
class ImageDataset:
    """A labelled image dataset, split into train / val / test.

    Attributes:
        name: Short name (folder name or ``"digits"``), used for the default study name.
        root: The dataset folder, or ``"digits"``.
        classes: Class names; a sample's label indexes this list.
        splits: ``{"train": [(key, label), ...], "val": [...], "test": [...]}``; ``test`` may be empty.
            Keys are paths relative to ``root`` (POSIX), or ``"digits/<index>"``.
        excluded: ``(path, reason)`` for every file that could not be decoded.
        split_method: ``"folders"`` (given train/val folders) or ``"stratified"`` (split here).
        split_seed: Seed of the stratified split (None for given folders).
        hygiene: What the scan found (:func:`autotransfer.data.hygiene.hygiene_record`): groups of
            byte-identical files, label conflicts, copies across splits, image sizes; {} when not scanned.
    """

    name: str
    root: str
    classes: tuple[str, ...]
    splits: dict[str, list[Sample]]
    excluded: list[tuple[str, str]] = field(default_factory=list)
    split_method: str = "stratified"
    split_seed: int | None = None
    hygiene: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def n_classes(self) -> int:
        """Number of classes."""
        return len(self.classes)

    def counts(self) -> dict[str, int]:
        """Number of images per split."""
        return {name: len(items) for name, items in self.splits.items()}

    def split_record(self) -> dict[str, Any]:
        """The split as stored with the study: keys and labels of every split."""
        return {name: [[k, y] for k, y in items] for name, items in self.splits.items()}

    def fingerprint(self) -> str:
        """SHA-256 of classes and split: changes when a file, label or split assignment changes."""
        blob = json.dumps({"classes": list(self.classes), "splits": self.split_record()}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()

    def without(self, key: str, reason: str) -> ImageDataset:
        """A copy with the sample ``key`` removed from every split and listed as excluded.

        Used when a file becomes unreadable during a search: later trials train without it.
        The fingerprint changes, so resuming later re-scans and compares as usual.
        """
        splits = {name: [item for item in items if item[0] != key] for name, items in self.splits.items()}
        return replace(self, splits=splits, excluded=[*self.excluded, (str(Path(self.root) / key), reason)])

    def split_of(self, key: str) -> str | None:
        """The split holding the sample ``key``, or None."""
        return next((name for name, items in self.splits.items() if any(k == key for k, _ in items)), None)

    def load(self, key: str) -> Image.Image:
        """Open one image as RGB (PIL).

        Args:
            key: A sample key from :attr:`splits`.
        """
        return open_image(self.root, key)


def open_image(root: str, key: str) -> Image.Image:
    """Open the image ``key`` of dataset ``root`` as an RGB PIL image.

    Args:
        root: Dataset folder or ``"digits"``.
        key: Path relative to ``root``, or ``"digits/<index>"``.

    Raises:
        OSError: The file cannot be decoded (truncated, corrupt, or not an image).
    """
    if root == DIGITS:
        pixels = _digits()[0][int(key.split("/", 1)[1])]
        return Image.fromarray(pixels, mode="L").convert("RGB")
    with Image.open(Path(root) / key) as img:
        return img.convert("RGB")


def load_dataset(
    data: str | Path,
    *,
    seed: int = 0,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    dedupe: bool = False,
) -> ImageDataset:
    """Scan, validate and split a dataset.

    Every file is decoded and hashed (SHA-256): byte-identical files, label conflicts and copies across
    splits are recorded in :attr:`ImageDataset.hygiene` (:mod:`autotransfer.data.hygiene`).

    Args:
        data: An ImageFolder directory, a directory with ``train/`` and ``val/`` (and optionally
            ``test/``) ImageFolders, or ``"digits"``.
        seed: Seed of the stratified split (unsplit data only).
        val_fraction: Fraction of images for validation when splitting here.
        test_fraction: Fraction of images for the test split when splitting here.
        dedupe: Keep one copy of each group of identical files (before splitting; for given folders
            the copy in test, else val) and drop every copy of a label-conflicted one.

    Returns:
        The validated, split dataset.

    Raises:
        DataError: The folder is missing or empty, there are fewer than two classes, a class has
            fewer than two decodable images, or the fractions are out of range.
    """
    if not (0 < val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise DataError(describe("val_fraction/test_fraction", "in (0, 1) and [0, 1) with a sum below 1",
                                 (val_fraction, test_fraction)))
    if str(data) == DIGITS and not Path(str(data)).exists():
        return _digits_dataset(seed, val_fraction, test_fraction)
    root = Path(data).expanduser().resolve()
    if not root.is_dir():
        raise DataError(describe("data", "an image folder, a folder with train/ and val/, or 'digits'",
                                 str(data)))
    if (root / "train").is_dir() and (root / "val").is_dir():
        return _presplit_dataset(root, dedupe)
    found = _Found()
    classes, samples, excluded = _scan(root, root, found)
    dropped = None
    if dedupe:
        pool, dropped = hygiene.dedupe({"train": samples}, hygiene.duplicate_groups(found.digests, {"train": samples},
                                                                                     classes))
        samples = pool["train"]
        _check_counts(samples, classes, root, 2, f"after --dedupe dropped {len(dropped)} file(s)")
    splits = stratified_split(samples, len(classes), seed, val_fraction, test_fraction)
    return ImageDataset(root.name, str(root), classes, splits, excluded, "stratified", seed,
                        found.record(splits, classes, dropped))


def _presplit_dataset(root: Path, dedupe: bool) -> ImageDataset:
    found = _Found()
    classes, train, excluded = _scan(root / "train", root, found)
    splits: dict[str, list[Sample]] = {"train": train}
    for name in ("val", "test"):
        folder = root / name
        if not folder.is_dir():
            splits[name] = []
            continue
        split_classes, items, bad = _scan(folder, root, found, min_per_class=1)
        if split_classes != classes:
            raise DataError(f"The classes of {folder} {list(split_classes)} differ from those of "
                            f"{root / 'train'} {list(classes)}; every split needs the same class folders.")
        splits[name] = items
        excluded += bad
    dropped = None
    if dedupe:
        splits, dropped = hygiene.dedupe(splits, hygiene.duplicate_groups(found.digests, splits, classes))
        _check_counts(splits["train"], classes, root / "train", 2, f"after --dedupe dropped {len(dropped)} file(s)")
    return ImageDataset(root.name, str(root), classes, splits, excluded, "folders", None,
                        found.record(splits, classes, dropped))


@dataclass
class _Found:
    """What the scan read of every decodable file: its SHA-256 and its size."""

    digests: dict[str, str] = field(default_factory=dict)
    sizes: list[tuple[int, int]] = field(default_factory=list)

    def record(self, splits: dict[str, list[Sample]], classes: Sequence[str],
               dropped: list[str] | None) -> dict[str, Any]:
        groups = hygiene.duplicate_groups(self.digests, splits, classes)
        counts = Counter(classes[label] for items in splits.values() for _, label in items)
        return hygiene.hygiene_record(groups, self.sizes, len(self.digests), dropped,
                                      {name: counts[name] for name in classes})


def _check_counts(samples: Sequence[Sample], classes: Sequence[str], folder: Path, minimum: int, why: str) -> None:
    counts = Counter(label for _, label in samples)
    for label, name in enumerate(classes):
        if counts[label] < minimum:
            raise DataError(f"Class {name!r} in {folder} has {counts[label]} image(s) {why}; each class needs at "
                            f"least {minimum}.")


def _scan(folder: Path, root: Path, found: _Found, min_per_class: int = 2
          ) -> tuple[tuple[str, ...], list[Sample], list[tuple[str, str]]]:
    class_dirs = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if len(class_dirs) < 2:
        raise DataError(f"{folder} must hold at least two class folders (one subfolder per class); "
                        f"found {[p.name for p in class_dirs]}.")
    samples: list[Sample] = []
    excluded: list[tuple[str, str]] = []
    for label, class_dir in enumerate(class_dirs):
        for path in sorted(class_dir.rglob("*")):
            if not path.is_file() or path.name.startswith(".") or path.suffix.lower() not in IMAGE_EXTENSIONS:
                continue
            resolved = path.resolve()
            if not resolved.is_relative_to(root):
                excluded.append((str(path), f"resolves outside the dataset root {root}"))
                continue
            reason, digest, size = _inspect(resolved)
            if reason:
                excluded.append((str(path), reason))
            else:
                key = path.relative_to(root).as_posix()
                samples.append((key, label))
                found.digests[key] = digest
                found.sizes.append(size)
    counts = Counter(label for _, label in samples)
    for label, class_dir in enumerate(class_dirs):
        if counts[label] < min_per_class:
            raise DataError(f"Class {class_dir.name!r} in {folder} has {counts[label]} decodable image(s); "
                            f"each class needs at least {min_per_class}. Excluded: {excluded[:5]}")
    return tuple(p.name for p in class_dirs), samples, excluded


def _inspect(path: Path) -> tuple[str | None, str, tuple[int, int]]:
    """``(why it cannot be decoded or None, SHA-256 of its bytes, (width, height))``: one read of the file."""
    try:
        data = path.read_bytes()
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            size = img.size
    except DECODE_ERRORS as err:
        return f"{type(err).__name__}: {err}", "", (0, 0)
    return None, hashlib.sha256(data).hexdigest(), (int(size[0]), int(size[1]))


def decode_error(path: Path) -> str | None:
    """Why ``path`` cannot be decoded as an image, or None if it can.

    The whole file is decoded (Pillow's truncation check and decompression-bomb limit stay on).
    """
    try:
        with Image.open(path) as img:
            img.load()
    except DECODE_ERRORS as err:
        return f"{type(err).__name__}: {err}"
    return None


def stratified_split(samples: Sequence[Sample], n_classes: int, seed: int,
                     val_fraction: float, test_fraction: float) -> dict[str, list[Sample]]:
    """Stratified train / val / test split with scikit-learn's ``train_test_split``.

    Args:
        samples: ``(key, class index)`` pairs.
        n_classes: Number of classes (each split gets at least one image of each).
        seed: ``random_state`` of the split.
        val_fraction: Fraction of the samples for val.
        test_fraction: Fraction for test; 0 gives no test split, and so do classes of fewer than
            three images.

    Returns:
        ``{"train": [...], "val": [...], "test": [...]}``, each sorted by key.
    """
    n = len(samples)
    n_val = max(n_classes, round(val_fraction * n))
    n_test = max(n_classes, round(test_fraction * n)) if test_fraction > 0 else 0
    if n - n_val - n_test < n_classes or min(Counter(y for _, y in samples).values()) < 3:
        n_test = 0  # too few images per class for three splits: keep train and val only
    items = list(samples)
    labels = [y for _, y in items]
    test: list[Sample] = []
    if n_test:
        items, test = train_test_split(items, test_size=n_test, stratify=labels, random_state=seed)
        labels = [y for _, y in items]
    train, val = train_test_split(items, test_size=n_val, stratify=labels, random_state=seed)
    return {"train": sorted(train), "val": sorted(val), "test": sorted(test)}


@lru_cache(maxsize=1)
def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    pixels = np.clip(bunch.images * (255.0 / 16.0), 0, 255).astype(np.uint8)  # (1797, 8, 8)
    return pixels, bunch.target.astype(int)


def _digits_dataset(seed: int, val_fraction: float, test_fraction: float) -> ImageDataset:
    _, targets = _digits()
    samples = [(f"{DIGITS}/{i}", int(y)) for i, y in enumerate(targets)]
    splits = stratified_split(samples, 10, seed, val_fraction, test_fraction)
    return ImageDataset(DIGITS, DIGITS, tuple(str(i) for i in range(10)), splits, [], "stratified", seed,
                        hygiene.hygiene_record([], [(8, 8)] * len(samples), 0, None,
                                               dict(Counter(str(y) for _, y in samples))))
