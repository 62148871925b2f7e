"""What a trial trains on: cached pooled features, cached frozen-prefix activations, or images.

The recipe decides augmentation, the cache only decides how inputs are produced, so caching never
changes a result on the same device:

* **Augmentation only when the whole backbone trains** (full fine-tuning). A strategy with a frozen
  part (linear probe, partial fine-tuning) trains on the eval preprocessing (resize, centre crop),
  as fixed-feature linear probes are evaluated in Kornblith et al., "Do Better ImageNet Models
  Transfer Better?" (CVPR 2019). Its frozen part runs in eval mode
  (:meth:`~autotransfer.models.network.BackboneWithHead.train`), so its output for an image never changes.
* **Linear probe** (every backbone parameter frozen): the pooled features of each split are computed
  once per (weights, preprocessing, split, device) and the head trains on them. They are kept in
  memory and, with a cache folder, in ``OUT/cache/features/*.safetensors`` for every later trial,
  worker process and restart.
* **Partial fine-tuning**: the frozen prefix's activations (:mod:`autotransfer.models.frozen_prefix`) are cached
  in memory when train and val fit ``--cache-mb``; the trainable rest runs on them.
* Otherwise the trial trains on images (uint8, decoded once, normalised on the device).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import TensorDataset

from autotransfer import interrupt
from autotransfer.data.dataset import ImageDataset
from autotransfer.models.frozen_prefix import FrozenPrefix, find_frozen_prefix
from autotransfer.models.network import BackboneWithHead
from autotransfer.space.dimensions import Recipe
from autotransfer.training.cache import FeatureStore, MemoryCache, fingerprint, split_fingerprint
from autotransfer.training.pipeline import Preprocess, image_loader, run_batched, split_images, tensor_loader
from autotransfer.training.runtime import Runtime, loader_workers

__all__ = ["TrialInputs", "pooled_features", "prepare_inputs", "weights_fingerprint"]

logger = logging.getLogger(__name__)

_VERIFIED: dict[str, bool] = {}  # prefix split proofs by (weights, depth): one per process


@dataclass
class TrialInputs:
    """The module a trial trains and what it is fed.

    Attributes:
        mode: ``"features"`` (head on cached pooled features), ``"prefix"`` (the trainable rest
            on cached frozen-prefix activations) or ``"images"``.
        module: What the optimiser trains and validation runs: the head, or the network.
        train: Yields ``(x, y)`` batches (shuffled by the trial seed); ``len()`` is batches per epoch.
        val: Yields ``(x, y)`` batches in split order; None when built with ``validate=False``.
        augment: Whether train batches are randomly augmented.
    """

    mode: str
    module: nn.Module
    train: Any
    val: Any | None
    augment: bool


def weights_fingerprint(model: nn.Module) -> str:
    """SHA-256 of a model's architecture name and every tensor of its state dict (names, shapes, bytes).

    BatchNorm's ``num_batches_tracked`` counters are left out: they never change an eval-mode output,
    and freezing drops them (``FrozenBatchNorm2d`` has none), so a partly frozen backbone has the
    fingerprint of the same weights fully frozen and finds the linear probe's cached features (LP-FT).
    """
    digest = hashlib.sha256(type(model).__name__.encode())
    for name, tensor in model.state_dict().items():
        if name.endswith("num_batches_tracked"):
            continue
        digest.update(f"{name}{tuple(tensor.shape)}{tensor.dtype}".encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:24]


@contextmanager
def prepare_inputs(net: BackboneWithHead, dataset: ImageDataset, data_config: dict[str, Any], batch_size: int, *,
                   seed: int, device: torch.device, runtime: Runtime, hflip: bool,
                   check: Callable[[], None] = interrupt.check, validate: bool = True,
                   recipe: Recipe | None = None) -> Iterator[TrialInputs]:
    """Choose and build a trial's inputs; the network is whole again on exit.

    Args:
        net: The frozen transfer model, already on ``device``.
        dataset: The split dataset.
        data_config: The backbone's timm data config.
        batch_size: Training batch size.
        seed: Shuffling seed.
        device: Where training runs.
        runtime: Cache and accelerator settings.
        hflip: Whether augmentation flips horizontally.
        check: Called before every batch of feature extraction.
        validate: Whether to build val inputs too (False for a refit, whose val images are trained on).
        recipe: The strategy's recipe: its ``augmentation`` (and ``train_transform``) decide the
            training transform, ``augment_frozen`` makes strategies with a frozen part augment too
            (nothing is then cached beyond decoded images), and a recipe that neither augments nor
            mixes trains on the cached eval preprocessing. Default: :class:`~autotransfer.space.dimensions.Recipe()`.

    Raises:
        BadImageError: An image no longer decodes. Interrupted: a stop was asked for.
    """
    recipe = recipe or Recipe()
    preprocess = Preprocess.from_config(data_config, hflip=hflip, train_transform=recipe.train_transform,
                                        augmentation=recipe.augmentation)
    backbone_params = list(net.backbone.parameters())
    augment = (recipe.augment_frozen or all(p.requires_grad for p in backbone_params)) and recipe.augments
    frozen = not any(p.requires_grad for p in backbone_params)
    splits = ("train", "val") if validate else ("train",)
    labels = {s: torch.tensor([y for _, y in dataset.splits[s]], dtype=torch.long) for s in splits}

    def loader(tensors: dict[str, torch.Tensor], split: str) -> Any:
        if split not in tensors:
            return None
        return tensor_loader(TensorDataset(tensors[split], labels[split]), batch_size, shuffle=split == "train",
                             seed=seed, device=device)

    if runtime.cache and frozen and not augment:
        feats = _features(net, dataset, preprocess, runtime, device, check, splits)
        yield TrialInputs("features", net.head, loader(feats, "train"), loader(feats, "val"), False)
        return
    prefix = find_frozen_prefix(net) if runtime.cache and not augment else None
    acts = (_prefix_activations(prefix, dataset, preprocess, runtime, device, check, splits)
            if prefix is not None else None)
    if prefix is not None and acts is not None:
        with prefix.removed() as rest:
            yield TrialInputs("prefix", rest, loader(acts, "train"), loader(acts, "val"), False)
        return
    workers = loader_workers(device, runtime.loader_workers)
    train = split_images(dataset, "train", preprocess, runtime, augment=augment, in_main_process=workers == 0,
                         check=check)
    val = (image_loader(split_images(dataset, "val", preprocess, runtime, augment=False, workers=workers, check=check),
                        preprocess, batch_size, shuffle=False, seed=seed, device=device) if validate else None)
    yield TrialInputs("images", net,
                      image_loader(train, preprocess, batch_size, shuffle=True, seed=seed, device=device,
                                   workers=workers), val, augment)


def pooled_features(net: BackboneWithHead, dataset: ImageDataset, data_config: dict[str, Any], *, runtime: Runtime,
                    device: torch.device, check: Callable[[], None] = interrupt.check,
                    splits: tuple[str, ...] = ("train", "val")) -> dict[str, torch.Tensor]:
    """The pooled features a linear-probe trial of ``net`` trains on, from the same cache.

    The cache key is the backbone's weights fingerprint (:func:`weights_fingerprint`), which does not
    depend on how much of it is frozen, so features computed here for any freeze depth (LP-FT's head
    fit, the screen) are found by every linear-probe trial of the same weights, and the other way round.

    Args:
        net: A :class:`~autotransfer.models.network.BackboneWithHead` with its pretrained weights, on
            ``device``, whole (not split at a frozen prefix); it runs in eval mode.
        dataset: The split dataset.
        data_config: The backbone's timm data config (its eval preprocessing decides the features).
        runtime: Cache and accelerator settings (``cache_dir`` holds the on-disk store).
        device: Where the backbone runs.
        check: Called before every batch (raises to stop).
        splits: Split names.

    Returns:
        ``{split: float32 tensor (n_images, n_features)}``, rows in split order.

    Raises:
        BadImageError: An image no longer decodes. Interrupted: a stop was asked for.
    """
    return _features(net, dataset, Preprocess.from_config(data_config), runtime, device, check, splits)


def _extract(fn: Callable[[torch.Tensor], torch.Tensor], dataset: ImageDataset, preprocess: Preprocess,
             runtime: Runtime, device: torch.device, check: Callable[[], None],
             splits: tuple[str, ...], description: str = "") -> dict[str, torch.Tensor]:
    batch = runtime.batch_for_inference(device, 32)

    def run(x: torch.Tensor) -> torch.Tensor:  # as the training loop runs it
        return runtime.run(fn, x, device)

    workers = loader_workers(device, runtime.loader_workers)
    return {split: run_batched(run, split_images(dataset, split, preprocess, runtime, augment=False, workers=workers,
                                                 check=check),
                               batch, device=device, preprocess=preprocess, check=check, description=description)
            for split in splits}


_POOL = "pool"  # the cached split: every image of the requested splits once, sorted by key


def _pooled(dataset: ImageDataset, splits: tuple[str, ...]) -> tuple[ImageDataset, dict[str, torch.Tensor]]:
    """The images of ``splits`` as one sorted pool, and each split's row indices into it.

    Cached features and activations are keyed on the images, not on how they are split, so a re-drawn
    train/val split of the same images (a confirmation repeat) or a refit on train+val reads the rows
    it needs from what the search computed.
    """
    items = sorted({item for split in splits for item in dataset.splits[split]})
    rows = {key: i for i, (key, _) in enumerate(items)}
    index = {split: torch.tensor([rows[key] for key, _ in dataset.splits[split]], dtype=torch.long)
             for split in splits}
    return replace(dataset, splits={_POOL: items}), index


def _lookup(runtime: Runtime, device: torch.device, pool: ImageDataset, preprocess: Preprocess,
            *what: object) -> tuple[str, MemoryCache, torch.Tensor | None]:
    """The cache key of ``what`` computed on the pool's images (with the preprocessing and device), this
    process's memory cache, and what it holds under that key (None: not cached)."""
    key = fingerprint(*what, preprocess.key, preprocess.mean, preprocess.std, split_fingerprint(pool, _POOL),
                      device.type, runtime.use_amp(device), runtime.channels_last)
    memory = runtime.memory()
    cached = memory.get(key)
    return key, memory, None if cached is None else cached[_POOL]


