"""Freezing and heads: turn a pretrained backbone into a transfer model.

Freeze depth is a fraction of block groups: the backbone's parameters are grouped into timm's fine block
groups (``model.group_matcher(coarse=False)`` through ``timm.models.group_parameters``, or
``timm.optim.auto_group_layers`` for architectures without a matcher), ordered from the stem to
the last block; ``freeze_depth`` is the fraction of those groups frozen, counted from the stem.
Frozen modules get ``requires_grad=False`` and their BatchNorm layers are swapped for
``FrozenBatchNorm2d`` by ``timm.utils.freeze``. The new head is never frozen.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import timm.models
import timm.optim
import timm.utils
import torch
from timm.layers import FrozenBatchNormAct2d, Mlp
from torch import nn
from torchvision.ops.misc import FrozenBatchNorm2d

from autotransfer.errors import ConfigError, describe
from autotransfer.models.zoo import feature_dim

__all__ = [
    "BackboneWithHead",
    "FreezeReport",
    "block_groups",
    "count_parameters",
    "freeze_backbone",
    "leading_frozen",
    "make_head",
    "module_chain",
]

Slot = tuple[nn.Module, str, nn.Module]  # (parent, attribute name, module)


def block_groups(model: nn.Module) -> dict[str, int]:
    """Map each backbone parameter name to its timm block-group index (0 = stem).

    Args:
        model: A timm model.

    Returns:
        ``{parameter name: group index}``; indices run from 0 to ``n_groups - 1``.
    """
    matcher = getattr(model, "group_matcher", None)
    if matcher is not None:
        try:
            return dict(timm.models.group_parameters(model, matcher(coarse=False), reverse=True))
        except NotImplementedError:
            pass
    return dict(timm.optim.auto_group_layers(model))


@dataclass(frozen=True)
class FreezeReport:
    """What :func:`freeze_backbone` froze.

    Attributes:
        n_groups: Number of block groups in the backbone.
        n_frozen: Number of groups frozen (from the stem).
        frozen_modules: Names of the modules frozen through ``timm.utils.freeze``.
        groups: Block-group index of every backbone parameter, by name (as :func:`block_groups`
            gave it before freezing, which moves norm weights into buffers).
    """

    n_groups: int
    n_frozen: int
    frozen_modules: tuple[str, ...]
    groups: Mapping[str, int] = field(default_factory=dict)


def freeze_backbone(model: nn.Module, freeze_depth: float) -> FreezeReport:
    """Freeze the first ``round(freeze_depth * n_groups)`` block groups of a timm backbone in place.

    Args:
        model: A timm backbone (built with ``num_classes=0``).
        freeze_depth: Fraction in [0, 1]; 0.0 trains everything (full fine-tuning), 1.0 freezes
            every group (linear probe).

    Returns:
        A :class:`FreezeReport`.

    Raises:
        ConfigError: ``freeze_depth`` is outside [0, 1].
    """
    if not 0.0 <= freeze_depth <= 1.0 or math.isnan(freeze_depth):
        raise ConfigError(describe("freeze_depth", "a fraction in [0, 1]", freeze_depth))
    groups = block_groups(model)
    n_groups = max(groups.values()) + 1 if groups else 0
    n_frozen = round(freeze_depth * n_groups)
    frozen = [name for name, gid in groups.items() if gid < n_frozen]
    modules = sorted({name.rsplit(".", 1)[0] for name in frozen if "." in name})
    # Parameters held by the root module itself (ViT cls_token, pos_embed) follow their group;
    # timm.utils.freeze would freeze the whole root for them, so they are frozen one by one.
    root_params = dict(model.named_parameters(recurse=False))
    for name in frozen:
        if "." not in name:
            root_params[name].requires_grad_(False)
    if modules:
        timm.utils.freeze(model, submodules=modules, include_bn_running_stats=True)
    return FreezeReport(n_groups=n_groups, n_frozen=n_frozen, frozen_modules=tuple(modules), groups=groups)


def module_chain(module: nn.Module) -> list[Slot]:
    """Children of ``module`` in registration order, ``nn.Sequential`` containers flattened.

    For chain-like backbones (ResNet, EfficientNet, MobileNet) this is the order ``forward_features``
    runs them in; :mod:`autotransfer.models.frozen_prefix` checks that before relying on it.
    """
    slots: list[Slot] = []
    for name, child in module.named_children():
        if isinstance(child, nn.Sequential):
            slots.extend(module_chain(child))
        else:
            slots.append((module, name, child))
    return slots


def leading_frozen(chain: list[Slot]) -> list[Slot]:
    """The leading run of ``chain`` whose modules have no trainable parameter."""
    slots: list[Slot] = []
    for slot in chain:
        if any(p.requires_grad for p in slot[2].parameters()):
            break
        slots.append(slot)
    return slots


def make_head(in_features: int, head_width: int, n_classes: int) -> nn.Module:
    """Build a classification head on pre-logits features.

    Args:
        in_features: Feature width (``feature_dim(backbone)``).
        head_width: 0 for a linear head; else the hidden width of a one-hidden-layer MLP
            (``timm.layers.Mlp`` with ReLU).
        n_classes: Number of classes.

    Returns:
        A module mapping ``(B, in_features)`` to logits ``(B, n_classes)``.

    Raises:
        ConfigError: ``head_width`` is negative or ``n_classes`` below 2.
    """
    if head_width < 0:
        raise ConfigError(describe("head_width", "0 (linear head) or a positive MLP width", head_width))
    if n_classes < 2:
        raise ConfigError(describe("n_classes", "at least 2", n_classes))
    if head_width == 0:
        return nn.Linear(in_features, n_classes)
    return Mlp(in_features, hidden_features=head_width, out_features=n_classes, act_layer=nn.ReLU)


class BackboneWithHead(nn.Module):
    """A pretrained backbone with a new head on its pre-logits features.

    Args:
        backbone: A timm model built with ``num_classes=0``.
        head: Maps ``(B, feature_dim(backbone))`` to ``(B, n_classes)``.
        freeze_report: What :func:`freeze_backbone` froze, when built by :meth:`build`.

    Shapes:
        input ``(B, 3, H, W)`` float, preprocessed with the backbone's data config;
        output ``(B, n_classes)`` logits.
    """

    def __init__(self, backbone: nn.Module, head: nn.Module, freeze_report: FreezeReport | None = None) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.freeze_report = freeze_report

    def train(self, mode: bool = True) -> BackboneWithHead:
        """Set training mode, keeping the frozen part in eval mode.

        Frozen modules (every parameter frozen) and the parameter-free modules of the leading
        frozen chain (activations, dropout between frozen blocks) always run in eval mode, so a
        frozen prefix computes the same function in training as when its output is cached.
        """
        super().train(mode)
        if mode:
            for _, _, module in leading_frozen(module_chain(self.backbone)):
                module.eval()
            for module in self.backbone.modules():
                params = list(module.parameters())
                if params and not any(p.requires_grad for p in params):
                    module.eval()
        return self

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Pre-logits features, shape ``(B, feature_dim)``."""
        bb: Any = self.backbone  # a timm model: forward_features / forward_head
        return bb.forward_head(bb.forward_features(x), pre_logits=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of shape ``(B, n_classes)`` for images of shape ``(B, 3, H, W)``."""
        return self.head(self.features(x))

    @classmethod
    def build(cls, backbone: nn.Module, freeze_depth: float, head_width: int, n_classes: int) -> BackboneWithHead:
        """Freeze ``backbone`` to ``freeze_depth`` and put a new head on it.

        Args:
            backbone: A timm model built with ``num_classes=0``; modified in place.
            freeze_depth: Fraction of block groups frozen, in [0, 1].
            head_width: 0 for a linear head, else MLP hidden width.
            n_classes: Number of classes.
        """
        report = freeze_backbone(backbone, freeze_depth)
        return cls(backbone, make_head(feature_dim(backbone), head_width, n_classes), report)


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """Return ``(trainable, total)`` parameter counts of ``model``.

    The total includes the affine weights that ``timm.utils.freeze`` moved into buffers of
    ``FrozenBatchNorm2d`` layers, so it does not depend on the freeze depth.
    """
    total = sum(p.numel() for p in model.parameters())
    for module in model.modules():
        if isinstance(module, (FrozenBatchNorm2d, FrozenBatchNormAct2d)):
            frozen: Any = module  # weight and bias are buffers here
            total += frozen.weight.numel() + frozen.bias.numel()
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, total
