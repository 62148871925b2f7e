"""LP-FT's first phase: fit the head on cached pooled features before the backbone trains.

Kumar et al., "Fine-Tuning can Distort Pretrained Features and Underperform Out-of-Distribution"
(ICLR 2022): fine-tuning from a random head lets the head's early gradients distort the pretrained
features; fitting the head first on the frozen features (they use logistic regression) and then
fine-tuning from it is about 1 point better in distribution and 10 points out of distribution.

The head is fitted on the train split's pooled features (the same cached features a linear-probe
trial trains on, :func:`~autotransfer.training.input_plan.pooled_features`); val is not used, it stays
for selection. A linear head is fitted as Kumar et al. do: L2-regularised logistic regression
(scikit-learn's ``LogisticRegressionCV``, the strength chosen by the log loss of 3-fold
cross-validation on train),
since an unregularised fit to convergence on separable features (245 images, 1,280 features)
drives the train loss to 0 and leaves an overconfident head that gives fine-tuning no gradient.
An MLP head, where logistic regression does not apply, gets a fixed number of full-batch AdamW
steps (early stopping as the regulariser). Either takes well under a second on a CPU (measured:
0.2 s on 245 x 1,280 features).
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegressionCV
from torch import nn

from autotransfer import interrupt
from autotransfer.data.dataset import ImageDataset
from autotransfer.models.network import BackboneWithHead
from autotransfer.training.input_plan import pooled_features
from autotransfer.training.runtime import Runtime

__all__ = ["C_GRID", "HEAD_FIT_LR", "HEAD_FIT_STEPS", "fit_head", "fit_head_on_features", "logistic_head"]

HEAD_FIT_STEPS = 100
"""Full-batch AdamW steps of an MLP head's fit (on hymenoptera's mobilenetv2_100 features the train
loss falls from 0.80 to 0.01 within them; more steps only raised the val loss)."""

HEAD_FIT_LR = 1e-3
"""AdamW rate of an MLP head's fit."""

C_GRID = tuple(float(c) for c in np.logspace(-3, 1, 5))
"""Inverse L2 strengths ``C`` that ``LogisticRegressionCV`` chooses from for a linear head."""


def logistic_head(head: nn.Linear, features: torch.Tensor, labels: torch.Tensor, *, seed: int = 0) -> float:
    """Set a linear head to the L2-regularised logistic regression of ``labels`` on ``features``.

    Args:
        head: ``nn.Linear(D, K)``; its weight and bias are overwritten.
        features: ``(N, D)`` pooled train features.
        labels: ``(N,)`` class indices; every one of the ``K`` classes should occur (a class absent
            from train gets the lowest bias of the others).
        seed: Seeds the cross-validation folds' solver.

    Returns:
        The chosen ``C`` (scikit-learn's inverse L2 strength).
    """
    x, y = features.detach().cpu().double().numpy(), labels.cpu().numpy()
    present = np.unique(y)
    folds = max(2, min(3, int(np.bincount(y)[present].min())))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        warnings.simplefilter("ignore", FutureWarning)  # scikit-learn 1.8+ announces new defaults; ours are set
        model = LogisticRegressionCV(Cs=list(C_GRID), cv=folds, max_iter=500, scoring="neg_log_loss",
                                     random_state=seed).fit(x, y)
    coef, intercept = model.coef_, model.intercept_
    if len(present) == 2:  # scikit-learn's binary model has one row: the logit of class present[1]
        coef, intercept = np.vstack([-coef / 2, coef / 2]), np.array([-intercept[0] / 2, intercept[0] / 2])
    weight = torch.zeros_like(head.weight)
    bias = torch.full_like(head.bias, float(intercept.min()) - 10.0 if len(intercept) else 0.0)
    index = torch.as_tensor(present, dtype=torch.long, device=weight.device)
    with torch.no_grad():
        weight[index] = torch.as_tensor(coef, dtype=weight.dtype, device=weight.device)
        bias[index] = torch.as_tensor(intercept, dtype=bias.dtype, device=bias.device)
        head.weight.copy_(weight)
        head.bias.copy_(bias)
    return float(model.C_[0])


def fit_head_on_features(head: torch.nn.Module, features: torch.Tensor, labels: torch.Tensor, *,
                         weight_decay: float, steps: int = HEAD_FIT_STEPS, learning_rate: float = HEAD_FIT_LR,
                         check: Callable[[], None] = interrupt.check) -> list[float]:
    """Fit ``head`` in place on features by full-batch AdamW with cross-entropy.

    Args:
        head: Maps ``(N, D)`` features to logits ``(N, K)``.
        features: Pooled train features ``(N, D)``, on the head's device.
        labels: Class indices ``(N,)``, on the same device.
        weight_decay: AdamW decoupled weight decay (the strategy's).
        steps: Full-batch steps.
        learning_rate: AdamW rate (constant).
        check: Called every 50 steps (raises to stop).

    Returns:
        The train loss before each step (``steps`` values).
    """
    optimizer = torch.optim.AdamW(head.parameters(), lr=learning_rate, weight_decay=weight_decay)
    head.train()
    losses: list[float] = []
    for step in range(steps):
        if step % 50 == 0:
            check()
        optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(head(features), labels)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    return losses


def fit_head(net: BackboneWithHead, dataset: ImageDataset, data_config: dict[str, Any], *, weight_decay: float,
             runtime: Runtime, device: torch.device, check: Callable[[], None] = interrupt.check) -> dict[str, Any]:
    """LP-FT's linear probe: fit ``net.head`` on the pooled features of the train split.

    A linear head gets :func:`logistic_head`, an MLP head :func:`fit_head_on_features`.

    Args:
        net: The transfer network on ``device``, whole (not split at a frozen prefix).
        dataset: The split dataset (only ``train`` is used: val stays for selection).
        data_config: The backbone's timm data config (its eval preprocessing decides the features).
        weight_decay: The strategy's weight decay.
        runtime: Caches (the features are the linear probe's, cached on the same key).
        device: Where the network is.
        check: Called before every batch (raises to stop).

    Returns:
        ``{"seconds", "loss_before", "loss_after"}`` (train cross-entropy on the features before
        and after), and ``"C"`` for a linear head.

    Raises:
        BadImageError: An image no longer decodes. Interrupted: a stop was asked for.
    """
    tick = time.perf_counter()
    features = pooled_features(net, dataset, data_config, runtime=runtime, device=device, check=check,
                               splits=("train",))["train"].to(device)
    labels = torch.tensor([y for _, y in dataset.splits["train"]], dtype=torch.long, device=device)
    with torch.no_grad():
        before = float(F.cross_entropy(net.head(features), labels))
    record: dict[str, Any] = {}
    if isinstance(net.head, nn.Linear):
        record["C"] = logistic_head(net.head, features, labels)
    else:
        with torch.enable_grad():
            fit_head_on_features(net.head, features, labels, weight_decay=weight_decay, check=check)
    with torch.no_grad():
        after = float(F.cross_entropy(net.head(features), labels))
    return {"seconds": time.perf_counter() - tick, "loss_before": before, "loss_after": after, **record}
