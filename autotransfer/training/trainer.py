"""The trainer: fit one strategy on a budget, evaluating on val after every epoch.

Default recipe: AdamW (``timm.optim.create_optimizer_v2``, no weight decay on biases and norms) with a
per-step cosine schedule (``timm.scheduler.create_scheduler_v2``), cross-entropy loss, light
augmentation from ``timm.data.create_transform`` (random resized crop at scale 0.5-1 and a
horizontal flip; no colour jitter, since a budget of a few epochs on small data does not absorb
strong augmentation). Evaluation uses the weights' own eval transform (resize, centre crop). The
strategy's :class:`~autotransfer.space.dimensions.Recipe` changes it: LP-FT's head fit first
(:mod:`autotransfer.training.linear_probe`), layer-wise decay, L2-SP and warm-up
(:mod:`autotransfer.training.optim`), label smoothing, mixup and CutMix (:mod:`autotransfer.training.losses`),
the augmentation, gradient clipping and the input size.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import timm.data
import timm.utils
import torch
import torch.nn.functional as F
from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score
from torch import nn

from autotransfer import interrupt, progress
from autotransfer.data.dataset import ImageDataset
from autotransfer.errors import ConfigError, TrialFailed, TrialTimeout, describe
from autotransfer.models.network import BackboneWithHead
from autotransfer.settings import Budget
from autotransfer.space.dimensions import Recipe
from autotransfer.training.input_plan import TrialInputs, prepare_inputs
from autotransfer.training.linear_probe import fit_head
from autotransfer.training.losses import LossFn, balanced_class_weight, make_mixup, mix_batch, training_loss
from autotransfer.training.optim import make_optimizer, make_scheduler
from autotransfer.training.pipeline import Preprocess, image_loader, split_images
from autotransfer.training.runtime import Runtime

__all__ = ["TrainResult", "classification_metrics", "evaluate_split", "fit", "images_per_second", "predict_labels",
           "resolve_device", "seed_everything"]

EpochCallback = Callable[[int, dict[str, float]], bool]


@dataclass
class TrainResult:
    """What :func:`fit` measured.

    Attributes:
        metrics: Validation metrics after the last epoch run (``accuracy``, ``balanced_accuracy``,
            ``macro_f1``, ``loss``).
        epochs_run: Epochs completed.
        seconds: Wall-clock seconds of training and evaluation.
        stop_reason: ``"completed"`` or ``"pruned at epoch N"``.
        history: Per-epoch validation metrics, one dict per epoch.
        inputs: What it trained on: ``"features"``, ``"prefix"`` or ``"images"``
            (:mod:`autotransfer.training.input_plan`).
        train_loss: Mean training cross-entropy of each epoch run.
        epoch_train_seconds: Seconds in training steps, per epoch run.
        epoch_eval_seconds: Seconds in the validation pass, per epoch validated.
        epoch_predictions: Predicted class index of every val image after each epoch validated,
            in split order.
        head_fit: LP-FT's head fit before training (``seconds``, ``loss_before``, ``loss_after``:
            train cross-entropy on the pooled features); empty without LP-FT.
    """

    metrics: dict[str, float]
    epochs_run: int
    seconds: float
    stop_reason: str
    history: list[dict[str, float]] = field(default_factory=list)
    inputs: str = "images"
    train_loss: list[float] = field(default_factory=list)
    epoch_train_seconds: list[float] = field(default_factory=list)
    epoch_eval_seconds: list[float] = field(default_factory=list)
    epoch_predictions: list[list[int]] = field(default_factory=list)
    head_fit: dict[str, Any] = field(default_factory=dict)

    @property
    def predictions(self) -> list[int]:
        """Predicted class index of every val image after the last epoch, in split order ([] if none)."""
        return self.epoch_predictions[-1] if self.epoch_predictions else []

    @property
    def train_seconds(self) -> float:
        """Seconds in training steps (all epochs)."""
        return sum(self.epoch_train_seconds)

    @property
    def eval_seconds(self) -> float:
        """Seconds in validation passes (all epochs)."""
        return sum(self.epoch_eval_seconds)


def resolve_device(device: str) -> torch.device:
    """Turn ``"auto"``, ``"cpu"`` or ``"cuda"`` (or ``"cuda:N"``) into a ``torch.device``.

    Raises:
        ConfigError: The name is not accepted, or CUDA was asked for and is not available.
    """
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cpu":
        return torch.device("cpu")
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(describe("device", "'auto' or 'cpu' on this machine (CUDA is not available)",
                                       device))
        return torch.device(device)
    raise ConfigError(describe("device", "'auto', 'cpu' or 'cuda'", device))


@torch.inference_mode()
def predict_labels(model: nn.Module, loader: Iterable[tuple[torch.Tensor, torch.Tensor]], device: torch.device, *,
                   check: Callable[[], None] = interrupt.check,
                   runtime: Runtime | None = None) -> tuple[np.ndarray, np.ndarray, float]:
    """Run ``model`` over ``loader`` in eval mode.

    Args:
        model: Maps inputs ``(B, ...)`` (normalised images ``(B, 3, H, W)``, or cached features)
            to logits ``(B, n_classes)``.
        loader: Yields ``(inputs, labels)``.
        device: Where the model lives.
        check: Called before every batch; raises to stop (default: stop on SIGINT/SIGTERM, see
            :mod:`autotransfer.interrupt`).
        runtime: Memory format and autocast (default :class:`~autotransfer.training.pipeline.Runtime()`).

    Returns:
        ``(y_true, y_pred, loss)``: true and predicted class indices, arrays of shape ``(N,)`` in
        loader order, and the mean cross-entropy.
    """
    runtime = runtime or Runtime()
    model.eval()
    preds: list[np.ndarray] = []
    labels: list[np.ndarray] = []
    loss_sum = 0.0
    for x, y in loader:
        check()
        y = y.to(device, non_blocking=True)
        logits = _forward(model, x, device, runtime)
        loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
        preds.append(logits.argmax(dim=1).cpu().numpy())
        labels.append(y.cpu().numpy())
    y_true, y_pred = np.concatenate(labels), np.concatenate(preds)
    return y_true, y_pred, loss_sum / max(1, len(y_true))


def _forward(model: nn.Module, x: torch.Tensor, device: torch.device, runtime: Runtime) -> torch.Tensor:
    """Float32 logits of ``model`` on ``x``, with the runtime's memory format and autocast."""
    return runtime.run(model, x, device).float()


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray, loss: float) -> dict[str, float]:
    """Accuracy, balanced accuracy and macro-F1 (scikit-learn) of class indices ``(N,)``, with the mean ``loss``."""
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "balanced_accuracy": float(balanced_accuracy_score(y_true, y_pred)),
        "macro_f1": float(f1_score(y_true, y_pred, average="macro", zero_division=0)),
        "loss": loss,
    }


