from __future__ import annotations

import itertools

import pytest
import timm
import torch
from torch import nn
from torchvision.ops.misc import FrozenBatchNorm2d

from autotransfer import BackboneWithHead as TransferNet
from autotransfer import ConfigError
from autotransfer.models.network import block_groups, count_parameters, freeze_backbone, make_head

DEPTHS = [0.0, 0.25, 0.5, 0.75, 1.0]


@pytest.mark.parametrize("arch", ["test_resnet", "test_vit"])
def test_trainable_fraction_grows_as_freeze_depth_falls(arch: str) -> None:
    trainable = []
    for depth in DEPTHS:
        model = timm.create_model(arch, num_classes=0)
        freeze_backbone(model, depth)
        n_train, n_total = count_parameters(model)
        trainable.append(n_train / n_total)
    assert trainable[0] == 1.0  # full fine-tuning
    assert trainable[-1] == 0.0  # linear probe: the whole backbone is frozen
    assert all(a > b for a, b in itertools.pairwise(trainable)), trainable


def test_batchnorm_is_frozen_in_frozen_groups_only() -> None:
    model = timm.create_model("test_resnet", num_classes=0)
    groups = block_groups(model)
    report = freeze_backbone(model, 0.5)
    assert 0 < report.n_frozen < report.n_groups
    for name, module in model.named_modules():
        param_names = [f"{name}.weight", f"{name}.bias"]
        if isinstance(module, FrozenBatchNorm2d):
            assert groups[param_names[0]] < report.n_frozen
            before = module.running_mean.clone()
            model.train()
            model(torch.randn(2, 3, 32, 32))
            assert torch.equal(before, module.running_mean)  # statistics do not move in train mode
        elif isinstance(module, nn.BatchNorm2d):
            assert groups[param_names[0]] >= report.n_frozen
            assert module.weight.requires_grad


def test_vit_tokens_follow_their_group() -> None:
    model = timm.create_model("test_vit", num_classes=0)
    groups = block_groups(model)
    root = [n for n in groups if "." not in n]
    assert root, "test_vit keeps cls_token/pos_embed on the root module"
    freeze_backbone(model, 0.5)
    params = dict(model.named_parameters())
    for name in root:
        assert params[name].requires_grad is False  # stem group (0) is frozen at depth 0.5
    assert any(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize("arch", ["test_resnet", "test_vit", "test_efficientnet"])
@pytest.mark.parametrize("width", [0, 16])
def test_head_on_pre_logits(arch: str, width: int) -> None:
    backbone = timm.create_model(arch, num_classes=0)
    net = TransferNet.build(backbone, 1.0, width, n_classes=3)
    size = backbone.pretrained_cfg["input_size"][1:]
    out = net(torch.randn(2, 3, *size))
    assert out.shape == (2, 3)
    trainable, _ = count_parameters(net)
    assert trainable == sum(p.numel() for p in net.head.parameters())


def test_bad_freeze_and_head_values() -> None:
    model = timm.create_model("test_resnet", num_classes=0)
    with pytest.raises(ConfigError, match="'freeze_depth' must be a fraction"):
        freeze_backbone(model, 1.5)
    with pytest.raises(ConfigError, match="'head_width'"):
        make_head(8, -3, 2)
    with pytest.raises(ConfigError, match="'n_classes' must be at least 2"):
        make_head(8, 0, 1)
