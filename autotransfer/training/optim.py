"""The optimizer and the learning-rate schedule of a trial: AdamW, layer-wise decay, L2-SP, warm-up.

AdamW comes from ``timm.optim.create_optimizer_v2`` over the parameter groups of
``timm.optim.param_groups_weight_decay`` (no decay on biases and norms). Layer-wise learning-rate
decay is a per-group ``lr_scale``, which timm's schedulers multiply into each group's rate.
``create_optimizer_v2(net, layer_decay=...)`` cannot build those groups here: the transfer network
has no ``group_matcher``, so timm puts every parameter into one layer. They are built instead from
the block groups that ``freeze_depth`` counts (:func:`autotransfer.models.network.block_groups`).
"""

from __future__ import annotations

from typing import Any

import timm.optim
import timm.scheduler
import torch
from torch import nn

from autotransfer.models.network import BackboneWithHead, block_groups
from autotransfer.space.dimensions import Recipe

__all__ = ["backbone_names", "layer_scales", "make_optimizer", "make_scheduler"]


def backbone_names(net: nn.Module) -> dict[int, str]:
    """``id(parameter)`` to its name inside ``net.backbone``, for every backbone parameter ({} without one)."""
    backbone = getattr(net, "backbone", None)
    if not isinstance(backbone, nn.Module):
        return {}
    return {id(p): name for name, p in backbone.named_parameters()}


def layer_scales(net: BackboneWithHead, decay: float) -> dict[str, float]:
    """The learning-rate factor of every backbone parameter under layer-wise decay ``decay``.

    Block group ``i`` of ``n`` (0 = stem) gets ``decay ** (n - i)``, so the last block group trains
    at ``decay`` times the head's rate (BEiT, Bao et al., ICLR 2022, section 2.5 and appendix;
    timm's ``param_groups_layer_decay`` counts the same way).

    Args:
        net: The transfer network; its freeze report holds the groups counted before freezing.
        decay: The factor in (0, 1].

    Returns:
        ``{backbone parameter name: factor}``.
    """
    report = net.freeze_report
    groups = dict(report.groups) if report is not None and report.groups else block_groups(net.backbone)
    n_groups = max(groups.values()) + 1 if groups else 0
    return {name: decay ** (n_groups - gid) for name, gid in groups.items()}


def make_optimizer(module: nn.Module, learning_rate: float, recipe: Recipe,
                   net: BackboneWithHead | None = None) -> torch.optim.Optimizer:
    """AdamW over ``module``'s trainable parameters.

    Args:
        module: What trains: the whole network, its trainable rest, or the head alone.
        learning_rate: The head's peak rate (the scheduler's base value).
        recipe: Weight decay, layer-wise decay, L2-SP and the ``param_groups`` rules (applied last).
        net: The network ``module`` belongs to, for the backbone's block groups (default ``module``
            when it is one).

    Returns:
        ``torch.optim.AdamW`` (through timm). Groups carry ``lr_scale`` (layer-wise decay) that only
        a timm scheduler applies, so step one (:func:`make_scheduler` steps it to 0) before training.
    """
    if net is None and isinstance(module, BackboneWithHead):
        net = module
    if not (recipe.param_groups or recipe.l2_sp > 0 or recipe.layer_decay < 1.0):
        return timm.optim.create_optimizer_v2(module, opt="adamw", lr=learning_rate, weight_decay=recipe.weight_decay)
    groups: list[dict[str, Any]] = timm.optim.param_groups_weight_decay(module, recipe.weight_decay)
    names = backbone_names(net) if net is not None else {}
    if names and recipe.l2_sp > 0:
        # L2-SP replaces decay towards zero by its penalty towards w0 (Li et al., ICML 2018)
        groups = _split(groups, lambda p: {"weight_decay": 0.0} if id(p) in names else {})
    if names and recipe.layer_decay < 1.0 and net is not None:
        scales = layer_scales(net, recipe.layer_decay)
        groups = _split(groups, lambda p: {"lr_scale": scales[names[id(p)]]} if id(p) in names else {})
    for rule in recipe.param_groups:
        groups = rule(module, groups)
    return timm.optim.create_optimizer_v2(groups, opt="adamw", lr=learning_rate, weight_decay=0.0)


def _split(groups: list[dict[str, Any]], settings: Any) -> list[dict[str, Any]]:
    """Split each group by the settings ``settings(param)`` gives its parameters (merged into the group)."""
    out: list[dict[str, Any]] = []
    for group in groups:
        by_key: dict[tuple[tuple[str, Any], ...], list[nn.Parameter]] = {}
        for param in group["params"]:
            by_key.setdefault(tuple(sorted(settings(param).items())), []).append(param)
        out.extend({**group, **dict(key), "params": params} for key, params in by_key.items())
    return out


def make_scheduler(optimizer: torch.optim.Optimizer, recipe: Recipe, *, epochs: int, updates_per_epoch: int) -> Any:
    """timm's per-step cosine schedule to 0, with the recipe's linear warm-up, stepped to update 0.

    The warm-up is a fraction of all ``epochs * updates_per_epoch`` steps, not whole epochs, so a
    pruner's first rung (after epoch 1) does not judge a trial still warming up. Stepping to 0
    applies every group's ``lr_scale`` before the first step.
    """
    scheduler, _ = timm.scheduler.create_scheduler_v2(
        optimizer, sched="cosine", num_epochs=epochs, min_lr=0.0, warmup_epochs=recipe.warmup * epochs,  # type: ignore[arg-type]
        warmup_lr=0.0, step_on_epochs=False, updates_per_epoch=updates_per_epoch)
    scheduler.step_update(num_updates=0)
    return scheduler