def evaluate_split(model: nn.Module, dataset: ImageDataset, data_config: dict[str, Any], split: str, *,
                   batch_size: int, device: torch.device,
                   runtime: Runtime | None = None) -> tuple[dict[str, float], list[int]]:
    """Metrics and predictions of a trained model on one split, with the weights' eval transform.

    Args:
        model: A trained :class:`~autotransfer.models.network.BackboneWithHead`.
        dataset: The split dataset.
        data_config: The backbone's timm data config.
        split: ``"train"``, ``"val"`` or ``"test"``.
        batch_size: Images per forward pass.
        device: Where the model lives.
        runtime: Cache, memory format and autocast (default :class:`~autotransfer.training.pipeline.Runtime()`).

    Returns:
        ``(metrics, predictions)``: the metrics of :func:`evaluate` and the predicted class index of
        every image of the split, in split order.

    Raises:
        ConfigError: The split is unknown or empty.
    """
    if not dataset.splits.get(split):
        raise ConfigError(describe("split", f"a non-empty split of {sorted(dataset.splits)}", split))
    runtime = runtime or Runtime()
    preprocess = Preprocess.from_config(data_config)
    images = split_images(dataset, split, preprocess, runtime, augment=False)
    loader = image_loader(images, preprocess, batch_size, shuffle=False, seed=0, device=device)
    y_true, y_pred, loss = predict_labels(model, loader, device, runtime=runtime)
    return classification_metrics(y_true, y_pred, loss), [int(p) for p in y_pred]


