"""The data path: decode each image once, batch it as uint8, normalise it on the device.

Images are turned into ``uint8`` tensors of shape ``(3, H, W)`` by timm's own "prefetcher"
transforms (``timm.data.create_transform(..., use_prefetcher=True)``: the PIL steps, then
``MaybePILToTensor``), and normalised per batch on the training device by timm's
``PrefetchLoader`` (``(x - 255 * mean) / (255 * std)``, overlapping the host-to-GPU copy with
compute on CUDA). Because nothing random happens in the eval preprocessing (resize, centre crop),
its result is cached: a split becomes one ``uint8`` tensor ``(N, 3, H, W)`` held in the process's
:class:`~autotransfer.training.cache.MemoryCache` and shared by every trial and backbone with the same
preprocessing (all four zoo backbones share one). Training augmentation (random resized crop,
flip) runs on decoded images that are themselves cached when they fit.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import timm.data
import torch
from PIL import Image
from timm.data.loader import PrefetchLoader
from timm.utils import check_batch_size_retry, decay_batch_step
from torch.utils.data import DataLoader, Dataset, TensorDataset
from torchvision import transforms
from torchvision.transforms import InterpolationMode

from autotransfer import interrupt, progress
from autotransfer.data.dataset import DECODE_ERRORS, DIGITS, ImageDataset, open_image
from autotransfer.errors import BadImageError
from autotransfer.training.cache import MemoryCache, fingerprint, split_fingerprint
from autotransfer.training.runtime import Runtime

__all__ = ["Preprocess", "UintImages", "image_loader", "run_batched", "split_images", "tensor_loader"]


@dataclass(frozen=True)
class Preprocess:
    """A backbone's preprocessing, split into the uint8 part (on PIL images) and normalisation.

    Attributes:
        train: PIL image to ``uint8`` tensor ``(3, H, W)`` with random resized crop (scale 0.5-1)
            and, if ``hflip``, a horizontal flip.
        eval: PIL image to ``uint8`` tensor ``(3, H, W)``: resize and centre crop.
        mean: Per-channel mean on the 0-1 scale.
        std: Per-channel standard deviation on the 0-1 scale.
        key: Fingerprint of the eval preprocessing (input size, interpolation, crop).
    """

    train: Callable[[Image.Image], torch.Tensor]
    eval: Callable[[Image.Image], torch.Tensor]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    key: str

    @classmethod
    def from_config(cls, data_config: dict[str, Any], *, hflip: bool = True,
                    train_transform: Mapping[str, Any] | None = None, augmentation: str = "crop_flip") -> Preprocess:
        """Build from ``timm.data.resolve_model_data_config`` output, through ``timm.data.create_transform``.

        Args:
            data_config: The backbone's data config.
            hflip: Whether the augmentation flips horizontally.
            train_transform: ``create_transform`` keyword arguments replacing the default
                augmentation's (``scale=(0.5, 1.0)``, ``hflip``, no colour jitter).
            augmentation: ``"crop_flip"`` (the default above), ``"rand_augment"`` (then timm's
                RandAugment ``"rand-m9-mstd0.5-inc1"``), ``"trivial_augment"`` (then torchvision's
                ``TrivialAugmentWide``, which timm lacks) or ``"none"`` (the eval preprocessing).
        """
        common = {k: data_config[k] for k in ("input_size", "interpolation", "mean", "std")}
        crop: dict[str, Any] = {"crop_pct": data_config.get("crop_pct"), "crop_mode": data_config.get("crop_mode")}
        evaluation = timm.data.create_transform(**common, **crop, use_prefetcher=True)
        key = fingerprint("eval", common["input_size"], common["interpolation"], crop)
        options: dict[str, Any] = {"scale": (0.5, 1.0), "hflip": 0.5 if hflip else 0.0, "color_jitter": None,
                                   **({"auto_augment": RAND_AUGMENT} if augmentation == "rand_augment" else {}),
                                   **(train_transform or {})}
        train = (evaluation if augmentation == "none"
                 else timm.data.create_transform(**common, is_training=True, use_prefetcher=True, **options))
        if augmentation == "trivial_augment":
            train = _with_trivial_augment(train, str(common["interpolation"]))
        if augmentation == "rand_augment":
            _posterize_keeps_a_bit(train)
        return cls(train, evaluation, tuple(data_config["mean"]), tuple(data_config["std"]), key)


RAND_AUGMENT = "rand-m9-mstd0.5-inc1"
"""timm's RandAugment policy (Cubuk et al., "RandAugment", CVPR workshops 2020): magnitude 9 with std
0.5, increasing-severity ops; the setting of timm's ImageNet training recipes."""


