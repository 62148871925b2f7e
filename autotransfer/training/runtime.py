"""How trials use this machine: caches and accelerator settings (:class:`Runtime`), which never change a result."""

from __future__ import annotations

import os
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch

from autotransfer.errors import ConfigError, describe
from autotransfer.training.cache import MemoryCache, memory_cache

__all__ = ["Runtime", "loader_workers"]


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