@torch.inference_mode()
def images_per_second(model: nn.Module, dataset: ImageDataset, data_config: dict[str, Any], *, device: torch.device,
                      split: str = "val", n_images: int = 64, runtime: Runtime | None = None) -> float:
    """Inference throughput of the whole network on preprocessed images of one split, on ``device``.

    This is what serving costs, whatever the trial trained on (a linear probe trained on cached
    features serves at its backbone's speed): one warm-up pass, then the best of three timed passes
    over a batch of up to ``n_images`` eval-preprocessed images.

    Args:
        model: Maps ``(B, 3, H, W)`` to logits.
        dataset: The split dataset.
        data_config: The backbone's timm data config.
        device: Where the model lives.
        split: The split whose first images are used.
        n_images: Batch size of the timed passes.
        runtime: Memory format and autocast (default :class:`~autotransfer.training.runtime.Runtime()`).

    Returns:
        Images per second (0.0 when the split is empty).
    """
    runtime = runtime or Runtime()
    items = dataset.splits.get(split, [])[:n_images]
    if not items:
        return 0.0
    preprocess = Preprocess.from_config(data_config)
    subset = replace(dataset, splits={split: items})
    loader = image_loader(split_images(subset, split, preprocess, runtime, augment=False), preprocess, len(items),
                          shuffle=False, seed=0, device=device)
    x, _ = next(iter(loader))
    model.eval()
    runtime.run(model, x, device)
    best = math.inf
    for _ in range(3):
        _synchronize(device)
        tick = time.perf_counter()
        runtime.run(model, x, device)
        _synchronize(device)
        best = min(best, time.perf_counter() - tick)
    return len(items) / max(best, 1e-9)


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and PyTorch's generators (timm's transforms use ``random``)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def fit(
    model: BackboneWithHead,
    dataset: ImageDataset,
    data_config: dict[str, Any],
    budget: Budget,
    learning_rate: float,
    *,
    seed: int,
    device: torch.device,
    on_epoch: EpochCallback | None = None,
    hflip: bool = True,
    deadline: float | None = None,
    runtime: Runtime | None = None,
    validate: bool = True,
    recipe: Recipe | None = None,
) -> TrainResult:
    """Train ``model`` on the train split for up to ``budget.epochs`` epochs.

    After each epoch the val metrics are passed to ``on_epoch(epoch, metrics)``; a True return
    stops training (the pruner's decision).

    Args:
        model: A :class:`~autotransfer.models.network.BackboneWithHead`, already frozen; images of shape
            ``(B, 3, H, W)`` in, logits ``(B, n_classes)`` out.
        dataset: The split dataset.
        data_config: The backbone's timm data config (input size, mean, std, interpolation, crop).
        budget: Epochs, batch size, metric and class weighting (``"balanced"``: the loss is weighted by
            the inverse class frequency of this call's train split).
        learning_rate: Peak AdamW learning rate, cosine-decayed to 0 over the budget's steps.
        seed: Seeds weight init of the head, shuffling and augmentation.
        device: Where to train.
        on_epoch: Called with the 1-based epoch and the val metrics; returns True to stop.
        hflip: Whether training augmentation flips horizontally.
        deadline: ``time.monotonic()`` value after which training stops (the trial time limit).
        runtime: Caches and accelerator settings (default :class:`~autotransfer.training.pipeline.Runtime()`:
            caches in memory only, channels-last, bf16 autocast on CUDA). What the trial trains on
            (cached features, cached frozen-prefix activations or images) is chosen by
            :func:`~autotransfer.training.input_plan.prepare_inputs`; the result does not depend on it.
        validate: Evaluate on val after every epoch. False (a refit, which trains on train+val)
            runs all ``budget.epochs`` without evaluating or calling ``on_epoch``; the result's
            ``metrics``, ``history`` and ``predictions`` are then empty.
        recipe: The strategy's training recipe beyond the learning rate (weight decay, optimizer
            groups, loss, extra loss terms, augmentation; :meth:`Strategy.recipe
            <autotransfer.space.strategy.Strategy.recipe>`). Default: :class:`~autotransfer.space.dimensions.Recipe()`.

    Returns:
        The :class:`TrainResult`.

    Raises:
        TrialFailed: The loss became NaN or infinite (reason ``"diverged: ..."``).
        TrialTimeout: ``deadline`` passed (checked before every batch).
        Interrupted: SIGINT or SIGTERM asked for a stop (checked before every batch).
        BadImageError: An image could not be read.
    """
    start = time.perf_counter()
    runtime, recipe = runtime or Runtime(), recipe or Recipe()
    seed_everything(seed)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input sizes: let cuDNN pick the fastest kernels
    model.to(device)
    if runtime.channels_last:
        model.to(memory_format=torch.channels_last)
    history: list[dict[str, float]] = []
    stop_reason = "completed"
    train_loss: list[float] = []
    train_seconds: list[float] = []
    eval_seconds: list[float] = []
    predictions: list[list[int]] = []
    head_fit: dict[str, Any] = {}
    if recipe.lp_ft and any(p.requires_grad for p in model.backbone.parameters()):
        head_fit = fit_head(model, dataset, data_config, weight_decay=recipe.weight_decay, runtime=runtime,
                            device=device, check=lambda: _check_stop(deadline, 1))
    with prepare_inputs(model, dataset, data_config, budget.batch_size, seed=seed, device=device,
                        runtime=runtime, hflip=hflip, check=lambda: _check_stop(deadline, 1),
                        validate=validate, recipe=recipe) as inputs:
        trained: Any = torch.compile(inputs.module) if runtime.compile else inputs.module
        optimizer = make_optimizer(inputs.module, learning_rate, recipe, net=model)
        mixup = make_mixup(recipe, dataset.n_classes) if inputs.augment else None
        weight = (balanced_class_weight([y for _, y in dataset.splits["train"]], dataset.n_classes).to(device)
                  if budget.class_weight == "balanced" else None)
        step = _Step(optimizer, training_loss(recipe, inputs.module, mixed=mixup is not None, backbone=model.backbone,
                                              class_weight=weight), mixup, recipe.grad_clip)
        scheduler = make_scheduler(optimizer, recipe, epochs=budget.epochs, updates_per_epoch=len(inputs.train))
        for epoch in range(1, budget.epochs + 1):
            def check(epoch: int = epoch) -> None:
                _check_stop(deadline, epoch)

            tick = time.perf_counter()
            train_loss.append(_train_epoch(trained, inputs, step, scheduler, epoch, device, runtime, check))
            _synchronize(device)
            train_seconds.append(time.perf_counter() - tick)
            if inputs.val is None:
                continue
            tick = time.perf_counter()
            y_true, y_pred, loss = predict_labels(trained, inputs.val, device, check=check, runtime=runtime)
            eval_seconds.append(time.perf_counter() - tick)
            predictions.append([int(p) for p in y_pred])
            history.append(classification_metrics(y_true, y_pred, loss))
            if on_epoch is not None and on_epoch(epoch, history[-1]) and epoch < budget.epochs:
                stop_reason = f"pruned at epoch {epoch}"
                break
    return TrainResult(history[-1] if history else {}, len(train_loss), time.perf_counter() - start, stop_reason,
                       history, inputs.mode, train_loss, train_seconds, eval_seconds, predictions, head_fit)


