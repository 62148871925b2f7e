"""The data path: decode each image once, batch it as uint8, normalise it on the device.

Images are turned into ``uint8`` tensors of shape ``(3, H, W)`` by timm's own "prefetcher"
transforms (``timm.data.create_transform(..., use_prefetcher=True)``: the PIL steps, then
``MaybePILToTensor``), and normalised per batch on the training device by timm's
``PrefetchLoader`` (``(x - 255 * mean) / (255 * std)``, overlapping the host-to-GPU copy with
compute on CUDA). Because nothing random happens in the eval preprocessing (resize, centre crop),
its result is cached: a split becomes one ``uint8`` tensor ``(N, 3, H, W)`` held in the process's
:class:`~autotransfer.cache.MemoryCache` and shared by every trial and backbone with the same
preprocessing (all four zoo backbones share one). Training augmentation (random resized crop,
flip) runs on decoded images that are themselves cached when they fit.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import nullcontext
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

from . import interrupt
from .cache import MemoryCache, fingerprint, memory_cache, split_fingerprint
from .data import DIGITS, ImageDataset, open_image
from .errors import BadImageError, ConfigError, describe

__all__ = ["Preprocess", "Runtime", "UintImages", "image_loader", "loader_workers", "run_batched",
           "split_images", "tensor_loader"]


@dataclass(frozen=True)
class Runtime:
    """How trials use this machine: caches and accelerator settings. None of it changes a result
    beyond floating-point rounding (the caches not at all on the same device).

    Attributes:
        cache: Whether to cache at all (False: recompute everything, for comparison).
        cache_mb: Memory bound of this process's cache in MiB (decoded images, frozen-prefix
            activations, features); 0 keeps nothing in memory.
        cache_dir: Folder of the on-disk feature cache (``OUT/cache``); None: memory only.
        amp: bf16 autocast; None: on for CUDA devices that support bf16, off on CPU.
        channels_last: Convolutions in channels-last memory format (1.6x faster for the zoo's
            mobile networks on this project's CPU, see ``benchmarks/README.md``).
        compile: Wrap the trained module in ``torch.compile`` (slow to start; pays off on long trials).
        loader_workers: DataLoader worker processes; None: sized to the machine (:func:`loader_workers`).
        inference_batch: Images per forward pass when extracting features or evaluating; halved
            (timm's ``decay_batch_step``) on out-of-memory. None: 256 on CUDA, 64 on CPU.
        micro_batch: Images per forward/backward pass in training; a larger optimisation batch
            accumulates the gradients of its micro-batches (the same mean gradient; BatchNorm layers
            that train see micro-batch statistics, "ghost batch normalisation", Hoffer et al. 2017).
            None: 16 on CPU (measured there: mobilenetv2_100 fine-tuning runs 1.28x faster per
            image than at 32 and peaks at 2.3 instead of 3.6 GB, ``benchmarks/README.md``), the whole
            batch on CUDA.

    Raises:
        ConfigError: A value is out of range (on construction).
    """

    cache: bool = True
    cache_mb: float = 1024.0
    cache_dir: str | Path | None = None
    amp: bool | None = None
    channels_last: bool = True
    compile: bool = False
    loader_workers: int | None = None
    inference_batch: int | None = None
    micro_batch: int | None = None

    def __post_init__(self) -> None:
        if isinstance(self.cache_mb, bool) or not isinstance(self.cache_mb, (int, float)) or not self.cache_mb >= 0:
            raise ConfigError(describe("cache_mb", "a number of MiB >= 0", self.cache_mb))
        if self.loader_workers is not None and (isinstance(self.loader_workers, bool) or self.loader_workers < 0):
            raise ConfigError(describe("loader_workers", "None or an integer >= 0", self.loader_workers))
        if self.inference_batch is not None and (isinstance(self.inference_batch, bool) or self.inference_batch < 1):
            raise ConfigError(describe("inference_batch", "None or a positive integer", self.inference_batch))
        if self.micro_batch is not None and (isinstance(self.micro_batch, bool) or self.micro_batch < 1):
            raise ConfigError(describe("micro_batch", "None or a positive integer", self.micro_batch))

    def memory(self) -> MemoryCache:
        """This process's memory cache, bounded to ``cache_mb`` (a store that keeps nothing when caching is off)."""
        return memory_cache(self.cache_mb) if self.cache else MemoryCache(0)

    def use_amp(self, device: torch.device) -> bool:
        """Whether to autocast to bf16 on ``device``."""
        if self.amp is not None:
            return self.amp and device.type == "cuda"
        return device.type == "cuda" and torch.cuda.is_bf16_supported()

    def run(self, fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, device: torch.device) -> torch.Tensor:
        """``fn(x)`` on ``device`` in the runtime's memory format (4-D inputs) and under its autocast."""
        x = x.to(device, non_blocking=True)
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16) if self.use_amp(device) else nullcontext():
            return fn(x)

    def micro_batch_for(self, device: torch.device, batch: int) -> int:
        """Images per forward/backward pass for an optimisation batch of ``batch`` images."""
        if self.micro_batch is not None:
            return min(batch, self.micro_batch)
        return batch if device.type == "cuda" else min(batch, 16)

    def batch_for_inference(self, device: torch.device, train_batch: int) -> int:
        """Start batch size of inference passes."""
        if self.inference_batch is not None:
            return self.inference_batch
        return max(train_batch, 256 if device.type == "cuda" else 64)


def loader_workers(device: torch.device, requested: int | None = None) -> int:
    """DataLoader worker processes for ``device``.

    On CPU, 0: the model already uses every core (``torch.get_num_threads()``), so decoding in
    other processes only competes with it, and cached splits need no decoding. On CUDA, the cores
    this process may use minus one for the training loop, at most 8.
    """
    if requested is not None:
        return requested
    if device.type != "cuda":
        return 0
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(0, min(8, cores - 1))


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
    def from_config(cls, data_config: dict[str, Any], *, hflip: bool = True) -> Preprocess:
        """Build from ``timm.data.resolve_model_data_config`` output, through ``timm.data.create_transform``."""
        common = {k: data_config[k] for k in ("input_size", "interpolation", "mean", "std")}
        train = timm.data.create_transform(**common, is_training=True, use_prefetcher=True, scale=(0.5, 1.0),
                                           hflip=0.5 if hflip else 0.0, color_jitter=None)  # type: ignore[arg-type]
        crop: dict[str, Any] = {"crop_pct": data_config.get("crop_pct"), "crop_mode": data_config.get("crop_mode")}
        evaluation = timm.data.create_transform(**common, **crop, use_prefetcher=True)
        key = fingerprint("eval", common["input_size"], common["interpolation"], crop)
        return cls(train, evaluation, tuple(data_config["mean"]), tuple(data_config["std"]), key)


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
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:  # as in data.decode_error
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
                check: Callable[[], None] = interrupt.check) -> torch.Tensor:
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

    Returns:
        Float32 tensor ``(N, ...)``.
    """
    while True:
        try:
            return torch.cat(list(_batches(fn, data, batch_size, device, preprocess, check)))
        except torch.OutOfMemoryError as err:
            smaller = decay_batch_step(batch_size)
            if not smaller or not check_batch_size_retry(str(err)):
                raise
            batch_size = smaller
            if device.type == "cuda":
                torch.cuda.empty_cache()


@torch.inference_mode()
def _batches(fn: Callable[[torch.Tensor], torch.Tensor], data: Dataset[Any], batch_size: int, device: torch.device,
             preprocess: Preprocess | None, check: Callable[[], None]) -> Iterator[torch.Tensor]:
    loader: Any = (image_loader(data, preprocess, batch_size, shuffle=False, seed=0, device=device)
                   if preprocess is not None else tensor_loader(data, batch_size, shuffle=False, seed=0, device=device))
    for x, _ in loader:
        check()
        yield fn(x.to(device, non_blocking=True)).float().cpu()
