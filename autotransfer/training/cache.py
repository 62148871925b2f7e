"""Caches that let a search pay once for work every trial repeats.

Two stores, both keyed by fingerprints of everything that decides their content:

* :class:`MemoryCache`: a byte-bounded, least-recently-used store of tensors in this process
  (decoded images, frozen-prefix activations, pooled features). Its bound is ``--cache-mb``;
  an entry that does not fit is not stored, and the caller computes it again when needed.
* :class:`FeatureStore`: pooled features of a frozen backbone on disk, one safetensors file per
  fingerprint under ``OUT/cache/features/``, shared by every trial, worker process and restart.
  Files are written atomically (a temporary file renamed into place), so a killed process never
  leaves a half-written file behind, and two workers writing the same file write the same bytes.

An LRU bound and an atomic file write are a few lines each; ``functools.lru_cache`` bounds by count,
not bytes, and ``joblib.Memory`` pickles tensors and cannot share a partial result between
processes, so both are written here.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from autotransfer.data.dataset import DIGITS, ImageDataset
from autotransfer.files import save_safetensors

__all__ = ["FeatureStore", "MemoryCache", "fingerprint", "memory_cache", "split_fingerprint"]

logger = logging.getLogger(__name__)

# Bump when what a cached tensor holds changes meaning (the preprocessing code, the layout).
CACHE_VERSION = 1


def fingerprint(*parts: Any) -> str:
    """SHA-256 (hex, 24 characters) of ``parts`` as canonical JSON (``default=str`` for paths and dtypes)."""
    blob = json.dumps([CACHE_VERSION, *parts], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def split_fingerprint(dataset: ImageDataset, split: str) -> str:
    """Fingerprint of one split's images: keys, labels, and each file's size and modification time.

    A file replaced in place changes its size or time, so stale cache entries are never read.
    """
    items = dataset.splits[split]
    if dataset.root == DIGITS:
        stats: list[Any] = []
    else:
        stats = []
        for key, _ in items:
            st = os.stat(Path(dataset.root) / key)
            stats.append((st.st_size, st.st_mtime_ns))
    return fingerprint(dataset.root, split, items, stats)


class MemoryCache:
    """Tensors kept in memory up to ``limit_bytes``, evicting the least recently used first.

    Thread-safe. An entry larger than the limit is never stored.

    Args:
        limit_bytes: Upper bound on the bytes held (0 disables the cache).
    """

    def __init__(self, limit_bytes: int) -> None:
        self.limit_bytes = max(0, int(limit_bytes))
        self._items: OrderedDict[str, tuple[Any, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    @property
    def bytes_used(self) -> int:
        """Bytes held now."""
        return self._bytes

    def fits(self, nbytes: int) -> bool:
        """Whether an entry of ``nbytes`` can be held (after evicting others)."""
        return 0 < nbytes <= self.limit_bytes

    def get(self, key: str) -> Any | None:
        """The entry for ``key`` (marked as recently used), or None."""
        with self._lock:
            if key not in self._items:
                return None
            self._items.move_to_end(key)
            return self._items[key][0]

    def put(self, key: str, value: Any, nbytes: int | None = None) -> bool:
        """Store ``value`` under ``key``, evicting old entries to stay under the limit.

        Args:
            key: The fingerprint.
            value: A tensor, or a tuple/dict of tensors.
            nbytes: Its size; computed from the tensors when omitted.

        Returns:
            Whether it was stored.
        """
        size = _nbytes(value) if nbytes is None else nbytes
        if not self.fits(size):
            return False
        with self._lock:
            if key in self._items:
                self._bytes -= self._items.pop(key)[1]
            while self._items and self._bytes + size > self.limit_bytes:
                self._bytes -= self._items.popitem(last=False)[1][1]
            self._items[key] = (value, size)
            self._bytes += size
        return True

    def resize(self, limit_bytes: int) -> None:
        """Change the limit, evicting entries that no longer fit."""
        with self._lock:
            self.limit_bytes = max(0, int(limit_bytes))
            while self._items and self._bytes > self.limit_bytes:
                self._bytes -= self._items.popitem(last=False)[1][1]

    def clear(self) -> None:
        """Drop every entry."""
        with self._lock:
            self._items.clear()
            self._bytes = 0


def _nbytes(value: Any) -> int:
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, dict):
        return sum(_nbytes(v) for v in value.values())
    if isinstance(value, (tuple, list)):
        return sum(_nbytes(v) for v in value)
    return 0


_PROCESS_CACHE = MemoryCache(0)


def memory_cache(limit_mb: float) -> MemoryCache:
    """This process's cache, bounded to ``limit_mb`` megabytes (MiB); shared by every trial it runs."""
    _PROCESS_CACHE.resize(int(limit_mb * 2**20))
    return _PROCESS_CACHE


class FeatureStore:
    """Pooled backbone features on disk: ``DIRECTORY/<name>-<fingerprint>.safetensors``.

    Args:
        directory: Where the files live (created on first write), e.g. ``OUT/cache/features``.
    """

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)

    def path(self, name: str, key: str) -> Path:
        """The file for backbone ``name`` and fingerprint ``key``."""
        safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in name)
        return self.directory / f"{safe}-{key}.safetensors"

    def load(self, name: str, key: str) -> dict[str, torch.Tensor] | None:
        """The stored tensors, or None when absent or unreadable (then they are recomputed)."""
        path = self.path(name, key)
        if not path.is_file():
            return None
        try:
            return load_file(path)
        except (OSError, SafetensorError) as err:
            logger.warning("Ignoring the unreadable feature cache %s (%s); recomputing.", path, err)
            return None

    def save(self, name: str, key: str, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> Path:
        """Write ``tensors`` atomically (:func:`autotransfer.files.save_safetensors`)."""
        return save_safetensors(self.path(name, key), tensors, metadata)