def _posterize_keeps_a_bit(train: Any) -> None:
    """Make RandAugment's posterize keep at least one bit per channel, in place.

    At the top magnitude (10, which ``mstd0.5`` reaches from 9 in about 2% of draws) timm's
    ``PosterizeIncreasing`` asks Pillow to keep 0 bits: Pillow 12 returned a black image, Pillow 13 raises
    ``ValueError: bits must be between or equal to 1 and 8`` and the trial fails. One bit is the
    strongest posterization Pillow accepts; every other magnitude is unchanged.
    """
    for step in getattr(train, "transforms", []):
        for op in getattr(step, "ops", []):
            if op.name.startswith("Posterize"):
                op.aug_fn = _at_least_one_bit(op.aug_fn)


def _at_least_one_bit(posterize: Callable[..., Any]) -> Callable[..., Any]:
    def keep(img: Image.Image, bits: int, **kwargs: Any) -> Any:
        return posterize(img, max(1, int(bits)), **kwargs)

    return keep


def _with_trivial_augment(train: Any, interpolation: str) -> Any:
    """``train`` (timm's crop, flip, to-tensor) with ``TrivialAugmentWide`` (Muller and Hutter, ICCV 2021)
    on the PIL image before the uint8 conversion."""
    steps = list(train.transforms)
    mode = InterpolationMode.BICUBIC if interpolation == "bicubic" else InterpolationMode.BILINEAR
    return transforms.Compose([*steps[:-1], transforms.TrivialAugmentWide(interpolation=mode), steps[-1]])


class UintImages(Dataset[tuple[torch.Tensor, int]]):
    """One split as ``(uint8 tensor (3, H, W), label)``, decoding each file on access.

    Args:
        dataset: The dataset.
        split: ``"train"``, ``"val"`` or ``"test"``.
        transform: PIL image to uint8 tensor (a :class:`Preprocess` part).
        decoded: Cache of decoded images (used only in the process that owns it); None: decode every time.

    Raises (from indexing):
        BadImageError: The file no longer decodes; the error names its full path.
    """

    def __init__(self, dataset: ImageDataset, split: str, transform: Callable[[Image.Image], torch.Tensor],
                 decoded: MemoryCache | None = None) -> None:
        self.root = dataset.root
        self.items = dataset.splits[split]
        self.transform = transform
        self.decoded = decoded

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        key, label = self.items[index]
        return self.transform(self._image(key)), label

    def _image(self, key: str) -> Image.Image:
        cache_key = ""
        if self.decoded is not None:  # a file replaced in place gets a new key
            try:
                stat = os.stat(Path(self.root) / key) if self.root != DIGITS else None
                cache_key = fingerprint("decoded", self.root, key, stat and (stat.st_size, stat.st_mtime_ns))
            except OSError:  # gone: open_image below says so with the path
                pass
        pixels = self.decoded.get(cache_key) if self.decoded is not None and cache_key else None
        if pixels is not None:
            return Image.fromarray(pixels.numpy())
        try:
            image = open_image(self.root, key)
        except DECODE_ERRORS as err:
            raise BadImageError(key, str(Path(self.root) / key), f"{type(err).__name__}: {err}") from err
        if self.decoded is not None and cache_key:
            self.decoded.put(cache_key, torch.from_numpy(np.asarray(image).copy()))
        return image


