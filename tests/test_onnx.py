"""ONNX export: every zoo backbone matches PyTorch under onnxruntime on real images, preprocessed as the file's
metadata says; the command line; a clear error without the extra."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import timm
import timm.data
import torch
import yaml
from PIL import Image

from autotransfer import ConfigError, load_model, load_zoo
from autotransfer.cli.main import main
from autotransfer.deploy.model import BackboneSpec, TransferModel
from autotransfer.deploy.onnx_export import INPUT_NAME, OUTPUT_NAME, read_metadata
from autotransfer.models.network import BackboneWithHead
from autotransfer.models.zoo import create_backbone
from tests.conftest import HYMENOPTERA, ZOO_FILE, needs_shared

ort = pytest.importorskip("onnxruntime", reason="the onnx extra (onnxruntime) is not installed")


def _model(name: str, zoo_file: Path, freeze: float = 1.0, head_width: int = 0) -> TransferModel:
    zoo = load_zoo(zoo_file)
    torch.manual_seed(0)
    backbone, config = create_backbone(name, zoo)
    net = BackboneWithHead.build(backbone, freeze, head_width, 2)
    torch.nn.init.normal_(net.head.weight if head_width == 0 else net.head.fc2.weight, std=0.05)
    return TransferModel(net, classes=["ants", "bees"], data_config=config, backbone=BackboneSpec.resolve(name, zoo),
                         strategy={"backbone": name, "freeze_depth": freeze, "head_width": head_width,
                                   "learning_rate": 1e-3})


def _images() -> list[Path]:
    if HYMENOPTERA.is_dir():
        val = HYMENOPTERA / "val"
        return sorted((val / "ants").iterdir())[:3] + sorted((val / "bees").iterdir())[:3]
    return []


def _onnx_probabilities(path: Path, images: list[Image.Image]) -> np.ndarray:
    meta = read_metadata(path)
    p = meta["preprocessing"]
    transform = timm.data.create_transform(input_size=tuple(p["input_size"]), interpolation=p["interpolation"],
                                           mean=tuple(p["mean"]), std=tuple(p["std"]), crop_pct=p.get("crop_pct"),
                                           crop_mode=p.get("crop_mode"))
    batch = torch.stack([transform(img) for img in images]).numpy().astype(np.float32)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == [INPUT_NAME] and session.get_outputs()[0].name == OUTPUT_NAME
    return np.asarray(session.run([OUTPUT_NAME], {INPUT_NAME: batch})[0])


def _check(model: TransferModel, path: Path, images: list[Image.Image]) -> None:
    written = model.export_onnx(path)
    meta = read_metadata(written)
    assert meta["classes"] == ["ants", "bees"] and meta["preprocessing"]["input_size"] == list(model.input_size)
    onnx_p = _onnx_probabilities(written, images)
    torch_p = model.predict_proba(images)
    assert onnx_p.shape == (len(images), 2)
    assert float(np.max(np.abs(onnx_p - torch_p))) <= 1e-4


def test_a_test_resnet_model_exports_with_a_dynamic_batch(tmp_path: Path, test_model_zoo: Path) -> None:
    model = _model("test_resnet.local", test_model_zoo, freeze=0.5, head_width=16)
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)) for _ in range(5)]
    _check(model, tmp_path / "m.onnx", images)  # a batch of 5: not the export's example batch of 2
    _check(model, tmp_path / "one.onnx", images[:1])


@needs_shared
@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(yaml.safe_load(ZOO_FILE.read_text()) if ZOO_FILE.is_file() else []))
def test_every_zoo_backbone_matches_pytorch_under_onnxruntime(tmp_path: Path, name: str) -> None:
    images = [Image.open(p).convert("RGB") for p in _images()]
    _check(_model(name, ZOO_FILE), tmp_path / f"{name}.onnx", images)


def test_the_export_command_and_a_missing_extra(tmp_path: Path, test_model_zoo: Path,
                                                monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    saved = _model("test_resnet.local", test_model_zoo).save(tmp_path / "model")
    assert main(["export", str(saved), "--onnx", str(tmp_path / "out" / "model.onnx")]) == 0
    assert "input 'images' (B, 3, 32, 32)" in capsys.readouterr().out
    assert read_metadata(tmp_path / "out" / "model.onnx")["classes"] == ["ants", "bees"]
    monkeypatch.setitem(sys.modules, "onnx", None)  # as if the extra were not installed
    with pytest.raises(ConfigError, match=r"pip install 'autotransfer\[onnx\]'"):
        load_model(saved).export_onnx(tmp_path / "x.onnx")
    assert main(["export", str(saved), "--onnx", str(tmp_path / "y.onnx")]) == 1
    assert "autotransfer: error: ONNX export needs the onnx extra" in capsys.readouterr().err
