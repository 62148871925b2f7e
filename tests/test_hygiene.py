"""Data hygiene at scan time: identical files, label conflicts, copies across splits, --dedupe, image sizes."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from PIL import Image

from autotransfer import load_dataset
from autotransfer.cli.main import main
from autotransfer.data.hygiene import describe_hygiene
from tests.conftest import SHARED

FLOWERS = SHARED / "datasets" / "flowers_recognition_128"


def _image(path: Path, colour: tuple[int, int, int], size: tuple[int, int] = (40, 30)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)


def _folder(root: Path) -> Path:
    for cls in ("ant", "bee"):
        for i in range(6):
            _image(root / cls / f"{i}.png", (10 * i, 100 if cls == "ant" else 200, 7))
    shutil.copy(root / "ant" / "0.png", root / "ant" / "copy-of-0.png")  # same class
    shutil.copy(root / "ant" / "1.png", root / "bee" / "ant-1.png")  # filed under two classes
    return root


def test_identical_files_and_label_conflicts_are_found_and_dedupe_removes_them(tmp_path: Path) -> None:
    root = _folder(tmp_path / "data")
    ds = load_dataset(root, seed=0)
    record = ds.hygiene
    assert record["files_hashed"] == 14 and record["same_class"] == 1 and record["label_conflicts"] == 1
    kinds = {g["kind"]: sorted(key for key, _, _ in g["files"]) for g in record["duplicates"]}
    assert kinds == {"same class": ["ant/0.png", "ant/copy-of-0.png"], "label conflict": ["ant/1.png", "bee/ant-1.png"]}
    assert record["sizes"] == {"median": [40, 30], "min": [40, 30], "max": [40, 30]}
    lines = describe_hygiene(record)
    assert "2 group(s) of byte-identical files: 1 within a class, 1 across classes" in lines[0]
    assert "--dedupe" in lines[0]
    clean = load_dataset(root, seed=0, dedupe=True)
    assert clean.hygiene["duplicates"] == [] and clean.hygiene["dedupe"]["dropped"] == [
        "ant/1.png", "ant/copy-of-0.png", "bee/ant-1.png"]
    keys = {key for items in clean.splits.values() for key, _ in items}
    assert "ant/0.png" in keys and not keys & {"ant/1.png", "bee/ant-1.png", "ant/copy-of-0.png"}
    assert ds.fingerprint() != clean.fingerprint()  # a deduped study is another dataset


def test_a_copy_across_given_splits_is_leakage_and_dedupe_keeps_the_val_copy(tmp_path: Path) -> None:
    root = tmp_path / "data"
    for split in ("train", "val"):
        for cls in ("ant", "bee"):
            for i in range(3):
                _image(root / split / cls / f"{i}.png", (i, 50 if split == "train" else 60, 100 if cls == "ant" else 9))
    shutil.copy(root / "val" / "bee" / "2.png", root / "train" / "bee" / "leaked.png")
    record = load_dataset(root).hygiene
    assert record["across_splits"] == 1 and record["duplicates"][0]["splits"] == ["train", "val"]
    clean = load_dataset(root, dedupe=True)
    assert clean.hygiene["dedupe"]["dropped"] == ["train/bee/leaked.png"]
    assert "val/bee/2.png" in {key for key, _ in clean.splits["val"]}


def test_small_images_are_called_out_against_the_input_size() -> None:
    lines = describe_hygiene(load_dataset("digits").hygiene, input_side=224)
    assert len(lines) == 1 and "median 8x8 px" in lines[0] and "784 times" in lines[0] and "input_size" in lines[0]
    assert describe_hygiene(load_dataset("digits").hygiene, input_side=12) == []


@pytest.mark.skipif(not FLOWERS.is_dir(), reason="../shared/data/datasets/flowers_recognition_128 is not present")
def test_the_real_flowers_folder_has_six_identical_pairs_four_of_them_label_conflicts() -> None:
    ds = load_dataset(FLOWERS, seed=0)
    record = ds.hygiene
    assert len(record["duplicates"]) == 6 and record["label_conflicts"] == 4 and record["same_class"] == 2
    assert all(len(g["files"]) == 2 for g in record["duplicates"])
    conflict = next(g for g in record["duplicates"] if g["files"][0][0] == "rose/17291930305_79deae6a90_n.jpg")
    assert [cls for _, cls, _ in conflict["files"]] == ["rose", "tulip"]
    clean = load_dataset(FLOWERS, seed=0, dedupe=True)
    assert len(clean.hygiene["dedupe"]["dropped"]) == 2 + 8 and clean.hygiene["duplicates"] == []
    n = sum(len(items) for items in ds.splits.values())
    assert sum(len(items) for items in clean.splits.values()) == n - 10


def test_the_search_command_reports_duplicates(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                               test_model_zoo: Path, tiny_space: dict[str, object]) -> None:
    import yaml

    root = _folder(tmp_path / "data")
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump(tiny_space))
    assert main(["search", str(root), "--space", str(space), "--zoo", str(test_model_zoo), "--n-trials", "1",
                 "--epochs", "1", "--finalists", "0", "--no-baseline", "--out", str(tmp_path / "out")]) == 0
    assert "2 group(s) of byte-identical files" in caplog.text and "label conflict: ant/1.png (ant," in caplog.text
    html = (tmp_path / "out" / "report.html").read_text(encoding="utf-8")
    assert 'id="hygiene"' in html and "bee/ant-1.png" in html and "Image sizes: median 40x30 px" in html
