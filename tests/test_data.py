from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from autotransfer import DataError, load_dataset
from tests.conftest import HYMENOPTERA, needs_shared


def _folder(root: Path, counts: dict[str, int], seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for cls, n in counts.items():
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            pixels = rng.integers(0, 255, size=(12, 12, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / cls / f"{i}.png")
    return root


def test_digits_split_is_stratified_and_seeded() -> None:
    ds = load_dataset("digits", seed=3)
    assert ds.n_classes == 10 and sum(ds.counts().values()) == 1797
    assert ds.counts() == {"train": 1257, "val": 270, "test": 270}
    total = Counter(y for items in ds.splits.values() for _, y in items)
    val = Counter(y for _, y in ds.splits["val"])
    assert all(abs(val[c] - 270 * total[c] / 1797) <= 1.5 for c in total)  # stratified
    assert load_dataset("digits", seed=3).fingerprint() == ds.fingerprint()
    assert load_dataset("digits", seed=4).fingerprint() != ds.fingerprint()
    image = ds.load(ds.splits["train"][0][0])
    assert image.mode == "RGB" and image.size == (8, 8)


@needs_shared
def test_presplit_real_folder_keeps_quirks() -> None:
    ds = load_dataset(HYMENOPTERA)
    assert ds.classes == ("ants", "bees")
    assert ds.counts() == {"train": 245, "val": 153, "test": 0}
    assert ds.split_method == "folders" and not ds.excluded
    keys = {k for k, _ in ds.splits["train"]}
    assert "train/ants/ant photos.jpg" in keys and "train/ants/imageNotFound.gif" in keys
    assert ds.load("train/ants/imageNotFound.gif").mode == "RGB"


def test_unsplit_folder_gets_three_stratified_splits(tmp_path: Path) -> None:
    ds = load_dataset(_folder(tmp_path / "d", {"cat": 20, "dog": 20}), seed=0)
    assert ds.counts() == {"train": 28, "val": 6, "test": 6}
    for split in ("train", "val", "test"):
        assert {y for _, y in ds.splits[split]} == {0, 1}
    all_keys = [k for items in ds.splits.values() for k, _ in items]
    assert len(all_keys) == len(set(all_keys)) == 40


def test_tiny_classes_keep_train_and_val(tmp_path: Path) -> None:
    ds = load_dataset(_folder(tmp_path / "d", {"a": 2, "b": 2}))
    assert ds.counts() == {"train": 2, "val": 2, "test": 0}


def test_corrupt_image_is_listed_and_excluded(tmp_path: Path) -> None:
    root = _folder(tmp_path / "d", {"a": 4, "b": 4})
    good = (root / "a" / "0.png").read_bytes()
    (root / "a" / "truncated.png").write_bytes(good[: len(good) // 2])
    (root / "b" / "garbage.jpg").write_bytes(b"not an image at all")
    (root / "b" / "notes.txt").write_text("ignored: not an image extension")
    ds = load_dataset(root)
    excluded = {Path(p).name: reason for p, reason in ds.excluded}
    assert set(excluded) == {"truncated.png", "garbage.jpg"}
    assert all(reason for reason in excluded.values())
    assert sum(ds.counts().values()) == 8


@pytest.mark.parametrize(("counts", "fragment"), [
    ({}, "at least two class folders"),
    ({"only": 5}, "at least two class folders"),
    ({"a": 5, "b": 1}, "Class 'b'"),
    ({"a": 5, "b": 0}, "has 0 decodable image"),
])
def test_bad_folders_fail_before_training(tmp_path: Path, counts: dict[str, int], fragment: str) -> None:
    root = tmp_path / "d"
    root.mkdir()
    _folder(root, counts)
    with pytest.raises(DataError, match=fragment):
        load_dataset(root)


def test_missing_folder_and_mismatched_splits(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="'data' must be an image folder"):
        load_dataset(tmp_path / "nope")
    _folder(tmp_path / "s" / "train", {"a": 3, "b": 3})
    _folder(tmp_path / "s" / "val", {"a": 2, "c": 2})
    with pytest.raises(DataError, match="differ from those of"):
        load_dataset(tmp_path / "s")


def test_symlink_outside_root_is_excluded(tmp_path: Path) -> None:
    root = _folder(tmp_path / "d", {"a": 3, "b": 3})
    outside = _folder(tmp_path / "elsewhere", {"x": 1})
    (root / "a" / "link.png").symlink_to(outside / "x" / "0.png")
    ds = load_dataset(root)
    assert [Path(p).name for p, _ in ds.excluded] == ["link.png"]
