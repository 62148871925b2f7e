"""The training loss of a trial, built in one place: cross-entropy, mixing, and the L2-SP penalty.

* Hard labels: ``torch.nn.CrossEntropyLoss(weight, label_smoothing)`` (plain ``F.cross_entropy``
  when neither is set, as before these options existed). timm's loss factory refuses class weights
  for cross-entropy, so the weights go to PyTorch's loss directly.
* Mixed batches (mixup, CutMix): ``timm.data.Mixup`` turns labels into soft targets (its own
  ``label_smoothing`` is always passed: timm's default is 0.1) and ``timm.loss.SoftTargetCrossEntropy``
  scores them.
* L2-SP (Li, Grandvalet and Davoine, "Explicit Inductive Bias for Transfer Learning with
  Convolutional Networks", ICML 2018): ``alpha * ||w - w0||^2`` over the trainable backbone weights,
  norms and biases excluded. No library implements it for timm models, so it is written here.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import timm.data
import timm.loss
import torch
import torch.nn.functional as F
from torch import nn

from autotransfer.space.dimensions import Recipe

__all__ = ["L2SP", "LossFn", "balanced_class_weight", "make_mixup", "mix_batch", "training_loss"]

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""Logits ``(B, K)`` and targets (class indices ``(B,)`` or soft targets ``(B, K)``) to a scalar."""


class L2SP:
    """The L2-SP penalty ``alpha * sum ||w - w0||^2`` towards a backbone's starting weights.

    Args:
        backbone: The backbone; ``w0`` is a copy of its trainable weights (``ndim > 1``: norms and
            biases are excluded, as in the paper) taken now, before the first step.
        alpha: Strength (>= 0).

    Calling it gives the penalty, a scalar tensor whose gradient is ``2 * alpha * (w - w0)``.
    """

    def __init__(self, backbone: nn.Module, alpha: float) -> None:
        self.alpha = alpha
        self.weights = [p for p in backbone.parameters() if p.requires_grad and p.ndim > 1]
        self.start = [p.detach().clone() for p in self.weights]

    def __call__(self) -> torch.Tensor:
        if not self.weights:
            return torch.zeros(())
        total = sum(((w - w0) ** 2).sum() for w, w0 in zip(self.weights, self.start, strict=True))
        return self.alpha * torch.as_tensor(total)


def make_mixup(recipe: Recipe, n_classes: int) -> timm.data.Mixup | None:
    """``timm.data.Mixup`` for the recipe's mixup and CutMix strengths (None when it mixes nothing).

    Every batch is mixed (``prob=1``), one pair per batch (``mode="batch"``), switching between
    mixup and CutMix with probability 0.5 when both are set (timm's defaults); targets are smoothed
    with the recipe's ``label_smoothing``. Apply it with :func:`mix_batch`.
    """
    if not recipe.mixes:
        return None
    return timm.data.Mixup(mixup_alpha=recipe.mixup, cutmix_alpha=recipe.cutmix, label_smoothing=recipe.label_smoothing,
                           num_classes=n_classes)


def training_loss(recipe: Recipe, module: nn.Module, *, mixed: bool, backbone: nn.Module | None = None,
                  class_weight: torch.Tensor | None = None) -> LossFn:
    """The loss a training step minimises.

    Args:
        recipe: Label smoothing, L2-SP strength, and the plugin hooks ``loss`` and ``extra_loss``.
        module: What trains (passed to the ``extra_loss`` terms).
        mixed: Batches carry soft targets ``(B, K)`` from :func:`make_mixup`.
        backbone: The backbone whose trainable weights L2-SP anchors (taken now: call before training).
        class_weight: Per-class weights ``(K,)`` of the hard-label cross-entropy.

    Returns:
        The :data:`LossFn`.
    """
    base: LossFn
    if recipe.loss is not None:
        base = recipe.loss()
    elif mixed and class_weight is not None:  # soft targets are already smoothed by timm.data.Mixup
        base = nn.CrossEntropyLoss(weight=class_weight)  # PyTorch's cross-entropy takes (B, K) probabilities too
    elif mixed:
        base = timm.loss.SoftTargetCrossEntropy()
    elif recipe.label_smoothing > 0 or class_weight is not None:
        base = nn.CrossEntropyLoss(weight=class_weight, label_smoothing=recipe.label_smoothing)
    else:
        base = F.cross_entropy
    terms: list[Callable[[], torch.Tensor]] = []
    if recipe.l2_sp > 0 and backbone is not None:
        terms.append(L2SP(backbone, recipe.l2_sp))
    terms.extend(_bound(term, module) for term in recipe.extra_loss)
    if not terms:
        return base

    def loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        value = base(logits, targets)
        return value + sum((term().to(value.device) for term in terms), torch.zeros((), device=value.device))

    return loss


def balanced_class_weight(labels: list[int], n_classes: int) -> torch.Tensor:
    """Inverse-frequency class weights ``(K,)`` of a training split (scikit-learn's
    ``compute_class_weight("balanced")``: ``n / (k * count)`` over the ``k`` classes present); a class
    absent from the split gets 1."""
    from sklearn.utils.class_weight import compute_class_weight

    present = np.unique(labels)
    weights = np.ones(n_classes)
    weights[present] = compute_class_weight("balanced", classes=present, y=np.asarray(labels))
    return torch.tensor(weights, dtype=torch.float32)


def _bound(term: Callable[[nn.Module], torch.Tensor], module: nn.Module) -> Callable[[], torch.Tensor]:
    return lambda: term(module)


def mix_batch(mixup: timm.data.Mixup, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mix a training batch: images ``(B, 3, H, W)`` and labels ``(B,)`` to images and soft targets ``(B', K)``.

    ``timm.data.Mixup`` needs an even batch (245 hymenoptera images at batch 32 leave 21, and the
    out-of-memory retry halves the batch), so an odd batch loses its last image (B' = B - 1); a
    batch of one is not mixed, only its target smoothed.
    """
    if len(y) == 1:
        return x, timm.data.mixup.mixup_target(y, mixup.num_classes, 1.0, mixup.label_smoothing)
    if len(y) % 2:
        x, y = x[:-1], y[:-1]
    return mixup(x, y)
