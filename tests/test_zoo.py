from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from autotransfer import ConfigError, WeightsNotFoundError, create_backbone, load_search_space, load_zoo
from autotransfer.models.zoo import check_backbones, feature_dim
from tests.conftest import ZOO_FILE, needs_shared


@needs_shared
def test_real_zoo_loads_every_entry_with_its_preprocessing() -> None:
    zoo = load_zoo(ZOO_FILE)
    assert len(zoo.entries) == 4
    for name in zoo.entries:
        model, cfg = create_backbone(name, zoo)
        assert cfg["input_size"] == (3, 224, 224)
        assert tuple(cfg["mean"]) == (0.5, 0.5, 0.5) and tuple(cfg["std"]) == (0.5, 0.5, 0.5)
        model.eval()
        with torch.no_grad():
            feats = model.forward_head(model.forward_features(torch.zeros(2, 3, 224, 224)), pre_logits=True)
        assert feats.shape == (2, feature_dim(model))


@needs_shared
def test_real_weights_are_loaded_not_random() -> None:
    zoo = load_zoo(ZOO_FILE)
    from safetensors.torch import load_file

    entry = zoo.entries["mobilenetv2_035.keras_in1k"]
    model, _ = create_backbone(entry.name, zoo)
    stored = load_file(str(entry.file))
    assert torch.equal(model.state_dict()["conv_stem.weight"], stored["conv_stem.weight"])


@needs_shared
def test_env_variable_names_the_zoo(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUTOTRANSFER_ZOO", str(ZOO_FILE))
    zoo = load_zoo()
    assert zoo.path == ZOO_FILE.resolve()
    check_backbones(load_search_space("default").backbones, zoo)


def test_zoo_file_of_tiny_model(test_model_zoo: Path) -> None:
    zoo = load_zoo(test_model_zoo)
    model, cfg = create_backbone("test_resnet.local", zoo)
    assert cfg["input_size"] == (3, 32, 32) and cfg["crop_pct"] == 1.0
    assert model.num_classes == 0


def test_missing_weights_name_what_was_tried(test_model_zoo: Path) -> None:
    zoo = load_zoo(test_model_zoo)
    with pytest.raises(WeightsNotFoundError) as info:
        check_backbones(["no_such_net.v1"], zoo)
    message = str(info.value)
    assert "no_such_net.v1" in message and str(test_model_zoo.resolve()) in message and "test_resnet.local" in message
    with pytest.raises(WeightsNotFoundError, match="Tried: the local zoo"):
        # a real timm architecture whose weights timm cannot fetch offline (or by this tag)
        create_backbone("test_resnet.no_such_tag", zoo)


def test_bad_zoo_files(tmp_path: Path, test_model_zoo: Path) -> None:
    with pytest.raises(ConfigError, match="existing zoo YAML file"):
        load_zoo(tmp_path / "missing.yaml")
    raw = yaml.safe_load(test_model_zoo.read_text())
    raw["test_resnet.local"]["file"] = "gone.safetensors"
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match=r"gone\.safetensors"):
        load_zoo(bad)
    raw["test_resnet.local"] = {"architecture": "test_resnet", "file": "test_resnet.safetensors", "colour": 1}
    bad.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match="Unknown key 'colour'"):
        load_zoo(bad)
    assert not load_zoo().entries  # no argument and no variable: empty zoo