def split_images(dataset: ImageDataset, split: str, preprocess: Preprocess, runtime: Runtime, *,
                 augment: bool, in_main_process: bool = True, workers: int = 0,
                 check: Callable[[], None] = interrupt.check) -> Dataset[Any]:
    """The uint8 images of one split, from the cache where possible.

    Eval-preprocessed splits (``augment=False``) are decoded once into a ``TensorDataset`` of
    ``(N, 3, H, W)`` uint8 images when they fit the memory cache; augmented splits decode through
    a cache of decoded images (only when read in this process: ``in_main_process``). ``workers``
    DataLoader processes decode a split that is being cached.

    Raises:
        BadImageError: An image no longer decodes.
        Interrupted: SIGINT/SIGTERM while decoding.
    """
    memory = runtime.memory()
    if augment:
        return UintImages(dataset, split, preprocess.train, memory if in_main_process else None)
    labels = torch.tensor([label for _, label in dataset.splits[split]], dtype=torch.long)
    key = fingerprint("images", split_fingerprint(dataset, split), preprocess.key) if runtime.cache else ""
    images = memory.get(key) if runtime.cache else None
    if images is None:
        source = UintImages(dataset, split, preprocess.eval)
        if not source.items or not runtime.cache:
            return source
        first = source[0][0]
        if not memory.fits(first.numel() * len(source)):
            return source
        images = torch.empty((len(source), *first.shape), dtype=torch.uint8)
        done = 0
        for batch, _ in DataLoader(source, batch_size=64, num_workers=workers):  # decoded in parallel on GPU hosts
            check()
            images[done:done + len(batch)] = batch
            done += len(batch)
        memory.put(key, images)
    return TensorDataset(images, labels)


def tensor_loader(data: Dataset[Any], batch_size: int, *, shuffle: bool, seed: int, device: torch.device,
                  workers: int = 0) -> DataLoader[Any]:
    """A DataLoader whose order depends only on ``seed`` (an explicit ``torch.Generator``)."""
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(data, batch_size=batch_size, shuffle=shuffle, generator=generator, num_workers=workers,
                      pin_memory=device.type == "cuda", persistent_workers=False)


def image_loader(data: Dataset[Any], preprocess: Preprocess, batch_size: int, *, shuffle: bool, seed: int,
                 device: torch.device, workers: int = 0) -> PrefetchLoader:
    """Batches of normalised float images ``(B, 3, H, W)`` and labels ``(B,)``, already on ``device``."""
    loader = tensor_loader(data, batch_size, shuffle=shuffle, seed=seed, device=device, workers=workers)
    return PrefetchLoader(loader, mean=preprocess.mean, std=preprocess.std, device=device)


def run_batched(fn: Callable[[torch.Tensor], torch.Tensor], data: Dataset[Any], batch_size: int, *,
                device: torch.device, preprocess: Preprocess | None = None,
                check: Callable[[], None] = interrupt.check, description: str = "") -> torch.Tensor:
    """``fn`` over every item of ``data`` in order, concatenated on the CPU, under ``torch.inference_mode``.

    On out-of-memory the batch size decays (timm's ``decay_batch_step``, unless
    ``check_batch_size_retry`` says a smaller batch would not help) and the pass restarts.

    Args:
        fn: Maps a batch ``(B, ...)`` on ``device`` to ``(B, ...)``.
        data: Yields ``(x, label)``; ``x`` is uint8 images when ``preprocess`` is given (normalised
            on the device), else float tensors.
        batch_size: Start batch size.
        device: Where ``fn`` runs.
        preprocess: Normalisation of uint8 images.
        check: Called before every batch.
        description: What the progress bar says (:mod:`autotransfer.progress`; drawn only on a terminal).

    Returns:
        Float32 tensor ``(N, ...)``.
    """
    while True:
        try:
            with progress.bar(description or "images", total=len(data), unit="img") as shown:  # type: ignore[arg-type]
                return torch.cat(list(_batches(fn, data, batch_size, device, preprocess, check, shown)))
        except torch.OutOfMemoryError as err:
            smaller = decay_batch_step(batch_size)
            if not smaller or not check_batch_size_retry(str(err)):
                raise
            batch_size = smaller
            if device.type == "cuda":
                torch.cuda.empty_cache()


@torch.inference_mode()
def _batches(fn: Callable[[torch.Tensor], torch.Tensor], data: Dataset[Any], batch_size: int, device: torch.device,
             preprocess: Preprocess | None, check: Callable[[], None], shown: progress.Bar) -> Iterator[torch.Tensor]:
    loader: Any = (image_loader(data, preprocess, batch_size, shuffle=False, seed=0, device=device)
                   if preprocess is not None else tensor_loader(data, batch_size, shuffle=False, seed=0, device=device))
    for x, _ in loader:
        check()
        yield fn(x.to(device, non_blocking=True)).float().cpu()
        shown.update(len(x))
