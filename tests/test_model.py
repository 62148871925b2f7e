"""TransferModel: predict on every kind of input, save and load without pickle, refuse altered folders."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image

from autotransfer import BackboneWithHead as TransferNet
from autotransfer import ConfigError, DataError, ModelError, TransferModel, load_model
from autotransfer.deploy.model import CONFIG_FILE, WEIGHTS_FILE, BackboneSpec
from tests.conftest import HYMENOPTERA

CONFIG = {"input_size": (3, 32, 32), "interpolation": "bilinear", "mean": (0.485, 0.456, 0.406),
          "std": (0.229, 0.224, 0.225), "crop_pct": 0.875, "crop_mode": "center"}


def _model(freeze_depth: float = 0.5, head_width: int = 8) -> TransferModel:
    torch.manual_seed(0)
    net = TransferNet.build(timm.create_model("test_resnet", num_classes=0), freeze_depth, head_width, n_classes=3)
    for p in net.parameters():  # trained-looking weights: not the initial ones
        p.data.add_(0.05 * torch.randn_like(p))
    return TransferModel(net, classes=["cat", "dog", "<b>bird</b>"], data_config=CONFIG,
                         backbone=BackboneSpec("test_resnet.local", "test_resnet", {}, "zoo"),
                         strategy={"backbone": "test_resnet.local", "freeze_depth": freeze_depth,
                                   "head_width": head_width, "learning_rate": 1e-3},
                         metrics={"test": {"accuracy": 0.5, "n_images": 4}})


def _images(n: int = 5) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, size=(40 + 3 * i, 48, 3), dtype=np.uint8) for i in range(n)]


def test_every_input_kind_gives_the_same_probabilities(tmp_path: Path) -> None:
    model = _model()
    arrays = _images()
    paths = []
    for i, array in enumerate(arrays):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(array).save(paths[-1])
    pils = [Image.fromarray(a) for a in arrays]
    from_arrays = model.predict_proba(arrays)
    assert from_arrays.shape == (5, 3) and from_arrays.dtype == np.float32
    np.testing.assert_allclose(from_arrays.sum(axis=1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(model.predict_proba([str(p) for p in paths]), from_arrays)
    np.testing.assert_array_equal(model.predict_proba(paths), from_arrays)
    np.testing.assert_array_equal(model.predict_proba(pils), from_arrays)
    np.testing.assert_array_equal(model.predict_proba(np.stack([a[:40] for a in arrays])),
                                  model.predict_proba([a[:40] for a in arrays]))
    # a float tensor already preprocessed: the eval transform, then (x - mean) / std
    pre = torch.stack([model._preprocess.eval(p) for p in pils]).float() / 255.0
    pre = (pre - torch.tensor(CONFIG["mean"]).view(1, 3, 1, 1)) / torch.tensor(CONFIG["std"]).view(1, 3, 1, 1)
    np.testing.assert_allclose(model.predict_proba(pre), from_arrays, atol=1e-5)
    assert model.predict_proba(pre[0]).shape == (1, 3)
    assert model.predict_proba(pils[0]).shape == (1, 3)
    assert list(model.predict(arrays)) == [model.classes[k] for k in from_arrays.argmax(axis=1)]
    # grey and float images are accepted like the dataset scan accepts them
    assert model.predict_proba([np.zeros((8, 8), np.uint8), np.full((8, 8, 1), 0.5)]).shape == (2, 3)


@pytest.mark.parametrize(("images", "match"), [
    (torch.zeros(2, 3, 31, 32), r"float tensor of shape \(B, 3, 32, 32\)"),
    (torch.zeros(2, 3, 32, 32, dtype=torch.uint8), "torch.uint8 tensor"),
    ([np.full((8, 8), 2.0)], r"floats in \[0, 1\].*float64 values in \[2, 2\]"),
    ([np.zeros((8, 8, 2), np.uint8)], r"shape \(8, 8, 2\)"),
    ([object()], "an image path, a PIL image"),
    (np.zeros((8, 8), np.uint8), "wrap a single array image in a list"),
    ([], "non-empty"),
    (["/no/such/image.png"], "/no/such/image.png"),
])
def test_bad_images_are_refused_with_what_is_accepted(images: object, match: str) -> None:
    with pytest.raises((ConfigError, DataError), match=match):
        _model().predict_proba(images)


def test_save_then_load_gives_identical_predictions_without_pickle(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    model = _model()
    model.save(tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == [CONFIG_FILE, WEIGHTS_FILE]
    (tmp_path / "plain").write_text("")  # both files get the mode open() gives under this umask
    assert {(tmp_path / "m" / n).stat().st_mode for n in (CONFIG_FILE, WEIGHTS_FILE)} == {
        (tmp_path / "plain").stat().st_mode}
    record = json.loads((tmp_path / "m" / CONFIG_FILE).read_text())
    assert record["backbone"] == {"name": "test_resnet.local", "architecture": "test_resnet", "model_kwargs": {},
                                  "source": "zoo"}
    assert record["classes"] == ["cat", "dog", "<b>bird</b>"] and record["metrics"]["test"]["accuracy"] == 0.5
    assert record["preprocessing"]["input_size"] == [3, 32, 32]
    assert set(record["versions"]) >= {"autotransfer", "torch", "timm", "python"}

    def no_unpickling(*args: object, **kwargs: object) -> None:
        raise AssertionError("load_model must not unpickle")

    monkeypatch.setattr(torch, "load", no_unpickling)
    monkeypatch.setattr("pickle.loads", no_unpickling)
    loaded = load_model(tmp_path / "m")
    images = _images()
    np.testing.assert_array_equal(loaded.predict_proba(images), model.predict_proba(images))
    assert loaded.classes == model.classes and loaded.strategy == model.strategy
    assert loaded.data_config == model.data_config
    assert not loaded.net.training


def _altered(tmp_path: Path) -> Path:
    folder = _model().save(tmp_path / "m")
    return folder


def test_altered_weights_are_refused(tmp_path: Path) -> None:
    folder = _altered(tmp_path)
    data = bytearray((folder / WEIGHTS_FILE).read_bytes())
    data[-10] ^= 0x01  # one bit of one weight
    (folder / WEIGHTS_FILE).write_bytes(bytes(data))
    with pytest.raises(ModelError, match="was altered or corrupted: its SHA-256 is"):
        load_model(folder)


def test_unknown_backbone_is_refused(tmp_path: Path) -> None:
    folder = _altered(tmp_path)
    record = json.loads((folder / CONFIG_FILE).read_text())
    record["backbone"]["architecture"] = "resnet_does_not_exist"
    (folder / CONFIG_FILE).write_text(json.dumps(record))
    with pytest.raises(ModelError, match=r"'resnet_does_not_exist'.*not a model timm .* knows"):
        load_model(folder)


@pytest.mark.parametrize(("edit", "match"), [
    (lambda r: r.pop("classes"), "lacks the field 'classes'"),
    (lambda r: r.update(format="something else"), "not an autotransfer model file"),
    (lambda r: r.update(format_version=99), "format_version 99"),
    (lambda r: r["strategy"].update(freeze_depth=2), "freeze_depth must be a fraction"),
    (lambda r: r["strategy"].update(head_width=16), "do not fit 'test_resnet' with freeze depth 0.5 and head width 16"),
    (lambda r: r.update(classes=["cat", "dog"]), "do not fit"),
    (lambda r: r["preprocessing"].pop("mean"), r"'preprocessing' lacks \['mean'\]"),
])
def test_incomplete_or_inconsistent_json_is_refused(tmp_path: Path, edit: object, match: str) -> None:
    folder = _altered(tmp_path)
    record = json.loads((folder / CONFIG_FILE).read_text())
    edit(record)  # type: ignore[operator]
    (folder / CONFIG_FILE).write_text(json.dumps(record))
    with pytest.raises(ModelError, match=match):
        load_model(folder)


def test_missing_files_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="must be a folder"):
        load_model(tmp_path / "nowhere")
    folder = _altered(tmp_path)
    (folder / WEIGHTS_FILE).unlink()
    with pytest.raises(ModelError, match=f"no weights file {WEIGHTS_FILE}"):
        load_model(folder)
    (folder / CONFIG_FILE).write_text("{not json")
    with pytest.raises(ModelError, match="not valid JSON"):
        load_model(folder)
    (folder / CONFIG_FILE).unlink()
    with pytest.raises(ModelError, match=f"has no {CONFIG_FILE}"):
        load_model(folder)


def test_saving_again_replaces_both_files_atomically(tmp_path: Path) -> None:
    first = _model()
    first.save(tmp_path / "m")
    second = _model(freeze_depth=1.0, head_width=0)
    second.save(tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == [CONFIG_FILE, WEIGHTS_FILE]  # no temporary left
    assert load_model(tmp_path / "m").strategy["head_width"] == 0


def test_real_photos_predict_like_their_files() -> None:
    if not HYMENOPTERA.is_dir():
        pytest.skip("../shared/data/datasets/hymenoptera_data is not present")
    files = sorted((HYMENOPTERA / "val" / "ants").glob("*.jpg"))[:4]
    model = _model()
    with_paths = model.predict_proba(files)
    np.testing.assert_array_equal(model.predict_proba([Image.open(f) for f in files]), with_paths)
    np.testing.assert_array_equal(model.predict_proba([np.asarray(Image.open(f).convert("RGB")) for f in files]),
                                  with_paths)