@dataclass
class _Step:
    """What one optimisation step needs: the optimizer, the loss, batch mixing and gradient clipping."""

    optimizer: torch.optim.Optimizer
    loss: LossFn
    mixup: timm.data.Mixup | None
    grad_clip: float


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _check_stop(deadline: float | None, epoch: int) -> None:
    interrupt.check()
    if deadline is not None and time.monotonic() > deadline:
        raise TrialTimeout(f"timeout in epoch {epoch}", epochs_done=epoch - 1)


def _train_epoch(model: nn.Module, inputs: TrialInputs, step_with: _Step, scheduler: Any, epoch: int,
                 device: torch.device, runtime: Runtime, check: Callable[[], None]) -> float:
    """One pass over the train batches (each batch's gradient accumulated over micro-batches); the mean loss.

    A mixing recipe mixes the whole optimisation batch before it is split into micro-batches.
    """
    model.train()
    updates = (epoch - 1) * len(inputs.train)
    loss_sum, n_images = 0.0, 0
    with progress.bar(f"epoch {epoch} ({inputs.mode})", total=len(inputs.train), unit="batch") as shown:
        for step, (x, y) in enumerate(inputs.train, start=1):
            batch_loss, n = _train_step(model, x, y, step_with, device, runtime, check, epoch, step)
            loss_sum, n_images = loss_sum + batch_loss * n, n_images + n
            updates += 1
            scheduler.step_update(num_updates=updates)
            shown.update(1)
            shown.set_postfix_str(f"loss {loss_sum / max(1, n_images):.3f}", refresh=False)
    return loss_sum / max(1, n_images)


def _train_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor, step_with: _Step, device: torch.device,
                runtime: Runtime, check: Callable[[], None], epoch: int, step: int) -> tuple[float, int]:
    """One optimisation step on one batch (mixed first, then accumulated over micro-batches).

    Returns:
        ``(mean loss, images)`` of the batch as trained (a mixed odd batch loses one image).
    """
    check()
    if step_with.mixup is not None:
        x, y = mix_batch(step_with.mixup, x, y.to(device, non_blocking=True))
    optimizer, loss_fn = step_with.optimizer, step_with.loss
    optimizer.zero_grad(set_to_none=True)
    micro = runtime.micro_batch_for(device, len(y))
    total = torch.zeros((), device=device)
    for xs, ys in zip(x.split(micro), y.split(micro), strict=True):
        # the mean loss over the batch, as a sum of micro-batch means weighted by their share
        loss = loss_fn(_forward(model, xs, device, runtime), ys.to(device, non_blocking=True))
        loss = loss * (len(ys) / len(y))
        loss.backward()
        total += loss.detach()
    batch_loss = float(total)  # one device sync per step, which the finiteness check needs anyway
    if not math.isfinite(batch_loss):
        raise TrialFailed(f"diverged: loss is {batch_loss} at epoch {epoch} step {step}")
    if step_with.grad_clip > 0:
        timm.utils.dispatch_clip_grad(model.parameters(), step_with.grad_clip, mode="norm")
    optimizer.step()
    return batch_loss, len(y)