def _features(net: BackboneWithHead, dataset: ImageDataset, preprocess: Preprocess, runtime: Runtime,
              device: torch.device, check: Callable[[], None], splits: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """Pooled features ``(N, D)`` of ``splits``: memory, then disk, then computed (and stored)."""
    pool, index = _pooled(dataset, splits)
    key, memory, cached = _lookup(runtime, device, pool, preprocess, "features", weights_fingerprint(net.backbone))
    if cached is None:
        name = str(getattr(net.backbone, "pretrained_cfg", {}).get("architecture", type(net.backbone).__name__))
        store = FeatureStore(Path(runtime.cache_dir) / "features") if runtime.cache_dir is not None else None
        loaded = store.load(name, key) if store is not None else None
        if loaded is None or set(loaded) != {_POOL}:
            net.eval()
            loaded = _extract(net.features, pool, preprocess, runtime, device, check, (_POOL,), f"features {name}")
            if store is not None:
                path = store.save(name, key, loaded, {"backbone": name, "dataset": dataset.name})
                logger.info("Cached %s features of %d images in %s", name, len(loaded[_POOL]), path)
        memory.put(key, loaded)
        cached = loaded[_POOL]
    return {split: cached[rows] for split, rows in index.items()}


def _prefix_activations(prefix: FrozenPrefix, dataset: ImageDataset, preprocess: Preprocess, runtime: Runtime,
                        device: torch.device, check: Callable[[], None],
                        splits: tuple[str, ...]) -> dict[str, torch.Tensor] | None:
    """The prefix's output for ``splits``, if the split is proven and they fit the memory cache."""
    pool, index = _pooled(dataset, splits)
    key, memory, cached = _lookup(runtime, device, pool, preprocess, "prefix",
                                  weights_fingerprint(prefix.net.backbone), prefix.n_modules)
    if cached is not None:
        return {split: cached[rows] for split, rows in index.items()}
    first = split_images(dataset, splits[-1], preprocess, runtime, augment=False, check=check)
    probe, _ = next(iter(image_loader(first, preprocess, 2, shuffle=False, seed=0, device=device)))
    proof = fingerprint(key, "proof")
    if proof not in _VERIFIED:
        _VERIFIED[proof] = prefix.verify(probe)
    if not _VERIFIED[proof]:
        return None
    with torch.inference_mode():
        per_image = prefix.forward(probe[:1]).numel() * 4
    n_images = len(pool.splits[_POOL])
    if not memory.fits(per_image * n_images):
        logger.info("Frozen-prefix activations (%.0f MiB) exceed --cache-mb %.0f; training on images.",
                    per_image * n_images / 2**20, runtime.cache_mb)
        return None
    acts = _extract(prefix.forward, pool, preprocess, runtime, device, check, (_POOL,),
                    f"frozen prefix ({prefix.n_modules} modules)")
    memory.put(key, acts)
    return {split: acts[_POOL][rows] for split, rows in index.items()}
